"""Converting straight from the official-style archives: the streaming reader, the packs,
the routing, and end to end through the CLI (byte-identical to converting the folders)."""

import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
import zstandard

from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.schemas import manifest as manifest_schema
from bigearthnet_beam.schemas.failures import FAULT_KINDS
from bigearthnet_beam.schemas.naming import S1_DIR, S2_DIR, object_urls
from bigearthnet_beam.transforms import archive_packs, archives
from bigearthnet_beam.transforms.archive_inventory import check_archived, expected_members, inventory

N = 30


# --------------------------------------------------------------------------- helpers


def _tar_zst(path, members, frames=1, prefix="", dirs=True):
    """Write ``members`` ([(name, bytes)]) as a .tar.zst; ``frames`` zstd frames."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        seen = set()
        for name, data in members:
            parts = name.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if dirs and d not in seen:
                    seen.add(d)
                    info = tarfile.TarInfo(prefix + d)
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    c = zstandard.ZstdCompressor()
    step = -(-len(raw) // frames)
    with open(path, "wb") as fh:
        for i in range(0, len(raw), step):
            fh.write(c.compress(raw[i : i + step]))


def _members(path):
    return [(m.name, m.data) for m in archives.iter_members(str(path))]


def _failures(out):
    return [json.loads(line) for line in (out / manifest_schema.FAILURES_JSONL).read_text().splitlines()]


def _files(out):
    """Every output file's bytes by relative path, but run.json (timings) and dataset.json."""
    got = {}
    for d, _, files in os.walk(out):
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), out)
            if rel not in (manifest_schema.RUN_JSON, manifest_schema.MANIFEST):
                with open(os.path.join(d, f), "rb") as fh:
                    got[rel] = fh.read()
    return got


# --------------------------------------------------------------------------- the reader


def test_members_stream_back_exactly_in_any_order_with_prefix_and_frames(tmp_path):
    members = [(f"{S2_DIR}/t/p{i}/p{i}_B0{i % 9}.tif", os.urandom(1000 + 37 * i)) for i in range(20)]
    members.append((f"{S2_DIR}/t/p0/empty.tif", b""))
    _tar_zst(tmp_path / "a.tar.zst", members)
    assert _members(tmp_path / "a.tar.zst") == members
    _tar_zst(tmp_path / "b.tar.zst", members[::-1], frames=4, prefix="./", dirs=False)
    assert _members(tmp_path / "b.tar.zst") == members[::-1]
    names = [m.name for m in archives.iter_members(str(tmp_path / "b.tar.zst"), read_data=False)]
    assert names == [n for n, _ in members[::-1]]


@pytest.mark.parametrize("cut", [0.5, 0.999, 0.01])
def test_a_truncated_archive_names_itself_and_the_byte_offset(tmp_path, cut):
    members = [(f"{S2_DIR}/t/p{i}/p{i}_B02.tif", os.urandom(20_000)) for i in range(10)]
    _tar_zst(tmp_path / "a.tar.zst", members)
    data = (tmp_path / "a.tar.zst").read_bytes()
    bad = tmp_path / "BigEarthNet-S2.tar.zst"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(archives.ArchiveError, match=r"BigEarthNet-S2\.tar\.zst is truncated.* byte \d+"):
        _members(bad)


