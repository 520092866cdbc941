"""The launch commands build the options they document; missing extras say which to
install; the tfx-bsl cross-check of `verify` finds a decoding that differs."""

import zipfile

import pytest

from bigearthnet_beam.beam_pipeline import cli
from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.launch import staging, submit
from tests.helpers import IN_PROCESS


def _args(argv):
    return submit.runner_args(submit.build_parser().parse_args(argv), package="/w/pkg.whl")


def test_flink_through_a_job_server_downloads_nothing():
    assert _args(
        [
            "flink",
            "--job_endpoint",
            "jobserver:8099",
            "--environment_type",
            "EXTERNAL",
            "--environment_config",
            "pool:50000",
            "--parallelism",
            "4",
        ]
    ) == [
        "--runner",
        "PortableRunner",
        "--job_endpoint",
        "jobserver:8099",
        "--environment_type",
        "EXTERNAL",
        "--environment_config",
        "pool:50000",
        "--extra_package",
        "/w/pkg.whl",
        "--parallelism",
        "4",
    ]
    # DOCKER with the custom image: the image is the environment and holds the package (nothing staged)
    assert _args(["flink", "--job_endpoint", "js:8099", "--sdk_container_image", "reg/benbeam-worker:0.1"]) == [
        "--runner",
        "PortableRunner",
        "--job_endpoint",
        "js:8099",
        "--environment_type",
        "DOCKER",
        "--environment_config",
        "reg/benbeam-worker:0.1",
    ]
    # without a job server: Beam's FlinkRunner (which starts one from a downloaded jar)
    assert _args(["flink", "--flink_master", "flink:8081", "--flink_version", "1.19"])[:6] == [
        "--runner",
        "FlinkRunner",
        "--flink_master",
        "flink:8081",
        "--flink_version",
        "1.19",
    ]


def test_spark_portable_dask_and_dataflow_arguments():
    assert _args(
        [
            "spark",
            "--job_endpoint",
            "spark-js:8099",
            "--environment_type",
            "PROCESS",
            "--environment_config",
            '{"command": "/opt/apache/beam/boot"}',
        ]
    )[:6] == ["--runner", "PortableRunner", "--job_endpoint", "spark-js:8099", "--environment_type", "PROCESS"]
    assert _args(["spark", "--spark_master_url", "spark://m:7077"])[:4] == [
        "--runner",
        "SparkRunner",
        "--spark_master_url",
        "spark://m:7077",
    ]
    assert _args(["portable", "--job_endpoint", "localhost:8099"]) == [
        "--runner",
        "PortableRunner",
        "--job_endpoint",
        "localhost:8099",
        "--environment_type",
        "LOOPBACK",
    ]
    assert _args(["dask", "--dask_client_address", "10.0.0.1:8786"]) == [
        "--runner",
        submit.DASK_RUNNER,
        "--dask_client_address",
        "10.0.0.1:8786",
        "--dask_partition_size",
        "1",
    ]
    df = _args(
        ["dataflow", "--project", "my-project", "--region", "europe-west4", "--temp_location", "gs://my-bucket/t"]
    )
    assert df[df.index("--extra_package") + 1] == "/w/pkg.whl" and "--setup_file" not in df
    assert df[df.index("--staging_location") + 1] == "gs://my-bucket/t/staging"
    img = submit.dataflow_args(
        project="my-project", region="europe-west4", temp_location="gs://my-bucket/t", sdk_container_image="img:1"
    )
    assert img[img.index("--sdk_container_image") + 1] == "img:1" and "--extra_package" not in img
    assert img[img.index("--sdk_location") + 1] == "container"


def test_which_launches_stage_the_package():
    parse = submit.build_parser().parse_args
    assert submit.needs_package(
        parse(["dataflow", "--project", "my-project", "--region", "europe-west4", "--temp_location", "gs://my-bucket"])
    )
    assert not submit.needs_package(parse(["portable", "--job_endpoint", "h:1"]))  # LOOPBACK: this process
    assert not submit.needs_package(parse(["dask", "--dask_client_address", "h:1"]))
    assert not submit.needs_package(parse(["flink", "--job_endpoint", "h:1", "--sdk_container_image", "i"]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(project="my-project", region="europe-west4", temp_location="/tmp/x", package="w.whl"), "gs://"),
        (
            dict(
                project="my-project",
                region="europe-west4",
                temp_location="gs://my-bucket",
                setup_file="/nowhere/setup.py",
            ),
            "does not exist",
        ),
        (dict(project="my-project", region="europe-west4", temp_location="gs://my-bucket"), "need the package"),
    ],
)
def test_dataflow_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        submit.dataflow_args(**kwargs)


def test_portable_argument_errors():
    with pytest.raises(ValueError, match="HOST:PORT"):
        submit.portable_args(job_endpoint="nohostport")
    with pytest.raises(ValueError, match="EXTERNAL needs"):
        submit.flink_args(job_endpoint="h:1", environment_type="EXTERNAL")
    with pytest.raises(ValueError, match="--job_endpoint"):
        submit.flink_args()
    assert main(["launch", "flink", "--environment_type", "LOOPBACK", "--", "--meta", "m", "--out", "o"]) == 2
    assert main(["launch", "dask", "--dask_client_address", "127.0.0.1:1"]) == 2  # no convert flags


