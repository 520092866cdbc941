"""One root decides what a command may read: the one the user named, never one a file claims.

The root is ``--root``, else the folder of ``--meta``, resolved once (absolute, symlinks
resolved). An index's ``benbeam.root`` schema metadata is information, not authority (U1);
an index written with a relative ``--root`` works from any folder (W4: `benbeam index`
stores absolute paths, and a relative object path is relative to the root); every reader
of a manifest shares one path check (U2: `benbeam report` too).
"""

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.schemas import errors, failures, manifest
from bigearthnet_beam.transforms import containment
from bigearthnet_beam.transforms import metadata as md
from tests.test_hostile import _outside, audit

IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 3-patch replica and a decodable GeoTIFF outside it (the secret a crafted input points at)."""
    base = tmp_path_factory.mktemp("root")
    root = base / "reben"
    assert main(["synth", "--out", str(root), "--n", "3", "--seed", "5", "--workers", "1"]) == 0
    secret = base / "outside" / "secret.tif"
    secret.parent.mkdir()
    shutil.copy(next((root / "BigEarthNet-S2").rglob("*_B02.tif")), secret)  # decodable: if opened, it would be used
    return {"base": base, "root": root, "secret": secret}


def _crafted(small, path, declared: str | None, url: str):
    """An index of the small replica whose url_B02 column points at ``url`` and that declares ``declared``."""
    idx = small["base"] / "plain-index.parquet"
    if not idx.exists():
        assert main(["index", "--meta", str(small["root"] / "metadata.parquet"), "--out", str(idx)]) == 0
    t = pq.read_table(idx)
    t = t.set_column(t.column_names.index("url_B02"), "url_B02", pa.array([url] * t.num_rows))
    meta = dict(t.schema.metadata or {})
    meta.pop(md.ROOT_KEY, None)
    if declared is not None:
        meta[md.ROOT_KEY] = declared.encode()
    pq.write_table(t.replace_schema_metadata(meta), path)
    return path


@pytest.mark.parametrize("cmd", ["validate", "convert"])
def test_an_index_that_declares_root_slash_is_refused_and_nothing_outside_is_opened(small, cmd, tmp_path, capsys):
    evil = _crafted(small, small["root"] / f"evil-{cmd}.parquet", "/", str(small["secret"]))
    out = tmp_path / ("v.json" if cmd == "validate" else "out")
    with audit() as opened:
        rc = main([cmd, "--meta", str(evil), "--out", str(out), *IN_PROCESS])
    err = capsys.readouterr().err
    assert rc == 2 and "--root" in err and "never one a file declares" in err, err[-500:]
    assert not _outside(opened, small["root"], [os.path.realpath(small["base"]), "/etc", "/proc"])
    assert not out.exists()


@pytest.mark.slow
def test_with_the_root_named_every_object_outside_it_is_a_dead_letter(small, tmp_path, capsys):
    for url, reason in [("/etc/passwd", "outside_root"), (str(small["secret"]), "outside_root")]:
        evil = _crafted(small, tmp_path / "evil.parquet", "/", url)
        out = tmp_path / "v.json"
        out.unlink(missing_ok=True)
        with audit() as opened:
            rc = main(["validate", "--meta", str(evil), "--root", str(small["root"]), "--out", str(out), *IN_PROCESS])
        assert rc == 1
        rep = json.loads(out.read_text())
        assert rep["totals"] == {"patches": 3, "ok": 0, "failed": 3} and rep["by_reason"] == {reason: 3}
        assert not _outside(opened, small["root"], [os.path.realpath(small["base"]), "/etc"])


def test_the_root_is_resolved_once_and_a_declared_root_never_widens_it(small, tmp_path):
    link = tmp_path / "link-to-reben"
    os.symlink(small["root"], link)
    meta = str(link / "metadata.parquet")
    assert md.named_root(None, meta) == os.path.realpath(small["root"])
    assert md.named_root(str(link), "x/metadata.parquet") == os.path.realpath(small["root"])
    assert md.named_root("s3://bucket/reben/", "s3://bucket/reben/metadata.parquet") == "s3://bucket/reben"
    inside = pa.table({"a": [1]}).replace_schema_metadata({md.ROOT_KEY: str(small["root"] / "BigEarthNet-S2").encode()})
    outside = pa.table({"a": [1]}).replace_schema_metadata({md.ROOT_KEY: b"/"})
    assert md.dataset_root(None, meta, [inside]) == os.path.realpath(small["root"])
    with pytest.raises(md.MetadataError, match="--root"):
        md.dataset_root(None, meta, [outside])
    assert md.dataset_root(str(small["root"]), meta, [outside]) == os.path.realpath(small["root"])
    assert isinstance(md.MetadataError("x"), errors.InputError)


@pytest.mark.slow
def test_an_index_written_with_a_relative_root_works_from_another_folder(small, tmp_path, monkeypatch):
    monkeypatch.chdir(small["base"])
    idx = tmp_path / "rel-index.parquet"
    assert main(["index", "--meta", "reben/metadata.parquet", "--root", "reben", "--out", str(idx)]) == 0
    urls = pq.read_table(idx).column("url_B02").to_pylist()
    assert all(os.path.isabs(u) and u.startswith(os.path.realpath(small["root"])) for u in urls)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "v.json"
    rc = main(["validate", "--meta", str(idx), "--root", str(small["root"]), "--out", str(out), *IN_PROCESS])
    assert rc == 0 and json.loads(out.read_text())["totals"]["ok"] == 3


def test_a_relative_object_path_is_relative_to_the_root_not_the_working_folder(small, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = os.path.relpath(next((small["root"] / "BigEarthNet-S2").rglob("*_B02.tif")), small["root"])
    assert containment.check_url(rel, str(small["root"])) == os.path.realpath(small["root"] / rel)
    with pytest.raises(failures.PatchError) as e:
        containment.check_url("../outside/secret.tif", str(small["root"]))
    assert e.value.reason == "path_traversal"


# --------------------------------------------------------------------------- U2: one manifest check, every reader


@pytest.fixture(scope="module")
def dataset(converted):
    """The session's conversion (tests/conftest.py; read-only: the tests tamper with copies)."""
    return converted


