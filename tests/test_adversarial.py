"""Bad input never crashes a run and never escapes the output directory.

Property-based (hypothesis): random and malformed metadata rows become clean records or
dead letters with a known reason; mutated and truncated GeoTIFF bytes become decode/check
dead letters, never another exception; whole conversions of fuzzed metadata tables keep the
accounting invariant and write nothing outside `--out`.
"""

import json
import os
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.schemas import failures, manifest
from bigearthnet_beam.schemas.classes import CLASS_NAMES
from bigearthnet_beam.schemas.naming import OBJECT_KEYS, object_urls
from bigearthnet_beam.transforms import metadata as md
from bigearthnet_beam.transforms.patch import decode_patch, fetch_objects
from bigearthnet_beam.transforms.plan import check_rows
from tests.helpers import IN_PROCESS

GOOD_ID = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"
GOOD_S1 = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_26_57"

nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "../../etc/passwd",
            "/abs/path",
            "a/b",
            "..",
            GOOD_ID + "\n",
            GOOD_ID + "/..",
            "",
            "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57/../../x",
            "\x00",
            "é" * 500,
        ]
    ),
    st.text(min_size=1000, max_size=3000),
)
any_value = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    nasty_text,
    st.lists(st.text(max_size=10), max_size=3),
)
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
patch_ids = st.one_of(
    st.just(GOOD_ID),
    st.sampled_from([GOOD_ID[:-2] + f"{i:02d}" for i in range(5)]),
    st.just(GOOD_ID.translate(FULL_WIDTH)),  # '\d' matches these; ids are ASCII
    st.binary(max_size=60),  # a binary column's values
    any_value,
)
s1_names = st.one_of(st.just(GOOD_S1), any_value)
splits = st.one_of(st.sampled_from(["train", "validation", "test", "val", "Train"]), any_value)
labels = st.one_of(
    st.lists(st.sampled_from(CLASS_NAMES), max_size=4),
    st.lists(nasty_text, max_size=3),
    st.lists(st.lists(st.sampled_from(CLASS_NAMES), max_size=2), min_size=1, max_size=3),  # nested lists
    st.lists(st.one_of(st.integers(), st.binary(max_size=5), st.none()), min_size=1, max_size=3),
    any_value,
)
rows = st.fixed_dictionaries(
    {
        "patch_id": patch_ids,
        "s1_name": s1_names,
        "split": splits,
        "labels": labels,
        "country": st.one_of(st.none(), st.text(max_size=20)),
    }
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(rows, max_size=12))
def test_any_metadata_row_is_a_clean_record_or_a_dead_letter(tmp_path_factory, batch):
    root = "/data/reben"
    rows = [dict(row, _source=0, _row=i) for i, row in enumerate(batch)]
    selected, dead, clean = check_rows(rows, root, ("train", "validation", "test"), 1.0)
    selected = list(selected.elements())
    assert len(selected) == len(batch)  # every row is accounted for
    assert len(clean) + len(dead) == len(selected)
    for d in dead:
        assert d["stage"] == failures.METADATA and d["reason"] in failures.REASONS and d["detail"]
        json.dumps(d)  # a dead letter always serialises
    for rec in clean:
        for key in OBJECT_KEYS:  # every object a clean record points at lies under the root
            url = md.record_urls(rec)[key]
            assert os.path.normpath(url).startswith(root + "/") and ".." not in url.split("/")
        assert manifest.shard_path(rec["split"], 0, 1).split("/")[0] in manifest.SPLITS


@pytest.fixture(scope="module")
def patch_bytes(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzsrc")
    assert main(["synth", "--out", str(d), "--n", "1", "--seed", "3", "--workers", "1"]) == 0
    row = pq.read_table(d / "metadata.parquet").to_pylist()[0]
    return row["patch_id"], fetch_objects(object_urls(str(d), row["patch_id"], row["s1_name"]))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(OBJECT_KEYS), data=st.data())
def test_mutated_or_truncated_tiffs_become_dead_letters(patch_bytes, key, data):
    pid, objs = patch_bytes
    raw = bytearray(objs[key])
    kind = data.draw(st.sampled_from(["flip", "truncate", "header", "garbage"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 20))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "header":  # the IFD and tag area: offsets, counts, sizes
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, min(400, len(raw) - 1)))
            raw[i] = data.draw(st.integers(0, 255))
    else:
        raw = bytearray(data.draw(st.binary(max_size=2000)))
    mutated = dict(objs)
    mutated[key] = bytes(raw)
    try:
        p = decode_patch(pid, mutated)
    except failures.PatchError as e:
        assert e.stage in (failures.FETCH, failures.DECODE, failures.CHECK) and e.reason in failures.REASONS
        return
    # accepted: then it is a well-formed patch (a flip in pixel data is still valid data)
    assert p.pixels.shape == (120, 120, 14) and p.pixels.dtype == np.float32
    assert np.isfinite(p.pixels).all()


