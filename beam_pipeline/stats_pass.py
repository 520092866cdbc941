"""The statistics job's result and its reuse: statistics from an accumulator or an earlier run's file, and
the stats pass kept under ``--out`` (histograms, then statistics with their key) until the dataset is complete."""

from __future__ import annotations

import json

from bigearthnet_beam.beam_pipeline import finalize as fin
from bigearthnet_beam.transforms import storage
from bigearthnet_beam.transforms.plan import RowPlan
from bigearthnet_beam.transforms.statistics import NoStatisticsError, stats_document, stats_from_acc


def stats_from_file(url, clip, clip_percentiles, st=None):
    """The statistics document of an earlier run's ``stats.json`` or ``dataset.json`` (``--stats``)."""
    from bigearthnet_beam.transforms.normalize import NormParams

    doc = fin.load_stats_document(url, st)
    norm = NormParams.from_stats(doc["bands"], clip=clip).to_dict()
    return stats_document(doc["bands"], norm, url, clip, clip_percentiles)


# Under --out: the statistics job's result (histograms, then statistics with their key),
# kept until the dataset is complete.
STATS_PASS_JSON, STATS_PASS_NPZ = ".stats-pass.json", ".stats-pass.npz"


STATS_KEY = (
    "meta",
    "include_snow_cloud",
    "root",
    "splits",
    "frac",
    "shard_size",
    "resampling",
    "clip",
    "clip_percentiles",
    "stats_fraction",
)


def stats_pass_key(args, plan: RowPlan) -> dict:
    """What the statistics depend on: a stats pass with an equal key is reused on a rerun."""
    from bigearthnet_beam.beam_pipeline import __version__

    key = {k: getattr(args, k) for k in STATS_KEY}
    key["clip_percentiles"] = list(key["clip_percentiles"])
    return {"package_version": __version__, "options": key, "metadata": plan.info(), "root": plan.root}


def write_stats_pass(acc, out, key, clip, clip_percentiles, st=None) -> None:
    """Write the statistics job's result: the histograms, then the statistics (null when a band
    has no training pixel) with their key (last: that file marks the pass complete)."""
    from bigearthnet_beam.transforms.histogram import to_npz_bytes

    st = st if st is not None else storage.Storage()
    try:
        doc, empty = stats_from_acc(acc, clip, clip_percentiles), []
    except NoStatisticsError as e:  # said in the driver, by type (load_stats_pass)
        doc, empty = None, e.bands
    st.write_bytes_atomic(storage.join(out, STATS_PASS_NPZ), to_npz_bytes(acc))
    st.write_bytes_atomic(
        storage.join(out, STATS_PASS_JSON),
        json.dumps({"key": key, "statistics": doc, "empty_bands": empty}, sort_keys=True).encode(),
    )


def load_stats_pass(out: str, key: dict, st=None, raise_empty: bool = True) -> tuple[dict, bytes] | None:
    """The statistics and histograms of a complete stats pass with this ``key``, else None. A pass
    that found no training pixel is removed and raises NoStatisticsError (``raise_empty``; else
    None: an earlier run's such pass is not reused, the data may have been fixed since)."""
    st = st if st is not None else storage.Storage()
    try:
        done = json.loads(st.read_bytes(storage.join(out, STATS_PASS_JSON)))
        if done.get("key") != json.loads(json.dumps(key)):
            return None
        if done["statistics"] is None:
            remove_stats_pass(out, st)
            if not raise_empty:
                return None
            raise NoStatisticsError(done.get("empty_bands") or ["?"])
        return done["statistics"], st.read_bytes(storage.join(out, STATS_PASS_NPZ))
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def remove_stats_pass(out: str, st=None) -> None:
    st = st if st is not None else storage.Storage()
    for name in (STATS_PASS_JSON, STATS_PASS_NPZ):
        url = storage.join(out, name)
        try:
            st.filesystem(url).rm(url)
        except FileNotFoundError:
            pass