def _tampered(dataset, tmp_path, edit):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    man = json.loads((ds / manifest.MANIFEST).read_text())
    edit(ds, man)
    (ds / manifest.MANIFEST).write_text(json.dumps(man))
    return ds


def _first_shard(man):
    return next(sh for s in man["splits"].values() for sh in s["shards"] if sh["records"])


@pytest.mark.parametrize(
    "how",
    ["absolute", "dotdot", "url", "symlink", "histograms", "failures_file"],
)
@pytest.mark.parametrize("cmd", ["report", "verify"])
def test_report_and_verify_refuse_manifest_paths_outside_the_dataset(dataset, small, tmp_path, how, cmd, capsys):
    secret = str(small["secret"])

    def edit(ds, man):
        if how == "absolute":
            _first_shard(man)["path"] = secret
        elif how == "dotdot":
            _first_shard(man)["path"] = os.path.relpath(secret, ds)
        elif how == "url":
            _first_shard(man)["path"] = "http://169.254.169.254/x"
        elif how == "symlink":
            os.symlink(secret, ds / "train" / "link.tfrecord")
            _first_shard(man)["path"] = "train/link.tfrecord"
        elif how == "histograms":
            man["files"]["histograms"] = secret
        else:
            man["failures"]["file"] = "../../" + os.path.basename(secret)

    ds = _tampered(dataset, tmp_path, edit)
    with audit() as opened:
        rc = main([cmd, str(ds)])
    err = capsys.readouterr().err
    assert rc == 2, err[-500:]
    assert len([x for x in err.splitlines() if x.startswith("benbeam")]) == 1, err
    assert not any(os.path.realpath(p) == os.path.realpath(secret) for p in opened)


def test_manifest_load_refuses_every_listed_path_that_is_not_plain_and_relative():
    for bad in ["/etc/passwd", "../x", "a/../../x", "s3://b/k", "a//b", "./a", "C:/x", "a\x00b", ""]:
        assert manifest.path_problem(bad), bad
    for good in ["train/train-00000-of-00001.tfrecord", "stats.json", "histograms.npz"]:
        assert manifest.path_problem(good) is None