def _set_tag(raw: bytes, tag: int, value: int) -> bytes:
    """A little-endian classic TIFF with one SHORT/LONG tag's inline value replaced."""
    import struct

    (ifd,) = struct.unpack("<I", raw[4:8])
    (n,) = struct.unpack("<H", raw[ifd : ifd + 2])
    out = bytearray(raw)
    for k in range(n):
        e = ifd + 2 + 12 * k
        t, typ = struct.unpack("<HH", raw[e : e + 4])
        if t == tag:
            struct.pack_into("<I" if typ == 4 else "<H", out, e + 8, value)
            return bytes(out)
    raise AssertionError(f"tag {tag} not found")


@pytest.mark.parametrize("width,height", [(65_535, 65_535), (60_000, 120)])
def test_a_header_declaring_a_huge_raster_is_refused_before_decoding(patch_bytes, width, height):
    """A mutated width/height must not make a worker allocate gigabytes: wrong_size at once,
    from each of the three decoders."""
    from bigearthnet_beam.transforms import decode as decoders

    pid, objs = patch_bytes
    raw = _set_tag(_set_tag(objs["B02"], 256, width), 257, height)
    with pytest.raises(failures.PatchError) as e:
        decode_patch(pid, dict(objs, B02=raw))
    assert e.value.reason == "wrong_size" and "declares" in e.value.detail
    for decoder in (decoders._strip_tiff, decoders._tifffile, decoders._rasterio):
        with pytest.raises(failures.PatchError) as e:
            decoder(raw)
        assert e.value.reason == "wrong_size", decoder


def test_a_deflate_bomb_inflates_no_further_than_the_image(patch_bytes):
    """A strip that inflates to far more than width × height × itemsize is cut off there."""
    import zlib

    from bigearthnet_beam.transforms.decode import _strip_tiff

    bomb = zlib.compress(b"\0" * (60 * 1024 * 1024), 9)  # 60 MB of zeros in ~60 kB
    pid, objs = patch_bytes
    import tifffile

    def deflated(key):
        with tifffile.TiffFile(__import__("io").BytesIO(objs[key])) as tif:
            return tif.pages.first.compression in (8, 32946)

    key = next(k for k in OBJECT_KEYS if deflated(k))  # the reference map: the bomb goes through zlib
    import tracemalloc

    tracemalloc.start()
    try:
        _strip_tiff_with_strip = _replace_strip(objs[key], bomb)
        try:  # decoded (cut off at the image's size) or refused as a patch error: nothing else
            _strip_tiff(_strip_tiff_with_strip)
        except failures.PatchError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024, f"inflating the strip took {peak / 2**20:.0f} MiB"


def _replace_strip(raw: bytes, strip: bytes) -> bytes:
    """The TIFF with its first strip replaced by ``strip`` appended at the end (one strip)."""
    import struct

    (ifd,) = struct.unpack("<I", raw[4:8])
    (n,) = struct.unpack("<H", raw[ifd : ifd + 2])
    out = bytearray(raw)
    off = len(out)
    out += strip
    for k in range(n):
        e = ifd + 2 + 12 * k
        t, typ, cnt = struct.unpack("<HHI", raw[e : e + 8])
        if t in (273, 279):  # StripOffsets, StripByteCounts: point every entry at the bomb
            value = off if t == 273 else len(strip)
            if cnt == 1:
                struct.pack_into("<I", out, e + 8, value)
            else:
                (where,) = struct.unpack("<I", raw[e + 8 : e + 12])
                for j in range(cnt):
                    struct.pack_into(
                        "<I" if typ == 4 else "<H",
                        out,
                        where + j * (4 if typ == 4 else 2),
                        value if j == 0 else (off if t == 273 else 0),
                    )
    return bytes(out)