@pytest.mark.slow  # builds a wheel
def test_a_wheel_of_the_running_package(tmp_path):
    whl = staging.build_wheel(str(tmp_path))
    names = zipfile.ZipFile(whl).namelist()
    # one top-level import name (plus the distribution's metadata folder)
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"bigearthnet_beam"}
    for pkg in staging.FOLDERS[1:]:
        assert f"bigearthnet_beam/{pkg}/__init__.py" in names, pkg
    assert "bigearthnet_beam/schemas/data/clc_metadata.json" in names
    assert "bigearthnet_beam/synth/data/metadata.parquet" in names
    assert "bigearthnet_beam/py.typed" in names
    meta = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    assert any("apache-beam" in r for r in base) and not any("tensorflow " in r or "tensorflow>" in r for r in base)
    assert any("tensorflow" in r and 'extra == "train"' in r for r in requires)


def test_a_missing_extra_names_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    assert main(["train", "--data", "x"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["benbeam train: error: tensorflow is not installed; pip install 'bigearthnet-beam[train]'"]
    assert cli.missing_extra("predict") == (
        "benbeam predict: error: tensorflow is not installed; pip install 'bigearthnet-beam[train]'"
    )


def test_tfx_cross_check_finds_a_disagreeing_decoding(tmp_path, monkeypatch):
    pytest.importorskip("tfx_bsl", reason="the [tfx] extra is part of [dev]")
    import numpy as np

    from bigearthnet_beam.beam_pipeline import verify
    from bigearthnet_beam.transforms import encode
    from bigearthnet_beam.transforms.encode import ShardWriter, encode_example, iter_records

    rng = np.random.default_rng(0)
    path = str(tmp_path / "s.tfrecord")
    with ShardWriter(path, "none") as w:
        for i in range(3):
            w.write(
                encode_example(
                    f"P{i}",
                    rng.random((120, 120, 12), dtype=np.float32),
                    rng.random((120, 120, 2), dtype=np.float32),
                    rng.integers(0, 19, (120, 120), dtype=np.uint8),
                    [0] * 18 + [1],
                    "train",
                    "Spain",
                )
            )
        w.close()
    recs = list(iter_records(path, "none"))
    examples = [encode.decode_example(r, "float32") for r in recs]
    dec = verify.TfxDecoder("float32")
    assert dec.compare(recs, examples) == []
    examples[1]["s2_data"] = examples[1]["s2_data"].copy()
    examples[1]["s2_data"][3, 4, 5] += 1.0
    examples[2]["country"] = "Atlantis"
    assert dec.compare(recs, examples) == [
        (1, "tfx-bsl decodes s2_data differently"),
        (2, "tfx-bsl decodes country differently"),
    ]


@pytest.mark.slow
def test_a_complete_statistics_pass_is_reused_and_then_removed(tmp_path):
    import json

    from bigearthnet_beam.beam_pipeline import convert, stats_pass
    from bigearthnet_beam.beam_pipeline.options import ConvertOptions, parse
    from bigearthnet_beam.schemas import manifest

    assert main(["synth", "--out", str(tmp_path / "reben"), "--n", "8", "--seed", "3", "--workers", "1"]) == 0
    argv = [
        "--meta",
        str(tmp_path / "reben" / "metadata.parquet"),
        "--out",
        str(tmp_path / "ds"),
        "--shard_size",
        "4",
        "--no_report",
        *IN_PROCESS,
    ]
    assert main(["convert", *argv]) == 0
    out = tmp_path / "ds"
    assert not list(out.glob(".stats-pass*"))  # removed once the dataset is complete
    man = json.loads((out / manifest.MANIFEST).read_text())
    # an interrupted run left a complete statistics pass (here: with a recognisable mean)
    args, _ = parse(ConvertOptions, argv, "t", "t")
    key = stats_pass.stats_pass_key(args, convert.preflight(args, probe_output=False))
    planted = json.loads(json.dumps(man["statistics"]))
    planted["normalization"]["offset"] = [v + 1.0 for v in planted["normalization"]["offset"]]
    planted["source"] = "planted"
    (out / stats_pass.STATS_PASS_NPZ).write_bytes((out / manifest.HISTOGRAMS_NPZ).read_bytes())
    (out / stats_pass.STATS_PASS_JSON).write_text(json.dumps({"key": key, "statistics": planted}))
    assert main(["convert", *argv]) == 0
    assert json.loads((out / manifest.MANIFEST).read_text())["statistics"] == planted  # reused, not recomputed
    assert not list(out.glob(".stats-pass*"))
    # a pass of other options (another --stats_fraction) is not reused
    (out / stats_pass.STATS_PASS_NPZ).write_bytes((out / manifest.HISTOGRAMS_NPZ).read_bytes())
    (out / stats_pass.STATS_PASS_JSON).write_text(json.dumps({"key": key, "statistics": planted}))
    assert main(["convert", *argv, "--stats_fraction", "0.5"]) == 0
    assert json.loads((out / manifest.MANIFEST).read_text())["statistics"]["source"] == "computed"


@pytest.mark.slow  # builds a wheel
def test_the_wheel_holds_every_subpackage(tmp_path):
    import os

    from bigearthnet_beam.launch import staging as st

    names = set(zipfile.ZipFile(st.build_wheel(str(tmp_path))).namelist())
    root = st.checkout_root()
    for top in st.FOLDERS:
        for d, _, files in os.walk(root / top):
            rel = os.path.relpath(d, root).replace(os.sep, "/")
            if "__pycache__" not in rel and "__init__.py" in files:
                installed = rel if top == st.PACKAGE else f"{st.PACKAGE}/{rel}"
                assert f"{installed}/__init__.py" in names, rel
