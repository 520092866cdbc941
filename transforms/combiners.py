"""The Beam CombineFns around ``transforms.histogram.BandStats``: the accumulator itself
(``BandStatsCombineFn``) and the statistics document (``StatisticsCombineFn``)."""

from __future__ import annotations

import apache_beam as beam
import numpy as np

from bigearthnet_beam.transforms.histogram import BandStats, BandStatsAccumulator
from bigearthnet_beam.transforms.statistics import DEFAULT_CLIP_PERCENTILES, stats_from_acc


class BandStatsCombineFn(beam.CombineFn):
    """Combine pixel arrays (channels-last) or pre-built partial accumulators."""

    def __init__(self):
        self._stats = None

    @property
    def stats(self) -> BandStats:
        """The ``BandStats`` (made on first use, so the CombineFn pickles small)."""
        if self._stats is None:
            self._stats = BandStats()
        return self._stats

    def create_accumulator(self):
        """An empty accumulator."""
        return self.stats.create()

    def add_input(self, acc, element):
        """Add a pixel array or merge a partial accumulator."""
        if isinstance(element, BandStatsAccumulator):
            return self.stats.merge([acc, element])
        # seal after each array so the result does not depend on the order of inputs
        return self.stats.seal(self.stats.add(acc, np.asarray(element)))

    def merge_accumulators(self, accumulators):
        """Merge accumulators into a new one: an input may be an object a runner still holds (the
        DaskRunner reuses computed partitions when it recomputes a side input's upstream), so none
        is changed in value."""
        return self.stats.merge([self.stats.create(), *accumulators])

    def extract_output(self, acc):
        """The accumulator itself."""
        return acc

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self._stats = None


class StatisticsCombineFn(BandStatsCombineFn):
    """The statistics document (what ``stats.json`` holds) of pixel arrays or partial accumulators.

    ``beam.CombineGlobally(StatisticsCombineFn())`` over the ``.pixels`` of the decoded training
    patches gives the statistics ``ConvertDataset`` computes. Each array is sealed on its own,
    so the result does not depend on how a runner groups the inputs.
    """

    def __init__(self, clip: bool = True, clip_percentiles: tuple[float, float] = DEFAULT_CLIP_PERCENTILES):
        super().__init__()
        self.clip = bool(clip)
        self.clip_percentiles = (float(clip_percentiles[0]), float(clip_percentiles[1]))

    def extract_output(self, acc):
        """The statistics document; ``NoStatisticsError`` when a band has no pixel."""
        return stats_from_acc(acc, self.clip, self.clip_percentiles)

    def __getstate__(self):
        return {"clip": self.clip, "clip_percentiles": self.clip_percentiles}

    def __setstate__(self, state):
        self._stats = None
        self.clip = state.get("clip", True)
        self.clip_percentiles = tuple(state.get("clip_percentiles", DEFAULT_CLIP_PERCENTILES))
