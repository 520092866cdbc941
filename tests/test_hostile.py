"""Hostile index files: nothing outside the dataset root is ever opened, every row is accounted for.

An index (``url_*`` columns) may point anywhere: files outside the root, ``..``, symlinks
out of the root, ``http://`` addresses, ``/dev/zero``, FIFOs, folders, huge files. Every
``open`` of this process is audited (``sys.addaudithook``): no path outside the root is
opened, and each hostile row becomes a dead letter naming every hostile object.
"""

import json
import os
import shutil
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.schemas import failures, manifest
from bigearthnet_beam.schemas.naming import OBJECT_KEYS
from bigearthnet_beam.transforms import containment
from bigearthnet_beam.transforms import metadata as md
from bigearthnet_beam.transforms.patch import fetch_objects
from tests.helpers import IN_PROCESS

# --------------------------------------------------------------------------- audit of opened paths

_OPENED: list[str] = []
_AUDIT = {"on": False}
_AUDIT_LOCK = threading.Lock()


def _hook(event, args):
    if event == "open" and _AUDIT["on"] and args and isinstance(args[0], (str, bytes, os.PathLike)):
        with _AUDIT_LOCK:
            _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_hook)


class audit:
    """Record every path this process opens inside the block."""

    def __enter__(self):
        _OPENED.clear()
        _AUDIT["on"] = True
        return _OPENED

    def __exit__(self, *exc):
        _AUDIT["on"] = False


def _outside(opened, root, watched):
    """Opened paths that resolve outside ``root`` but inside ``watched`` (the test's own
    folders and devices; the interpreter's own imports are not the subject)."""
    real_root = os.path.realpath(root)
    bad = []
    for p in opened:
        real = os.path.realpath(p)
        if any(real == w or real.startswith(w + os.sep) for w in watched) and not (
            real == real_root or real.startswith(real_root + os.sep)
        ):
            bad.append(p)
    return bad


# --------------------------------------------------------------------------- a dataset and hostile paths

