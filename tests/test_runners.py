"""The same `convert` on other runners, proven without a cloud account:

1. DataflowRunner --dry_run builds the whole job graph offline (every transform pickled);
2. the portable Job API (what Flink's and Spark's job servers speak): Beam's local job
   service on 127.0.0.1, PortableRunner, LOOPBACK environment;
3. a real multi-process engine: DaskRunner on a dask.distributed LocalCluster with two
   worker processes.

Runs 2 and 3 give shards byte-identical to the DirectRunner's, which also proves that
nothing relies on worker-local state.
"""

import json
import subprocess
import sys
import time

import pytest

from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.schemas import manifest
from tests.servers import free_port

# servers, job services, clusters or killed processes: make test-fast leaves these out
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
]  # servers, clusters or fresh environments: longer than the default

N = 16


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    d = tmp_path_factory.mktemp("runners")
    assert (
        main(
            [
                "synth",
                "--out",
                str(d / "reben"),
                "--n",
                str(N),
                "--seed",
                "9",
                "--faults",
                "truncated_tiff,missing_files",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "convert",
                "--max_failure_fraction",
                "1",
                "--meta",
                str(d / "reben" / "metadata.parquet"),
                "--out",
                str(d / "direct"),
                "--shard_size",
                "4",
            ]
        )
        == 0
    )
    return d, json.loads((d / "direct" / manifest.MANIFEST).read_text())


def _same_as_direct(sample, out):
    direct = sample[1]
    man = json.loads((out / manifest.MANIFEST).read_text())
    hashes = lambda m: {s["path"]: s["sha256"] for e in m["splits"].values() for s in e["shards"]}  # noqa: E731
    assert hashes(man) == hashes(direct)
    assert man["statistics"] == direct["statistics"]
    assert man["failures"] == direct["failures"]
    assert {k: (v["input"], v["written"], v["failed"]) for k, v in man["splits"].items()} == {
        k: (v["input"], v["written"], v["failed"]) for k, v in direct["splits"].items()
    }


def test_dataflow_dry_run_builds_the_whole_graph(sample, monkeypatch, capsys):
    import apache_beam.runners.dataflow.dataflow_runner as dr

    jobs = []
    orig = dr.DataflowRunner.run_pipeline

    def capture(self, pipeline, options, pipeline_proto=None):
        result = orig(self, pipeline, options, pipeline_proto)
        jobs.append(self.job)
        return result

    monkeypatch.setattr(dr.DataflowRunner, "run_pipeline", capture)
    d, _ = sample
    rc = main(
        [
            "launch",
            "dataflow",
            "--project",
            "my-project",
            "--region",
            "europe-west4",
            "--temp_location",
            "gs://my-bucket/tmp",
            "--machine_type",
            "n2-standard-4",
            "--max_workers",
            "50",
            "--dry_run",
            "--",
            "--meta",
            str(d / "reben" / "metadata.parquet"),
            "--out",
            "gs://my-bucket/ds",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "staged: bigearthnet_beam-" in out
    stats_job, write_job = jobs  # the statistics job, then the write job (statistics known at construction)
    names = lambda job: {t.unique_name for t in job.proto_pipeline.components.transforms.values()}  # noqa: E731
    for step in (
        "ReadMetadata",
        "ComputeStatistics/GroupByShard",
        "ComputeStatistics/CheckShards",
        "ComputeStatistics/ComputeBandStats",
        "WriteStatsPass",
    ):
        assert step in names(stats_job), step
    for step in (
        "ReadMetadata",
        "ConvertDataset/GroupByShard",
        "ConvertDataset/WriteShards",
        "ConvertDataset/Finalize",
    ):
        assert step in names(write_job), step
    assert not any("ComputeBandStats" in n for n in names(write_job))  # the statistics were known at construction
    assert any(n.startswith("ConvertDataset/WriteShards/Write") for n in names(write_job))
    opts = write_job.options.get_all_options()
    assert opts["extra_packages"][0].endswith(".whl") and not opts.get("setup_file")
    assert opts["max_num_workers"] == 50
    assert opts["staging_location"].startswith("gs://my-bucket/tmp/staging")


def test_portable_job_service_gives_identical_shards(sample, tmp_path):
    d, _ = sample
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        t0 = time.monotonic()
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() - t0 < 60, "job service did not start"
                time.sleep(0.2)
        out = tmp_path / "portable"
        assert (
            main(
                [
                    "launch",
                    "portable",
                    "--job_endpoint",
                    f"localhost:{port}",
                    "--environment_type",
                    "LOOPBACK",
                    "--",
                    "--max_failure_fraction",
                    "1",
                    "--meta",
                    str(d / "reben" / "metadata.parquet"),
                    "--out",
                    str(out),
                    "--shard_size",
                    "4",
                ]
            )
            == 0
        )
    finally:
        proc.terminate()
        proc.wait(10)
    _same_as_direct(sample, out)


def test_dask_cluster_gives_identical_shards(sample, tmp_path):
    distributed = pytest.importorskip("distributed")
    d, _ = sample
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        assert len(cluster.workers) == 2
        out = tmp_path / "dask"
        assert (
            main(
                [
                    "launch",
                    "dask",
                    "--dask_client_address",
                    cluster.scheduler_address.replace("tcp://", ""),
                    "--",
                    "--max_failure_fraction",
                    "1",
                    "--meta",
                    str(d / "reben" / "metadata.parquet"),
                    "--out",
                    str(out),
                    "--shard_size",
                    "4",
                ]
            )
            == 0
        )
        # the command closed the clients its jobs opened (else each reconnects for 30 s); the
        # workers' own clients ("Client-worker-…") are the cluster's
        ours = {c for c in cluster.scheduler.clients if c != "fire-and-forget" and not c.startswith("Client-worker-")}
        assert ours == set()
    _same_as_direct(sample, out)
