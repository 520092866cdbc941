"""Output bytes stay what they were: the sha256 of every deterministic file that `benbeam synth`
and `benbeam convert` write, through the real CLI, against hashes recorded from the code as it
stood before the re-layering of issue 15 (manifest, per-shard function, report modules).

Three conversions of one synthetic replica with dead letters of every fault kind, a shard size
small enough for several shards per split and a shard whose every patch fails:
``a`` float32 / uncompressed / bilinear with statistics computed (and its report);
``b`` float16 / gzip / cubic with ``--stats a/stats.json``;
``c`` validation + test only with ``--stats a/stats.json``; and ``d``, as ``c`` but with
``--stats a/dataset.json`` (the manifest form), which must give ``c``'s shards.
Excluded: ``run.json`` (timings, timestamps) and ``report.html``, a page whose markup may
change without any data changing: its data is checked instead — the plots and sample images
it embeds are the files under ``report/`` (whose bytes are pinned) and its tables show the
manifest's numbers. The report is rewritten from a fixed ``run.json`` by ``benbeam report``.
The temporary folder and the package version are replaced by placeholders before hashing
(paths and the version are recorded in the manifest and the dead letters).

When an intended change alters the bytes, re-record with
``python -m tests.test_byte_identity`` and say why in the commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from pathlib import Path

import pytest

from bigearthnet_beam.beam_pipeline import __version__
from bigearthnet_beam.beam_pipeline.cli import main
from tests import helpers

TEXT_SUFFIXES = (".json", ".jsonl", ".pbtxt", ".html", ".svg")
FIXED_RUN = {
    "counters": {},
    "direct_running_mode": "multi_processing",
    "finished_utc": "2000-01-01T00:00:00Z",
    "package_version": "@version",
    "patches": 23,
    "patches_per_s": 10.0,
    "peak_rss_mib": 100.0,
    "runner": "DirectRunner",
    "seconds": 2.3,
    "workers": 1,
}

# Re-recorded for issue 23: dataset.json describes the rows it received (count + digest) and the
# resolved root, not the metadata paths; statistics are sealed per patch (stats.json, histograms.npz,
# dataset.json's statistics change in the last digits). No shard changed.
EXPECTED: dict[str, str] = {  # recorded from the baseline code (commit 4855118)
    "reben/* (every file of the synthetic replica)": "c6d459fc9da690a5c50f4a9a9278f1e9e37618278b5864460f1b83f82e742446",
    "a/dataset.json": "42a44763e375cbe0c156734a93d558d677c236de627f027c18f14841e59537e4",
    "a/.benbeam-run.json": "977efadb044f16f0203a4f7bfc8750ea4a4219d9bd146ca58e69588e589ab6ea",
    "a/failures.jsonl": "ac0aee35dad60f59b7174a3032393d7eea97e189ed2a2b8f2b50a370e7a283f3",
    "a/histograms.npz": "866a7af99dd20a56f91c53f4adc43bb028ea55166bcf3db663c5896e7d8634c6",
    "a/report/classes.svg": "f4451d53168c6b5ab6f674ff1018f7a91d4adee4127e37f8947267b7b0cdf6f1",
    "a/report/failures.svg": "2bb4852b4276c4d906eaa133a3b64ee83964a4eb339b41d31665ebdf47616b13",
    "a/report/histograms.svg": "a87e7ba5450eb8a2fce57d13682d9b640c0e04cfcd69ec9d8021c7cb5b918eaa",
    "a/report/sample-0-label.png": "6125cc4d12c84e6ea02e9c8b256799f03ffd38138e48938809eea25f84d32474",
    "a/report/sample-0-rgb.png": "be8654f926a843ed38ce886474976bc3afe1c236ae886c0cc1d10e442180c869",
    "a/report/sample-1-label.png": "0a94defdf746969f0196d81f97234696dc6667044c85b96828095821e9783acd",
    "a/report/sample-1-rgb.png": "7e4bd9e519386043b2dc14e069bb882a00df085d0d106d82fc1f85b54467f829",
    "a/report/sample-2-label.png": "d4d6ce97bd9c1c6d6854ee5e60c0b10cc89fb813e0d4e649745b08ec3e78106c",
    "a/report/sample-2-rgb.png": "2480ba30af9822fc67a3705bfb8001d2ab7b304cfe01139080deb32948ce706e",
    "a/report/sample-3-label.png": "0740f525e1fe5f70e07bfd21b055e17c530e02181660df63af01df65bd893896",
    "a/report/sample-3-rgb.png": "46777e7ae696d3b812140015981f7ad89d679f0c7433ab88607605f3eb5f67ff",
    "a/report/sample-4-label.png": "072ca84b1ee09d561a547eb34af0e30c5d96c9b36faa3c7890ed60b0beea728c",
    "a/report/sample-4-rgb.png": "92db790ec95cfb45cdd5f50c55bdc176f5bacdec29996d1fe98143fb7229d518",
    "a/report/sample-5-label.png": "345ce30a27566b6b9c478da07a6509622e4f21b9f193314100e3ccfd260e5660",
    "a/report/sample-5-rgb.png": "cbeea1face0b3d05ed72bf9da379c950c37e159d7d2e1f22796b750aabbcf2a7",
    "a/schema.pbtxt": "6ff6fad88aac9e2b46aefbcc2f8475ce5f78c305ebe2e90b942ca4f836e76165",
    "a/stats.json": "cf6a1e18201e47c3e0b24a1129c09ad49d5f0af2beceff7fa925a3eea9d01c6e",
    "a/test/test-00000-of-00002.tfrecord": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "a/test/test-00001-of-00002.tfrecord": "164e7d0de919e92cf9f972ea037ec339dc9d2a16dc3d0c7e9d69ba964a8848e0",
    "a/train/train-00000-of-00003.tfrecord": "120936b58b6c3c99d3ecd4f6f9e8b906eaf1d7ade4c0bb113161ce60fbc7e79b",
    "a/train/train-00001-of-00003.tfrecord": "f55d1c7a96aa06cd81a15a6d3a1448a3ee8c2cf1d2a0612f2e03efe051ddca80",
    "a/train/train-00002-of-00003.tfrecord": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "a/validation/validation-00000-of-00002.tfrecord": "d0eaa87c71b3ec99aa1e533fda3b8f791ec9f7dc24704f54fbb4f1e85684a64c",
    "a/validation/validation-00001-of-00002.tfrecord": "a8d740d4471d8ac95daf7339f1fd3a5776ca02110c20998d7e0327f5ab13a068",
    "b/dataset.json": "642c454cef90fa44ac21d03f23eb57c5f776b09df7e583449c8bc2b4addcab1e",
    "b/.benbeam-run.json": "977efadb044f16f0203a4f7bfc8750ea4a4219d9bd146ca58e69588e589ab6ea",
    "b/failures.jsonl": "ac0aee35dad60f59b7174a3032393d7eea97e189ed2a2b8f2b50a370e7a283f3",
    "b/schema.pbtxt": "c1b5d79af0ce921d11d07e2db1d6d7a630da6a66a2e428f3bbe09386ea40ac69",
    "b/stats.json": "1d2554957fff563fccd04dbf39fd31aa912e0f1995b1f473b01668d9ae022d3a",
    "b/test/test-00000-of-00002.tfrecord.gz": "9ceffb7310338057cfe71a4ae1e2c98d2c485d81cdef906532a801f457a38d64",
    "b/test/test-00001-of-00002.tfrecord.gz": "23a7a057b6c2bc9528a7e265b708ae93e9178b5e691e0e4f1164ec2d17f3fe57",
    "b/train/train-00000-of-00003.tfrecord.gz": "70c574defaeabd58e4f21756e42b2280f6db44ea00bc47c4a0a7d93120c6f51f",
    "b/train/train-00001-of-00003.tfrecord.gz": "453a2e7e93d73f9d20145a55252812a80fe198c292aa1c310d09e4d324452f2d",
    "b/train/train-00002-of-00003.tfrecord.gz": "9ceffb7310338057cfe71a4ae1e2c98d2c485d81cdef906532a801f457a38d64",
    "b/validation/validation-00000-of-00002.tfrecord.gz": "2d9a4c765e7bd4480d684ca535f0f8ff70689b2c816b07fe9893c32985e8a48e",
    "b/validation/validation-00001-of-00002.tfrecord.gz": "8cf2f854eb9db58d760245990a19caf1b7414b11c13b71ea3ba5e13a0a2ed359",
    "c/dataset.json": "29a24136151ff272fcdb9c7f145e8ba314242c7b2e27c4f85978dec895fae8e1",
    "c/.benbeam-run.json": "977efadb044f16f0203a4f7bfc8750ea4a4219d9bd146ca58e69588e589ab6ea",
    "c/failures.jsonl": "4d262466bf99771ef4ab31e288449693472d22bb037854c9404e5dc04f608b19",
    "c/schema.pbtxt": "6ff6fad88aac9e2b46aefbcc2f8475ce5f78c305ebe2e90b942ca4f836e76165",
    "c/stats.json": "1d2554957fff563fccd04dbf39fd31aa912e0f1995b1f473b01668d9ae022d3a",
    "c/test/test-00000-of-00002.tfrecord": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "c/test/test-00001-of-00002.tfrecord": "164e7d0de919e92cf9f972ea037ec339dc9d2a16dc3d0c7e9d69ba964a8848e0",
    "c/validation/validation-00000-of-00002.tfrecord": "d0eaa87c71b3ec99aa1e533fda3b8f791ec9f7dc24704f54fbb4f1e85684a64c",
    "c/validation/validation-00001-of-00002.tfrecord": "a8d740d4471d8ac95daf7339f1fd3a5776ca02110c20998d7e0327f5ab13a068",
    # Re-recorded for issue 26 (the replica places MGRS tiles where their names say): the replica's
    # GeoTIFFs (georeferencing only), and the grid-mismatch dead letter of T35VPK_00_07, whose
    # message quotes the origin (now 6,991,600 m: the tile hangs 109.8 km south of its 100 km
    # square's north edge), in a/ and b/failures.jsonl (and in a/report.html,
    # whose data is checked instead of its bytes). No shard changed.
    # New files, not in the baseline: the TFDS metadata derived from dataset.json (issue 17).
    # gzip datasets (b) get none: TFDS reads uncompressed TFRecords only.
    "a/dataset_info.json": "938de51a9cac7257fbd3681272a15485364a3b50a2a7f2c2395b551557f44920",
    "a/features.json": "cdec0d1b872215d9d5e04dabd641d5de2901f80e8354c2531f066657228b4f6a",
    "a/metadata.json": "d994494ff1185a9aa9e27905cc3455d26f94bb58dbab03cd6fb84b677a08d816",
    "c/dataset_info.json": "28005f09bb1785b78b5ab2e36407548612c64c512c0db2ebc9149e4d95f888a5",
    "c/features.json": "cdec0d1b872215d9d5e04dabd641d5de2901f80e8354c2531f066657228b4f6a",
    "c/metadata.json": "d994494ff1185a9aa9e27905cc3455d26f94bb58dbab03cd6fb84b677a08d816",
}


VARIANTS = ("a", "b", "c", "d")


def _common(reben: Path) -> list[str]:
    return ["--meta", str(reben / "metadata.parquet"), "--shard_size", "4", "--max_failure_fraction", "1"]


def produce(base: Path, variants: tuple[str, ...] = VARIANTS) -> dict[str, str]:
    """Synth and convert under ``base`` (what is not there yet); the normalised sha256 of every
    deterministic file of the replica and of ``variants``."""
    reben = base / "reben"
    if not reben.exists():
        argv = ["synth", "--out", str(reben), "--n", "22", "--seed", "3", "--corrupt", "0.5", "--workers", "1"]
        assert main(argv) == 0
    common = [*_common(reben), "--workers", "1"]
    stats = ["--stats", str(base / "a" / "stats.json"), "--no_report"]
    flags = {
        "a": [],
        "b": ["--compression", "gzip", "--dtype", "float16", "--resampling", "cubic", *stats],
        "c": ["--splits", "validation,test", *stats],
        "d": ["--splits", "validation,test", "--stats", str(base / "a" / "dataset.json"), "--no_report"],
    }
    for name in ("a", *[v for v in variants if v != "a"]):  # b, c and d use a's statistics
        if not (base / name).exists():
            assert main(["convert", *common, "--out", str(base / name), *flags[name]]) == 0
            if name == "a":
                (base / "a" / "run.json").write_text(json.dumps(FIXED_RUN, indent=2, sort_keys=True) + "\n")
                assert main(["report", str(base / "a")]) == 0
    # The input replica as one digest: if it changed, the outputs' differences are not convert's.
    inputs = "".join(
        f"{f.relative_to(reben).as_posix()} {hashlib.sha256(f.read_bytes()).hexdigest()}\n"
        for f in sorted(reben.rglob("*"))
        if f.is_file()
    )
    hashes = {"reben/* (every file of the synthetic replica)": hashlib.sha256(inputs.encode()).hexdigest()}
    for name in variants:
        for path in sorted((base / name).rglob("*")):
            rel = path.relative_to(base).as_posix()
            if not path.is_file() or path.name in ("run.json", "report.html"):
                continue
            data = path.read_bytes()
            if path.name.endswith(TEXT_SUFFIXES):
                data = (
                    data.replace(str(base).encode(), b"@base")
                    .replace(f'"package_version": "{__version__}"'.encode(), b'"package_version": "@version"')
                    .replace(f"convert {__version__} \u00b7".encode(), "convert @version \u00b7".encode())
                )
            hashes[rel] = hashlib.sha256(data).hexdigest()
    return hashes


def _expected(*variants: str) -> dict[str, str]:
    return {k: v for k, v in EXPECTED.items() if k.startswith(("reben/", *(f"{x}/" for x in variants)))}


def _differences(produced: dict[str, str], expected: dict[str, str]) -> list[str]:
    assert set(produced) == set(expected), f"the set of files written changed: {sorted(set(produced) ^ set(expected))}"
    return sorted(k for k in expected if produced[k] != expected[k])


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """The replica and ``a`` (statistics computed, report written): the fast tier's conversion."""
    base = tmp_path_factory.mktemp("bytes")
    with helpers.fast_tier_pipelines():  # one of the fast tier's handful of pipelines (tests/conftest.py)
        return base, produce(base, ("a",))