def test_a_hung_decode_becomes_a_decode_timeout_and_the_worker_goes_on(patch_bytes, monkeypatch):
    """A decoder that never returns (as a hostile file can make native code do) is abandoned
    after the per-object timeout; the patch is a decode_timeout dead letter naming the object,
    and the next patch decodes normally."""
    import threading
    import time

    from bigearthnet_beam.transforms import patch as patch_checks

    pid, objs = patch_bytes
    release = threading.Event()
    real = patch_checks.decode_geotiff

    def hanging(data, name=""):
        if name == "B05":
            release.wait(60)  # "hangs" until the test lets it go
        return real(data, name)

    monkeypatch.setattr(patch_checks, "decode_geotiff", hanging)
    t0 = time.monotonic()
    with pytest.raises(failures.PatchError) as e:
        patch_checks.decode_patch(pid, objs, timeout=0.5)
    took = time.monotonic() - t0
    assert e.value.stage == failures.DECODE and e.value.reason == "decode_timeout" and "B05" in e.value.detail
    assert took < 10, took  # generous: it gave up, it did not wait the 60 s
    monkeypatch.setattr(patch_checks, "decode_geotiff", real)
    p = patch_checks.decode_patch(pid, objs, timeout=0.5)  # a fresh helper thread takes the next patch
    assert p.pixels.shape == (120, 120, 14)
    release.set()
    # the per-object deadline restarts at each object: 15 objects each under the limit pass
    slow = lambda data, name="": (time.sleep(0.05), real(data, name))[1]  # noqa: E731
    monkeypatch.setattr(patch_checks, "decode_geotiff", slow)
    assert patch_checks.decode_patch(pid, objs, timeout=0.3).pixels.shape == (120, 120, 14)


def test_decode_timeout_flag(tmp_path, capsys):
    meta = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"patch_id": [GOOD_ID], "s1_name": [GOOD_S1], "split": ["train"], "labels": [["Pastures"]]}), meta
    )
    with pytest.raises(SystemExit) as e:  # argparse's usage error
        main(["convert", "--meta", str(meta), "--out", str(tmp_path / "o"), "--decode_timeout", "-1"])
    assert e.value.code == 2 and "--decode_timeout" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


column_values = st.one_of(
    st.lists(st.one_of(st.none(), st.text(max_size=30)), min_size=1, max_size=6),
    st.lists(st.integers(-5, 5), min_size=1, max_size=6),
)


@pytest.fixture(scope="module")
def stats_json(converted):
    """Statistics of the session's dataset (tests/conftest.py): the fuzzed tables need no training patch."""
    return str(converted / "stats.json")


