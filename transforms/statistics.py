"""The statistics document of a conversion (``stats.json``, the manifest's ``statistics``) from
a band-statistics accumulator. Plain Python (no Beam): ``transforms.combiners`` and the
conversion's finalising step both use it.
"""

from __future__ import annotations

from bigearthnet_beam.schemas import bands as band_table
from bigearthnet_beam.schemas import manifest as manifest_schema
from bigearthnet_beam.schemas.errors import IntegrityError

DEFAULT_CLIP_PERCENTILES = (1.0, 99.0)


class NoStatisticsError(IntegrityError):
    """No training pixel reached the statistics for some band: every training patch failed
    (or the training split is empty), so nothing can be normalised."""

    def __init__(self, bands: list[str]):
        super().__init__(
            f"no training pixels for band(s) {', '.join(bands)}: every training patch failed or the "
            "training split is empty; pass --stats from an earlier run"
        )
        self.bands = list(bands)

    def __reduce__(self):
        return (NoStatisticsError, (self.bands,))


def stats_document(extracted: dict, norm: dict, source: str, clip: bool, clip_percentiles) -> dict:
    """``stats.json`` (and the manifest's ``statistics``): the band statistics and the normalisation."""
    return {
        "schema_version": manifest_schema.SCHEMA_VERSION,
        "source": source,
        "split": "train",
        "clip": bool(clip),
        "clip_percentiles": [float(p) for p in clip_percentiles],
        "bands": extracted,
        "normalization": norm,
        "band_order": list(band_table.ALL_NAMES),
        "pixels": "values on the 10 m grid after resampling (what is normalised)",
    }


def stats_from_acc(acc, clip: bool, clip_percentiles=DEFAULT_CLIP_PERCENTILES) -> dict:
    """The statistics document of a ``BandStatsAccumulator``; NoStatisticsError when a band has no pixel."""
    from bigearthnet_beam.transforms.histogram import BandStats
    from bigearthnet_beam.transforms.normalize import NormParams

    extracted = BandStats().extract(acc, clip_percentiles=tuple(clip_percentiles))
    bad = [b for b, s in extracted.items() if not s.get("count")]
    if bad:
        raise NoStatisticsError(bad)
    norm = NormParams.from_stats(extracted, clip=clip).to_dict()
    return stats_document(extracted, norm, "computed", clip, clip_percentiles)