@pytest.fixture(scope="module")
def run(run_a):
    """``b``, ``c`` and ``d`` too, in the same folder (three more conversions: slow)."""
    base, _ = run_a
    return base, produce(base, VARIANTS)


def test_every_file_of_the_replica_and_of_a_has_its_recorded_bytes(run_a):
    changed = _differences(run_a[1], _expected("a"))
    assert not changed, f"{len(changed)} file(s) differ from the recorded bytes: {changed}"


@pytest.mark.slow
def test_every_file_of_b_and_c_has_its_recorded_bytes(run):
    produced = {k: v for k, v in run[1].items() if not k.startswith(("a/", "d/"))}
    changed = _differences(produced, _expected("b", "c"))
    assert not changed, f"{len(changed)} file(s) differ from the recorded bytes: {changed}"


def test_a_covers_what_it_claims(run_a):
    """Several training shards, an empty shard (every patch of it failed), a manifest and dead letters."""
    produced = run_a[1]
    assert "a/dataset.json" in produced and "a/failures.jsonl" in produced
    assert sum(k.startswith("a/train/") for k in produced) >= 2
    empty = hashlib.sha256(b"").hexdigest()
    assert empty in {v for k, v in produced.items() if k.startswith("a/") and k.endswith(".tfrecord")}


