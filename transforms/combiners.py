"""The Beam CombineFn around ``transforms.histogram.BandStats``."""

from __future__ import annotations

import apache_beam as beam
import numpy as np

from bigearthnet_beam.transforms.histogram import BandStats, BandStatsAccumulator


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
        """Merge accumulators."""
        return self.stats.merge(accumulators)

    def extract_output(self, acc):
        """The accumulator itself."""
        return acc

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self._stats = None