HOSTILE = (
    "outside_abs",
    "dotdot",
    "symlink_out",
    "http",
    "devzero",
    "fifo",
    "directory",
    "huge",
    "file_scheme",
    "symlink_devzero",
)
EXPECT = {
    "outside_abs": "outside_root",
    "dotdot": "path_traversal",
    "symlink_out": "outside_root",
    "http": "unsupported_scheme",
    "devzero": "outside_root",
    "fifo": "not_a_file",
    "directory": "not_a_file",
    "huge": "object_too_large",
    "file_scheme": "unsupported_scheme",
    "symlink_devzero": "outside_root",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    root = base / "reben"
    assert main(["synth", "--out", str(root), "--n", "3", "--seed", "4", "--workers", "1"]) == 0
    assert main(["index", "--meta", str(root / "metadata.parquet"), "--out", str(base / "index.parquet")]) == 0
    table = pq.read_table(base / "index.parquet")
    assert md.declared_root(table) == str(root)
    outside = base / "outside"
    outside.mkdir()
    secret = outside / "secret.tif"  # a perfectly decodable GeoTIFF: if it were opened, it would be used
    shutil.copy(table.column("url_B02")[0].as_py(), secret)
    evil = root / "evil"
    evil.mkdir()
    os.symlink(secret, evil / "link.tif")
    os.symlink("/dev/zero", evil / "zero.tif")
    os.mkfifo(evil / "fifo.tif")
    (evil / "folder.tif").mkdir()
    with open(evil / "huge.tif", "wb") as fh:
        fh.truncate(containment.MAX_OBJECT_BYTES + 1)
    paths = {
        "outside_abs": str(secret),
        "dotdot": str(root / "BigEarthNet-S2" / ".." / ".." / "outside" / "secret.tif"),
        "symlink_out": str(evil / "link.tif"),
        "http": "http://169.254.169.254/latest/meta-data/secret.tif",
        "devzero": "/dev/zero",
        "fifo": str(evil / "fifo.tif"),
        "directory": str(evil / "folder.tif"),
        "huge": str(evil / "huge.tif"),
        "file_scheme": f"file://{secret}",
        "symlink_devzero": str(evil / "zero.tif"),
    }
    watched = [os.path.realpath(base), "/dev"]
    return {"base": base, "root": root, "table": table, "paths": paths, "watched": watched}


def test_each_hostile_path_is_refused_with_its_reason_and_never_opened(world):
    rec = md.check_row(dict(md.table_rows(world["table"])[0]), str(world["root"]))
    assert rec["root"] == str(world["root"])
    for kind, path in world["paths"].items():
        urls = dict(rec["urls"], B03=path)
        with audit() as opened:
            with pytest.raises(failures.PatchError) as e:
                fetch_objects(urls, root=rec["root"])
        assert e.value.reason == EXPECT[kind], (kind, str(e.value))
        assert e.value.stage == failures.FETCH and path[:60] in e.value.detail
        assert not _outside(opened, world["root"], world["watched"]), (kind, opened)
        assert not any(
            os.path.realpath(p) in (os.path.realpath(path), "/dev/zero")
            for p in opened
            if kind != "huge" and kind != "fifo" and kind != "directory"
        ), (kind, opened)


def test_a_fifo_is_refused_at_once_not_read_forever(world):
    import time

    t0 = time.monotonic()
    with pytest.raises(failures.PatchError) as e:
        containment.read_local(world["paths"]["fifo"], str(world["root"]))
    assert e.value.reason == "not_a_file" and time.monotonic() - t0 < 2


def test_the_size_cap_comes_from_the_largest_reben_layer():
    # 120×120 float32 S1 band: 57,600 bytes of pixels; the cap leaves room for other encodings
    assert containment.LARGEST_RASTER_BYTES == 120 * 120 * 4
    assert 20 * containment.LARGEST_RASTER_BYTES < containment.MAX_OBJECT_BYTES < 64 * containment.LARGEST_RASTER_BYTES


def test_remote_urls_must_share_the_roots_scheme_and_prefix():
    root = "s3://bucket/reben"
    assert containment.check_url("s3://bucket/reben/a/b.tif", root) == "s3://bucket/reben/a/b.tif"
    for url, reason in [
        ("s3://bucket/other/b.tif", "outside_root"),
        ("s3://bucket/rebenX/b.tif", "outside_root"),
        ("gs://bucket/reben/b.tif", "unsupported_scheme"),
        ("s3://bucket/reben/../x.tif", "path_traversal"),
        ("https://bucket.s3.amazonaws.com/reben/b.tif", "unsupported_scheme"),
        ("/etc/passwd", "unsupported_scheme"),
    ]:
        with pytest.raises(failures.PatchError) as e:
            containment.check_url(url, root)
        assert e.value.reason == reason, url


def test_manifest_paths_stay_inside_the_dataset(tmp_path):
    (tmp_path / "train").mkdir()
    assert containment.check_relative("train/train-00000-of-00001.tfrecord", str(tmp_path)).startswith(str(tmp_path))
    for rel in ["../x", "/etc/passwd", "s3://b/k", "train/../../x", "train//x"]:
        with pytest.raises(ValueError):
            containment.check_relative(rel, str(tmp_path))
    os.symlink("/etc", tmp_path / "train" / "etc")
    with pytest.raises(ValueError):
        containment.check_relative("train/etc/passwd", str(tmp_path))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hypothesis_index_rows_mixing_legitimate_and_hostile_paths(world, data):
    """Any mix: nothing outside the root is opened; a row is clean only if all 15 paths are
    legitimate; each hostile object is named among the row's reasons; every row accounted for."""
    base_rows = md.table_rows(world["table"])
    n = data.draw(st.integers(1, 6))
    rows, planted = [], []
    for i in range(n):
        row = dict(base_rows[data.draw(st.integers(0, len(base_rows) - 1))])
        hostile = data.draw(st.dictionaries(st.sampled_from(OBJECT_KEYS), st.sampled_from(HOSTILE), max_size=3))
        for key, kind in hostile.items():
            row[f"url_{key}"] = world["paths"][kind]
        row["_row"] = i
        rows.append(row)
        planted.append(hostile)
    ok = dead = 0
    with audit() as opened:
        for row, hostile in zip(rows, planted, strict=True):
            rec = md.check_row(row, str(world["root"]))
            try:
                objects = fetch_objects(md.record_urls(rec), root=rec["root"])
            except failures.PatchError as e:
                dead += 1
                assert hostile, f"a legitimate row failed: {e}"
                got = {(c["reason"], c["detail"].split(" ", 1)[0]) for c in e.checks()}
                for key, kind in hostile.items():
                    assert (EXPECT[kind], key) in got, (key, kind, got)
                assert e.record(rec["patch_id"], rec["split"])["reason"] == e.checks()[0]["reason"]
            else:
                ok += 1
                assert not hostile and set(objects) == set(OBJECT_KEYS)
    assert ok + dead == len(rows)
    assert not _outside(opened, world["root"], world["watched"]), opened[:5]


@pytest.mark.slow
def test_convert_of_a_hostile_index_opens_nothing_outside_and_dead_letters_every_hostile_row(world, tmp_path):
    rows = md.table_rows(world["table"])
    table = world["table"]
    cols = {c: table.column(c).to_pylist() for c in table.column_names}
    kinds = ["outside_abs", "http", "fifo"]
    for i, kind in enumerate(kinds[: len(rows) - 1]):
        cols["url_VV"][i] = world["paths"][kind]
    idx = tmp_path / "hostile.parquet"
    pq.write_table(pa.table(cols, schema=table.schema), idx)
    out = tmp_path / "out"
    stats = str(_stats(world, tmp_path))
    with audit() as opened:  # in_memory: the workers run in this process, so the audit sees their opens
        rc = main(
            [
                "convert",
                "--meta",
                str(idx),
                "--root",  # the index lies outside the dataset: the root is the one the user names
                str(world["root"]),
                "--out",
                str(out),
                "--shard_size",
                "8",
                "--max_failure_fraction",
                "1",
                "--stats",
                stats,
                "--direct_running_mode=in_memory",
                "--direct_num_workers=1",
            ]
        )
    assert rc == 0
    inputs = [p for p in opened if os.path.realpath(p) != os.path.realpath(stats)]
    assert any(p.startswith(str(world["root"])) for p in inputs)  # the audit does see the workers' reads
    assert not _outside(inputs, world["root"], world["watched"]), inputs[:5]
    man = json.loads((out / manifest.MANIFEST).read_text())
    dead = [json.loads(x) for x in (out / manifest.FAILURES_JSONL).read_text().splitlines()]
    got = {d["patch_id"]: d["reason"] for d in dead}
    want = {
        rows[i]["patch_id"]: {"outside_abs": "outside_root", "http": "unsupported_scheme", "fifo": "not_a_file"}[k]
        for i, k in enumerate(kinds[: len(rows) - 1])
    }
    assert got == want
    total = sum(s["input"] for s in man["splits"].values())
    assert total == len(rows) and sum(s["written"] + s["failed"] for s in man["splits"].values()) == total


def _stats(world, tmp_path):
    """A stats.json from a clean conversion of the same replica (so the hostile run needs no training patch)."""
    path = world["base"] / "clean" / manifest.STATS_JSON
    if not path.exists():
        assert (
            main(
                [
                    "convert",
                    "--meta",
                    str(world["root"] / "metadata.parquet"),
                    "--out",
                    str(world["base"] / "clean"),
                    "--workers",
                    "1",
                    *IN_PROCESS,
                ]
            )
            == 0
        )
    return path


def test_a_manifest_pointing_outside_its_dataset_is_refused_by_verify_and_the_trainer(world, converted, tmp_path):
    ds = tmp_path / "edited"
    shutil.copytree(converted, ds)  # the session's dataset (tests/conftest.py), edited in a copy
    man = json.loads((ds / manifest.MANIFEST).read_text())
    secret = str(world["paths"]["outside_abs"])
    man["splits"]["train"]["shards"][0]["path"] = os.path.relpath(secret, ds)  # ../../…/secret.tif
    (ds / manifest.MANIFEST).write_text(json.dumps(man))
    from bigearthnet_beam.beam_pipeline.verify import verify

    with audit() as opened:
        try:
            problems = verify(str(ds))
        except manifest.ManifestError as e:  # the typed manifest may refuse the path itself
            problems = [str(e)]
    assert problems and not any(os.path.realpath(p) == os.path.realpath(secret) for p in opened)
    assert main(["verify", str(ds)]) != 0
    from bigearthnet_beam.trainer.data import open_dataset

    with pytest.raises(manifest.ManifestError):
        open_dataset(str(ds))