@pytest.mark.slow
def test_b_and_c_cover_what_they_claim(run):
    """gzip shards in ``b``; ``c`` has no training split; both have a manifest and dead letters."""
    produced = run[1]
    for ds in ("b", "c"):
        assert f"{ds}/dataset.json" in produced and f"{ds}/failures.jsonl" in produced
    assert any(k.startswith("b/") and k.endswith(".tfrecord.gz") for k in produced)
    assert not any(k.startswith("c/train/") for k in produced)


@pytest.mark.slow  # a whole conversion of its own
def test_one_process_writes_the_bytes_of_the_worker_process(run_a):
    """``a`` again on Beam's in-memory runner, as tests/conftest.py and several modules convert:
    every file the same but the timings (``run.json``) and the page that shows them."""
    base, _ = run_a
    one = base / "a-in-memory"
    assert main(["convert", *_common(base / "reben"), "--out", str(one), "--direct_running_mode", "in_memory"]) == 0

    def files(ds: Path) -> dict[str, bytes]:
        skip = ("run.json", "report.html")
        return {
            p.relative_to(ds).as_posix(): p.read_bytes().replace(str(ds).encode(), b"@out")
            for p in sorted(ds.rglob("*"))
            if p.is_file() and p.name not in skip
        }

    multi, single = files(base / "a"), files(one)
    assert set(multi) == set(single) and sum(k.endswith(".tfrecord") for k in multi) >= 4
    assert [k for k in multi if multi[k] != single[k]] == []