@pytest.mark.slow
def test_no_decodable_training_patch_is_a_clear_error_without_manifest(tmp_path, capsys):
    pq.write_table(
        pa.table({"patch_id": [GOOD_ID], "s1_name": [GOOD_S1], "split": ["train"], "labels": [["Pastures"]]}),
        tmp_path / "m.parquet",
    )
    (tmp_path / "root").mkdir()
    rc = main(
        [
            "convert",
            "--meta",
            str(tmp_path / "m.parquet"),
            "--root",
            str(tmp_path / "root"),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "1",
            *IN_PROCESS,
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "no statistics: 1 of 1 training patches failed (missing_object 1)" in err, err[-800:]
    assert "Traceback" not in err
    assert not (tmp_path / "out" / manifest.MANIFEST).exists()
    # the per-patch reasons are kept even though no dataset could be made
    dead = [json.loads(line) for line in (tmp_path / "out" / manifest.FAILURES_JSONL).read_text().splitlines()]
    assert [d["patch_id"] for d in dead] == [GOOD_ID] and dead[0]["reason"] == "missing_object"
    assert len(dead[0]["reasons"]) == 15  # every one of the 15 objects is missing, all listed


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    # no explain phase: it traces every line of a whole conversion (minutes under sys.settrace)
    phases=[ph for ph in Phase if ph is not Phase.explain],
)
@given(
    batch=st.lists(rows, min_size=1, max_size=8),
    extra_cols=st.dictionaries(
        st.sampled_from(["contains_cloud_or_shadow", "bogus", "country"]), column_values, max_size=2
    ),
    drop=st.sets(st.sampled_from(["country", "labels"]), max_size=1),
)
@pytest.mark.slow
def test_fuzzed_metadata_tables_end_to_end(tmp_path_factory, stats_json, batch, extra_cols, drop):
    tmp = tmp_path_factory.mktemp("fz")
    cols = {
        k: [r[k] if not isinstance(r[k], (list, float)) or k == "labels" else str(r[k]) for r in batch]
        for k in ("patch_id", "s1_name", "split", "labels", "country")
        if k not in drop
    }
    cols["labels"] = (
        [v if isinstance(v, list) else ([] if v is None else [str(v)]) for v in cols.get("labels", [[]] * len(batch))]
        if "labels" not in drop
        else None
    )
    if cols["labels"] is None:
        del cols["labels"]
    for k in ("patch_id", "s1_name", "split", "country"):
        if k in cols:
            cols[k] = [None if v is None else str(v) for v in cols[k]]
    for name, vals in extra_cols.items():
        if name not in cols:
            cols[name] = (vals * len(batch))[: len(batch)]
    meta = tmp / "meta.parquet"
    try:
        table = pa.table(cols)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # labels that mix types no parquet column can hold: as text
        cols["labels"] = [[str(x) for x in v] for v in cols["labels"]]
        table = pa.table(cols)
    pq.write_table(table, meta)
    out = tmp / "out"
    (tmp / "root_that_is_empty").mkdir()
    before = {p for p in tmp.rglob("*")}
    rc = main(
        [
            "convert",
            "--meta",
            str(meta),
            "--root",
            str(tmp / "root_that_is_empty"),
            "--out",
            str(out),
            "--workers",
            "1",
            *IN_PROCESS,
            "--stats",
            stats_json,
        ]
    )
    after = {p for p in tmp.rglob("*")} - before
    assert all(out in p.parents or p == out for p in after), sorted(map(str, after))[:5]
    if "labels" in drop:
        assert rc == 2  # a required column is missing: a clear error, nothing converted
        assert not (out / manifest.MANIFEST).exists()
        return
    assert rc == 1  # every selected row fails: more than --max_failure_fraction (0.05), after writing everything
    man = json.loads((out / manifest.MANIFEST).read_text())
    selected = Counter(md.row_split({"split": s}) for s in cols["split"])
    assert {k: v["input"] for k, v in man["splits"].items()} == dict(selected)
    for s in man["splits"].values():
        assert s["written"] + s["failed"] == s["input"]
    assert sum(s["written"] for s in man["splits"].values()) == 0  # the root is empty: nothing can be written


@pytest.mark.parametrize(
    "case", ["not_parquet", "zero_bytes", "no_rows", "missing_root", "out_not_writable", "missing_column"]
)
def test_bad_inputs_give_a_clear_error_and_no_manifest(tmp_path, capsys, case):
    meta, root, out = tmp_path / "m.parquet", tmp_path / "root", tmp_path / "out"
    root.mkdir()
    good = {"patch_id": [GOOD_ID], "s1_name": [GOOD_S1], "split": ["train"], "labels": [["Pastures"]]}
    if case == "not_parquet":
        meta.write_text("patch_id,split\nS2A,train\n")
    elif case == "zero_bytes":
        meta.write_bytes(b"")
    elif case == "no_rows":
        pq.write_table(pa.table(good).slice(0, 0), meta)
    elif case == "missing_column":
        pq.write_table(pa.table({k: v for k, v in good.items() if k != "split"}), meta)
    else:
        pq.write_table(pa.table(good), meta)
    if case == "missing_root":
        root = tmp_path / "no_such_root"
    if case == "out_not_writable":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "out"
    rc = main(["convert", "--meta", str(meta), "--root", str(root), "--out", str(out), "--workers", "1"])
    err = capsys.readouterr().err
    want = {
        "not_parquet": "not a readable parquet",
        "zero_bytes": "is empty",
        "no_rows": "selects no patch",
        "missing_root": "does not exist",
        "out_not_writable": "not writable",
        "missing_column": "lacks the column(s) split",
    }[case]
    assert rc in (1, 2) and want in err, (rc, err[-500:])
    assert "Traceback" not in err
    assert not (out / manifest.MANIFEST).exists()


def test_a_hung_decode_in_one_thread_does_not_stall_another_threads_patches(patch_bytes, monkeypatch):
    """Each worker thread has its own decode helper: while one thread's decode hangs, another
    thread decodes its patches within a short timeout, without a false decode_timeout."""
    import threading

    from bigearthnet_beam.transforms import patch as patch_checks

    pid, objs = patch_bytes
    release, hung = threading.Event(), threading.Event()
    real = patch_checks.decode_geotiff

    def hanging(data, name=""):
        if (
            name == "B05"
            and threading.current_thread().name.startswith("benbeam-decode")
            and getattr(threading.current_thread(), "_hang", False)
        ):
            hung.set()
            release.wait(60)
        return real(data, name)

    monkeypatch.setattr(patch_checks, "decode_geotiff", hanging)
    errors = []
    wd = patch_checks.Watchdog()  # one watchdog shared by both threads, as a DoFn's is

    def victim():
        helper = wd.helper()
        helper.submit(lambda: setattr(threading.current_thread(), "_hang", True)).result()
        try:
            patch_checks.decode_patch(pid, objs, timeout=10, watchdog=wd)
        except failures.PatchError as e:
            errors.append(e)

    t = threading.Thread(target=victim)
    t.start()
    assert hung.wait(10)  # thread 1's decode is stuck now
    for _ in range(3):  # thread 2 (this one) decodes normally, well within 0.5 s each
        assert patch_checks.decode_patch(pid, objs, timeout=0.5, watchdog=wd).pixels.shape == (120, 120, 14)
    release.set()
    t.join(20)
    assert not errors  # released before its 10 s deadline: thread 1's patch decoded too
