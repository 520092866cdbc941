"""The Python / Beam API, used the way a user would: only ``bigearthnet_beam`` is imported (the
command line runs as ``python -m bigearthnet_beam``).

A user pipeline reads the metadata of a synthetic replica, keeps one country with a plain
``beam.Filter`` and converts with ``ConvertDataset``: the dataset verifies and equals, file by
file, what ``benbeam convert`` writes from a parquet of the same rows — on the DirectRunner and
on the DaskRunner (a dask.distributed LocalCluster with two worker processes).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import apache_beam as beam
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

import bigearthnet_beam as bb

N = 40
OPTS = {"shard_size": 3, "splits": ("train", "validation", "test")}
CLI_OPTS = ["--shard_size", "3", "--max_failure_fraction", "1", "--workers", "2"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``benbeam ARGS`` in a subprocess."""
    r = subprocess.run([sys.executable, "-m", "bigearthnet_beam", *args], capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative paths)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    """A replica with failing patches, the country to keep, and the CLI's dataset of that country's rows."""
    d = tmp_path_factory.mktemp("api")
    reben = d / "reben"
    cli("synth", "--out", str(reben), "--n", str(N), "--seed", "5", "--corrupt", "0.3")
    table = pq.read_table(reben / "metadata.parquet")
    country = Counter(table.column("country").to_pylist()).most_common(1)[0][0]
    kept = table.filter(pc.equal(table["country"], country))
    assert 0 < kept.num_rows < table.num_rows
    pq.write_table(kept, d / "kept.parquet")
    # the CLI's dataset, written where the pipelines below write theirs (the manifest records --out)
    out = d / "ds"
    cli("convert", "--meta", str(d / "kept.parquet"), "--root", str(reben), "--out", str(out), *CLI_OPTS)
    # its report shows the run's throughput (run.json); rewritten without it, as ConvertDataset writes it
    (out / "run.json").unlink()
    cli("report", str(out))
    shutil.move(str(out), str(d / "cli"))
    return d, reben, country


def user_pipeline(meta: str, root: str, out: str, country: str, options: PipelineOptions) -> None:
    """The example of docs/python-api.md."""
    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | bb.ReadMetadata(meta)
            | beam.Filter(lambda row: row["country"] == country)
            | bb.ConvertDataset(root=root, out=out, **OPTS)
        )


def _same_as_cli(d: Path, out: Path) -> None:
    got, want = tree(out), tree(d / "cli")
    assert sorted(got) == sorted(want)
    assert {k: v for k, v in got.items() if v != want[k]} == {}
    assert cli("verify", str(out)).returncode == 0


@pytest.mark.slow
def test_a_user_pipeline_filters_a_country_and_equals_the_cli(replica):
    d, reben, country = replica
    out = d / "ds"
    user_pipeline(
        str(reben / "metadata.parquet"),
        str(reben),
        str(out),
        country,
        PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"]),
    )
    man = json.loads((out / "dataset.json").read_text())
    assert man["failures"]["total"] > 0  # the faults reached the dead letters
    assert all(e["written"] + e["failed"] == e["input"] for e in man["splits"].values())
    _same_as_cli(d, out)
    shutil.move(str(out), str(d / "direct"))


@pytest.mark.slow
def test_the_same_pipeline_on_the_dask_runner_equals_the_cli(replica):
    distributed = pytest.importorskip("distributed")
    d, reben, country = replica
    out = d / "ds"
    shutil.rmtree(out, ignore_errors=True)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        options = PipelineOptions(
            [
                "--runner",
                "apache_beam.runners.dask.dask_runner.DaskRunner",
                "--dask_client_address",
                cluster.scheduler_address.replace("tcp://", ""),
                "--dask_partition_size",
                "1",
            ]
        )
        user_pipeline(str(reben / "metadata.parquet"), str(reben), str(out), country, options)
        distributed.default_client().close()  # the runner's client: ours to close before the cluster
    _same_as_cli(d, out)
    shutil.rmtree(out)