def test_the_report_shows_the_pinned_data(run_a):
    """report.html embeds exactly the plot and sample files of report/ and shows the manifest's counts."""
    base, _ = run_a
    a = base / "a"
    page = (a / "report.html").read_text()
    embedded = [base64.b64decode(m) for m in re.findall(r'src="data:image/[a-z+]+;base64,([A-Za-z0-9+/=]+)"', page)]
    files = {p.name: p.read_bytes() for p in sorted((a / "report").iterdir())}
    assert len(embedded) == len(files) and sorted(embedded) == sorted(files.values())
    man = json.loads((a / "dataset.json").read_text())
    for split, s in man["splits"].items():  # the accounting row of every split: input, written, failed, shards
        cells = [split, f"{s['input']:,}", f"{s['written']:,}", f"{s['failed']:,}", f"{len(s['shards']):,}"]
        row = '<td class="l">' + split + "</td>" + "".join(f"<td>{c}</td>" for c in cells[1:])
        assert row in page, (split, row)
    assert "Every input row is accounted for." in page
    for reason, count in man["failures"]["by_reason"].items():
        assert reason in page and f"<td>{count:,}</td>" in page, reason


@pytest.mark.slow
def test_stats_from_a_manifest_equal_stats_from_its_stats_json(run):
    base, hashes = run
    c = {k[2:]: v for k, v in hashes.items() if k.startswith("c/")}
    d = {k[2:]: v for k, v in hashes.items() if k.startswith("d/")}
    assert set(c) == set(d)
    assert {k: v for k, v in d.items() if k not in ("stats.json", "dataset.json")} == {
        k: v for k, v in c.items() if k not in ("stats.json", "dataset.json")
    }
    c_stats, d_stats = (json.loads((base / x / "stats.json").read_text()) for x in "cd")
    assert d_stats.pop("source") == str(base / "a" / "dataset.json") and c_stats.pop("source")
    assert c_stats == d_stats


if __name__ == "__main__":  # re-record: prints the EXPECTED table
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        table = {k: v for k, v in produce(Path(tmp)).items() if not k.startswith("d/")}
    rows = [f'    "{k}": "{v}",' if len(k) + len(v) < 110 else f'    "{k}":\n        "{v}",' for k, v in table.items()]
    sys.stdout.write("EXPECTED = {\n" + "\n".join(rows) + "\n}\n")