def test_a_cut_tar_inside_a_complete_zstd_frame_is_truncation_too(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(5):
            info = tarfile.TarInfo(f"{S2_DIR}/t/p{i}/f.tif")
            info.size = 3000
            tar.addfile(info, io.BytesIO(os.urandom(3000)))
    raw = buf.getvalue()
    end = 5 * (512 + 3072)  # where the end-of-archive marker (two zero blocks) starts
    for cut in (2 * 512 + 3000, 512 + 1000, end, end + 512):  # in a header, in data, no or half an end marker
        p = tmp_path / f"cut{cut}.tar.zst"
        p.write_bytes(zstandard.ZstdCompressor().compress(raw[:cut]))
        with pytest.raises(archives.ArchiveError, match=r"cut\d+\.tar\.zst is truncated.*tar offset \d+ \(byte \d+"):
            _members(p)


def test_a_corrupt_header_or_frame_is_an_error_not_a_silent_end(tmp_path):
    members = [(f"{S2_DIR}/t/p{i}/f.tif", bytes(3000)) for i in range(6)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = bytearray(buf.getvalue())
    raw[3 * (512 + 3072) + 10] ^= 0xFF  # inside the 4th member's header name
    p = tmp_path / "hdr.tar.zst"
    p.write_bytes(zstandard.ZstdCompressor().compress(bytes(raw)))
    with pytest.raises(archives.ArchiveError, match=r"hdr\.tar\.zst is truncated or corrupt at tar offset 10752"):
        _members(p)
    z = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(os.urandom(50_000)))
    z[len(z) // 2] ^= 0xFF
    p = tmp_path / "frame.tar.zst"
    p.write_bytes(bytes(z))
    with pytest.raises(archives.ArchiveError, match=r"frame\.tar\.zst is (corrupt|truncated or corrupt|not a tar)"):
        _members(p)


# --------------------------------------------------------------------------- packs and routing


def test_pack_records_round_trip_and_damage_is_detected():
    recs = [("a/b.tif", b"x" * 10), ("c.tif", b""), ("a/b.tif", b"later wins")]
    blob = b"".join(archive_packs.encode_record(n, d) for n, d in recs)
    assert list(archive_packs.decode_records(blob)) == recs
    with pytest.raises(ValueError, match="cut off"):
        list(archive_packs.decode_records(blob[:-3], "p"))
    with pytest.raises(ValueError, match="bad record marker"):
        list(archive_packs.decode_records(b"zzzz" + blob[4:], "p"))


def test_pack_writer_bounds_its_buffer_and_only_committed_attempts_are_read(tmp_path):
    d = str(tmp_path / "packs")
    homes = [("train", i, 3) for i in range(3)]
    stale = archive_packs.PackWriter(d, S2_DIR, buffer_bytes=1000)
    stale.add(homes[0], "x", b"stale" * 100)
    stale._flush(homes[0])  # a failed attempt left a pack behind, without a commit
    w = archive_packs.PackWriter(d, S2_DIR, buffer_bytes=1000)
    expect = {h: {} for h in homes}
    for i in range(60):
        h = homes[i % 3]
        name, data = f"m{i}", bytes([i]) * (100 + i)
        w.add(h, name, data)
        expect[h][name] = data
        assert w._held <= 1000
    summary = w.commit()
    assert summary["records"] == 60 and summary["writes"] > 3  # flushed several times, appending
    attempts = archive_packs.committed_attempts(d)
    assert attempts == {S2_DIR: w.attempt}
    for h in homes:
        assert archive_packs.read_shard_objects(d, h, attempts) == expect[h]
    archive_packs.remove_packs(d)
    assert not os.path.exists(d)


def test_router_sends_a_shared_s1_folder_to_every_shard_that_reads_it():
    router = archives.Router(
        homes=[("train", 0, 2), ("train", 1, 2), ("test", 0, 1)],
        names=np.array(sorted([b"a", b"s1x", b"s1x", b"zz"]), dtype=bytes),
        targets=np.array([2, 0, 1, 0], dtype=np.int32),
    )
    assert router.route("s1x") == [0, 1]
    assert router.route("a") == [2]
    assert router.route("nope") == [] and router.route("x" * 200) == []


def test_transforms_and_sources_pickle():
    from bigearthnet_beam.transforms.archive_ptransforms import InventoryFn, SplitArchiveFn
    from bigearthnet_beam.transforms.storage import Storage

    st = Storage(s3_endpoint_url="http://127.0.0.1:9", s3_key="k", s3_secret="s")
    for obj in (
        SplitArchiveFn(None, "/tmp/p", st),
        InventoryFn(("m",), ("train",), 1.0, st),
        archive_packs.PackObjects("/x", st),
    ):
        back = pickle.loads(pickle.dumps(obj))
        assert type(back) is type(obj) and back.storage == st  # the value travels with the worker's copy


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def reben(tmp_path_factory):
    root = tmp_path_factory.mktemp("reben")
    assert (
        main(
            [
                "synth",
                "--out",
                str(root),
                "--n",
                str(N),
                "--seed",
                "11",
                "--faults",
                ",".join(FAULT_KINDS),
                "--archives",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    return root


def _convert(reben, out, *extra):
    return main(
        [
            "convert",
            "--meta",
            str(reben / "metadata.parquet"),
            "--out",
            str(out),
            "--shard_size",
            "6",
            "--workers",
            "2",
            "--no_report",
            "--max_failure_fraction",  # the replica holds a patch of every fault kind on purpose
            "1",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def from_folders(reben, tmp_path_factory):
    out = tmp_path_factory.mktemp("folders")
    assert _convert(reben, out) == 0
    return out


@pytest.mark.slow
def test_synth_writes_official_style_archives_of_the_folders(reben):
    for folder, name in archives.ARCHIVES:
        names = [m.name for m in archives.iter_members(str(reben / name), read_data=False)]
        on_disk = sorted(os.path.relpath(os.path.join(d, f), reben) for d, _, fs in os.walk(reben / folder) for f in fs)
        assert sorted(names) == on_disk
        assert names == sorted(names, key=lambda n: n.split("/"))  # folder by folder
        with open(reben / name, "rb") as fh:
            raw = zstandard.ZstdDecompressor().stream_reader(fh).read()
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            first = tar.getmembers()[0]
        assert first.isdir() and first.name == folder


@pytest.mark.slow
def test_archives_convert_byte_identical_to_folders(reben, from_folders, tmp_path):
    out = tmp_path / "arch"
    assert _convert(reben, out, "--archives", str(reben)) == 0
    assert _files(out) == _files(from_folders)  # shards, stats.json, failures.jsonl, histograms
    a, b = (json.loads((d / manifest_schema.MANIFEST).read_text()) for d in (out, from_folders))
    a["options"].pop("out"), b["options"].pop("out")
    assert a == b
    assert not out.exists() or not [n for n in os.listdir(out) if n.startswith(".benbeam-packs")]  # cleaned up
    counters = json.loads((out / manifest_schema.RUN_JSON).read_text())["counters"]
    assert counters["archive_members_read"] == sum(
        len(f) for folder, _ in archives.ARCHIVES for _, _, f in os.walk(reben / folder)
    )
    reasons = {d["reason"] for d in _failures(out)}
    assert {"missing_object", "empty_object", "decode_error"} <= reasons


@pytest.mark.slow
def test_any_member_order_and_a_missing_member(reben, from_folders, tmp_path):
    """Archives rebuilt in reverse order, with ./ names, no directory entries, several
    frames, and one patch's reference map left out: that patch alone becomes missing_object."""
    arch = tmp_path / "arch_in"
    arch.mkdir()
    failed = {d["patch_id"] for d in _failures(from_folders)}
    manifest = json.loads((from_folders / manifest_schema.MANIFEST).read_text())
    victim = None
    for folder, name in archives.ARCHIVES:
        members = _members(reben / name)
        if folder == "Reference_Maps":
            victim = next(n.split("/")[2] for n, _ in members if n.split("/")[2] not in failed)
            members = [(n, d) for n, d in members if n.split("/")[2] != victim]
        _tar_zst(arch / name, members[::-1], frames=3, prefix="./", dirs=False)
    out = tmp_path / "out"
    assert _convert(reben, out, "--archives", str(arch)) == 0
    got = _failures(out)
    extra = [d for d in got if d["patch_id"] == victim]
    import pyarrow.parquet as pq

    row = next(r for r in pq.read_table(reben / "metadata.parquet").to_pylist() if r["patch_id"] == victim)
    url = object_urls(str(reben), victim, row["s1_name"])["reference_map"]
    assert extra == [
        {
            "patch_id": victim,
            "split": row["split"],
            "stage": "fetch",
            "reason": "missing_object",
            "detail": f"reference_map object {url} does not exist",
            "reasons": [
                {"stage": "fetch", "reason": "missing_object", "detail": f"reference_map object {url} does not exist"}
            ],
        }
    ]
    assert [d for d in got if d["patch_id"] != victim] == _failures(from_folders)
    man = json.loads((out / manifest_schema.MANIFEST).read_text())
    before = {s["path"]: s for e in manifest["splits"].values() for s in e["shards"]}
    after = {s["path"]: s for e in man["splits"].values() for s in e["shards"]}
    changed = [p for p in before if before[p]["sha256"] != after[p]["sha256"]]
    assert len(changed) == 1 and after[changed[0]]["records"] == before[changed[0]]["records"] - 1


@pytest.mark.slow
def test_a_truncated_archive_fails_clearly_without_a_manifest(reben, tmp_path, capfd):
    arch = tmp_path / "arch_in"
    arch.mkdir()
    for _, name in archives.ARCHIVES:
        data = (reben / name).read_bytes()
        (arch / name).write_bytes(data[: len(data) * 2 // 3] if name.startswith(S1_DIR) else data)
    out = tmp_path / "out"
    assert _convert(reben, out, "--archives", str(arch)) == 1
    err = capfd.readouterr().err
    assert "BigEarthNet-S1.tar.zst is truncated" in err and "byte" in err
    assert not (out / manifest_schema.MANIFEST).exists()
    assert not out.exists() or not [n for n in os.listdir(out) if n.startswith(".benbeam-packs")]


def test_missing_archives_and_deep_validation_are_usage_errors(tmp_path, capfd):
    from bigearthnet_beam.synth.generator import generate

    generate(str(tmp_path / "r"), 2, workers=1)
    meta = str(tmp_path / "r" / "metadata.parquet")
    assert main(["convert", "--meta", meta, "--out", str(tmp_path / "o"), "--archives", str(tmp_path)]) == 2
    assert "archive(s) not found" in capfd.readouterr().err
    assert main(["validate", "--meta", meta, "--out", str(tmp_path / "v.json"), "--archives", str(tmp_path)]) == 2
    assert (
        main(["validate", "--meta", meta, "--out", str(tmp_path / "v.json"), "--archives", str(tmp_path), "--deep"])
        == 2
    )


@pytest.mark.slow
def test_validate_archives_reports_what_the_folders_report(reben, tmp_path):
    reps = []
    for extra in ([], ["--archives", str(reben)]):
        out = tmp_path / f"v{len(reps)}.json"
        assert (
            main(
                [
                    "validate",
                    "--meta",
                    str(reben / "metadata.parquet"),
                    "--out",
                    str(out),
                    "--workers",
                    "2",
                    "--max_failure_fraction",  # the replica holds a patch of every fault kind on purpose
                    "1",
                    *extra,
                ]
            )
            == 0
        )
        reps.append(json.loads(out.read_text()))
    for r in reps:
        r["options"].pop("archives")
    assert reps[0] == reps[1]
    assert reps[0]["by_reason"].get("missing_object") and reps[0]["by_reason"].get("empty_object")


def test_inventory_marks_missing_empty_and_misplaced_members(tmp_path):
    pid = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"
    paths = expected_members(S2_DIR, pid)
    members = [(p, b"x") for k, p in paths.items() if k not in ("B01", "B02")]
    members.append((paths["B02"], b""))  # empty
    members.append((paths["B01"].replace("T33UUP/", "T33UUQ/"), b"x"))  # wrong tile folder: not the object
    _tar_zst(tmp_path / "s2.tar.zst", members)
    other = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_44"
    lacking, n = inventory(str(tmp_path / "s2.tar.zst"), S2_DIR, np.array(sorted([pid.encode(), other.encode()])))
    assert n == len(members)
    assert lacking[pid] == {"missing": ["B01"], "empty": ["B02"]}
    assert len(lacking[other]["missing"]) == 12
    rec = {"patch_id": pid, "s1_name": "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_75_43", "root": "/r", "split": "train"}
    errs = check_archived(rec, {(S2_DIR, k): v for k, v in lacking.items()})
    assert [(e.reason, e.detail.split(" ")[0]) for e in errs] == [("missing_object", "B01"), ("empty_object", "B02")]


@pytest.mark.slow
def test_archives_in_a_bucket_stream_through_the_storage_layer(reben, from_folders):
    """s3:// archives on a real SeaweedFS server, packs under the bucket output, removed after."""
    from bigearthnet_beam.transforms.storage import Storage
    from tests.servers import seaweedfs

    key, secret = "AKIABENBEAMARCHIVES1", "benbeam-archives-secret"
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", key)
    mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
    mp.delenv("AWS_PROFILE", raising=False)
    try:
        with seaweedfs(key, secret) as endpoint:
            st = Storage(s3_endpoint_url=endpoint)
            st.filesystem("s3://").mkdir("arch")
            for _, name in archives.ARCHIVES:
                st.upload_file(str(reben / name), f"s3://arch/in/{name}")
            st.upload_file(str(reben / "metadata.parquet"), "s3://arch/in/metadata.parquet")
            assert (
                main(
                    [
                        "convert",
                        "--meta",
                        "s3://arch/in/metadata.parquet",
                        "--archives",
                        "s3://arch/in",
                        "--out",
                        "s3://arch/ds",
                        "--shard_size",
                        "6",
                        "--workers",
                        "2",
                        "--no_report",
                        "--max_failure_fraction",
                        "1",
                        "--s3_endpoint_url",
                        endpoint,
                    ]
                )
                == 0
            )
            fs = st.filesystem("s3://arch")
            man = json.loads(fs.cat_file(f"s3://arch/ds/{manifest_schema.MANIFEST}"))
            ref = json.loads((from_folders / manifest_schema.MANIFEST).read_text())
            shards = [(s["path"], s["sha256"]) for m in (man, ref) for e in m["splits"].values() for s in e["shards"]]
            assert shards[: len(shards) // 2] == shards[len(shards) // 2 :]
            assert man["statistics"] == ref["statistics"]
            got = (
                fs.cat_file(f"s3://arch/ds/{manifest_schema.FAILURES_JSONL}")
                .decode()
                .replace("s3://arch/in", str(reben))
            )
            assert got == (from_folders / manifest_schema.FAILURES_JSONL).read_text()
            fs.invalidate_cache()
            left = [p for p in fs.ls("arch/ds", detail=False) if ".benbeam-packs" in p]
            assert len(left) == 1  # SeaweedFS keeps the emptied folder (its filer has real folders); S3 has none
            assert not [f for f in fs.find(left[0]) if f.endswith((".pack", ".json"))]
    finally:
        mp.undo()