@pytest.mark.slow
def test_the_statistics_combinefn_gives_the_cli_statistics_and_shards(replica):
    """``StatisticsCombineFn`` under ``beam.CombineGlobally`` over the decoded training patches
    equals the CLI's stats.json; ``ConvertDataset`` given those statistics (a PCollection) writes
    the CLI's shards."""
    d, reben, _ = replica
    want = json.loads((d / "cli" / "stats.json").read_text())
    out = d / "given"
    with beam.Pipeline() as p:
        rows = p | bb.ReadMetadata(str(d / "kept.parquet"))
        decoded = rows | beam.Filter(lambda row: row["split"] == "train") | bb.DecodePatches(str(reben))
        stats = (
            decoded["patches"]
            | beam.Map(lambda kv: kv[1].pixels)
            | beam.CombineGlobally(bb.StatisticsCombineFn())
            | beam.Map(lambda doc: json.loads(json.dumps(doc)))
        )
        assert_that(stats, equal_to([want]))
        _ = rows | "Convert" >> bb.ConvertDataset(root=str(reben), out=str(out), statistics=stats, **OPTS)
    shards = lambda t: {k: v for k, v in t.items() if k.endswith(".tfrecord")}  # noqa: E731
    assert shards(tree(out)) == shards(tree(d / "cli")) != {}
    assert json.loads((out / "stats.json").read_text()) == want
    assert not (out / "histograms.npz").exists()  # given statistics come without histograms


@pytest.mark.slow
def test_validate_objects_finds_what_validate_finds(replica):
    d, reben, _ = replica
    report = d / "validate.json"
    cli("validate", "--meta", str(d / "kept.parquet"), "--root", str(reben), "--out", str(report), check=False)
    want = sorted(f["patch_id"] for f in json.loads(report.read_text())["failures"])
    n = pq.read_metadata(d / "kept.parquet").num_rows
    assert want and len(want) < n

    def same(results):
        assert len(results) == n
        assert sorted(r["patch_id"] for r in results if r["reasons"]) == want

    with beam.Pipeline() as p:
        results = p | bb.ReadMetadata(str(d / "kept.parquet")) | bb.ValidateObjects(str(reben))
        assert_that(results, same)


def test_the_transforms_pickle():
    st = bb.Storage(s3_endpoint_url="http://127.0.0.1:1", anon=True)
    for t in (
        bb.ReadMetadata("m.parquet", storage=st),
        bb.ConvertDataset(root="/data", out="/out", storage=st, shard_size=7, frac=0.5),
        bb.ComputeStatistics("/data", storage=st),
        bb.ValidateObjects("/data", storage=st, deep=True),
        bb.DecodePatches("/data", storage=st),
        bb.StatisticsCombineFn(clip=False, clip_percentiles=(2, 98)),
    ):
        back = pickle.loads(pickle.dumps(t))
        assert type(back) is type(t)
        for name in ("storage", "shard_size", "frac", "deep", "clip", "clip_percentiles", "url_or_urls"):
            assert getattr(back, name, None) == getattr(t, name, None), name


def test_bad_options_are_refused_when_the_transform_is_made():
    with pytest.raises(bb.InputError, match="--frac"):
        bb.ConvertDataset(root="/data", out="/out", frac=0)
    with pytest.raises(bb.InputError, match="'validation'"):
        bb.ConvertDataset(root="/data", out="/out", splits=("train", "val"))
    with pytest.raises(bb.InputError, match="training split"):
        bb.ConvertDataset(root="/data", out="/out", splits=("test",))
    # the statistics stage takes the same options and refuses them the same way
    with pytest.raises(bb.InputError, match="--frac"):
        bb.ComputeStatistics("/data", frac=1.5)
    with pytest.raises(bb.InputError, match="--shard_size"):
        bb.ComputeStatistics("/data", shard_size=0)
    with pytest.raises(bb.InputError, match="training split"):
        bb.ComputeStatistics("/data", splits=("validation",))


def test_the_public_names():
    eager = [n for n in bb.__all__ if n not in ("make_dataset", "BenDataset")]  # those import TF / torch
    for name in eager:
        assert getattr(bb, name) is not None, name
    assert set(dir(bb)) == set(bb.__all__)
    with pytest.raises(AttributeError):
        bb.NoSuchName  # noqa: B018
    assert issubclass(bb.NoStatisticsError, bb.IntegrityError) and issubclass(bb.StorageError, bb.UnavailableError)


def test_importing_the_package_imports_no_beam_tensorflow_or_torch():
    code = (
        "import sys, bigearthnet_beam\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'apache_beam', 'tensorflow', 'keras', 'torch'})\n"
        "assert not bad, bad\n"
        "bigearthnet_beam.Storage()\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'torch'})\n"
        "assert not bad, bad\n"
        "bigearthnet_beam.ConvertDataset\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'torch'})\n"
        "assert not bad, bad\n"
        "print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=os.sep)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
