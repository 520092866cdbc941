"""The Beam pipeline options of ``benbeam launch RUNNER``: plain argument lists, nothing run.

    dataflow  DataflowRunner: project, region, temp/staging locations, the package staged
              with ``--extra_package`` (a wheel, see ``launch.staging``) or a ``--setup_file``
              that exists, or a custom worker image (``--sdk_container_image``, launch/Dockerfile).
    flink     through a Flink job server: ``--job_endpoint HOST:PORT`` (PortableRunner,
              nothing downloaded) or Beam's FlinkRunner, which starts a job server from a jar
              it downloads (``--flink_master``, ``--flink_version``).
    spark     the same for Spark (``--job_endpoint`` or ``--spark_master_url``).
    portable  PortableRunner against any Beam job service (``--job_endpoint``).
    dask      DaskRunner on a dask.distributed cluster (``--dask_client_address``).

This module imports no other part of the project: ``beam_pipeline.launch_cmd`` wires it
to ``convert``.
"""

from __future__ import annotations

import argparse
import os

from bigearthnet_beam.transforms import flagtypes

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
ENVIRONMENTS = ("DOCKER", "PROCESS", "EXTERNAL", "LOOPBACK")
ENV_HELP = f"Beam SDK harness environment: {', '.join(ENVIRONMENTS)} (default %(default)s)"
ENV_CONFIG_HELP = (
    "its configuration: a container image (DOCKER), a JSON command (PROCESS), HOST:PORT of an SDK "
    "worker pool (EXTERNAL)"
)


def _check_env(environment_type: str) -> None:
    if environment_type not in ENVIRONMENTS:
        raise ValueError(f"--environment_type must be one of {', '.join(ENVIRONMENTS)}, got {environment_type!r}")


def _hostport(flag: str, value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{flag} must be HOST:PORT, got {value!r}")
    return value


def dataflow_args(
    *,
    project: str,
    region: str,
    temp_location: str,
    staging_location: str | None = None,
    package: str | None = None,
    setup_file: str | None = None,
    machine_type: str | None = None,
    num_workers: int | None = None,
    max_workers: int | None = None,
    autoscaling: str = "THROUGHPUT_BASED",
    sdk_container_image: str | None = None,
    job_name: str | None = None,
    dry_run: bool = False,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """Pipeline options of a Dataflow job running ``convert``.

    Workers get the package from ``sdk_container_image`` (which holds it), else from
    ``package`` (a wheel or sdist path, staged with ``--extra_package``; pip installs its
    dependencies on the worker), else from ``setup_file`` (must exist)."""
    for name, v in (("--temp_location", temp_location), ("--staging_location", staging_location)):
        if v is not None and not str(v).startswith("gs://"):
            raise ValueError(f"{name} must be a gs:// URL for Dataflow, got {v!r}")
    if setup_file and not os.path.isfile(setup_file):
        raise ValueError(
            f"--setup_file {setup_file} does not exist (leave it out: the installed package is staged as a wheel)"
        )
    args = [
        "--runner",
        "DataflowRunner",
        "--project",
        project,
        "--region",
        region,
        "--temp_location",
        temp_location,
        "--staging_location",
        staging_location or temp_location.rstrip("/") + "/staging",
        "--autoscaling_algorithm",
        autoscaling,
        "--experiments",
        "use_runner_v2",
    ]
    if sdk_container_image:  # the image already holds the package and its native dependencies
        args += ["--sdk_container_image", sdk_container_image, "--sdk_location", "container"]
    elif setup_file:
        args += ["--setup_file", setup_file]
    elif package:
        args += ["--extra_package", package]
    else:
        raise ValueError(
            "the workers need the package: give a wheel (--extra_package), a --setup_file or an --sdk_container_image"
        )
    if machine_type:
        args += ["--machine_type", machine_type]
    if num_workers:
        args += ["--num_workers", str(num_workers)]
    if max_workers:
        args += ["--max_num_workers", str(max_workers)]
    if job_name:
        args += ["--job_name", job_name]
    if dry_run:
        args += ["--dry_run=True"]
    return args + list(extra)


def _environment(
    environment_type: str, environment_config: str | None, sdk_container_image: str | None, package: str | None
) -> list[str]:
    """The SDK worker environment of a portable job: DOCKER runs ``sdk_container_image``
    (``--environment_config``); ``package`` is staged unless the image holds it."""
    _check_env(environment_type)
    if environment_type == "DOCKER" and sdk_container_image:
        if environment_config and environment_config != sdk_container_image:
            raise ValueError("give the worker image once: --sdk_container_image or --environment_config")
        environment_config = sdk_container_image
    if environment_type == "EXTERNAL":
        if not environment_config:
            raise ValueError("--environment_type EXTERNAL needs --environment_config HOST:PORT of an SDK worker pool")
        _hostport("--environment_config", environment_config)
    args = ["--environment_type", environment_type]
    if environment_config:
        args += ["--environment_config", environment_config]
    if package and not sdk_container_image and environment_type != "LOOPBACK":
        args += ["--extra_package", package]
    return args


def flink_args(
    *,
    flink_master: str | None = None,
    job_endpoint: str | None = None,
    flink_version: str | None = None,
    environment_type: str = "DOCKER",
    environment_config: str | None = None,
    sdk_container_image: str | None = None,
    package: str | None = None,
    parallelism: int | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """Options of a Flink job: PortableRunner against a running Flink job server
    (``job_endpoint``), else FlinkRunner (Beam downloads and starts a job server)."""
    if job_endpoint:
        args = ["--runner", "PortableRunner", "--job_endpoint", _hostport("--job_endpoint", job_endpoint)]
    elif flink_master:
        args = ["--runner", "FlinkRunner", "--flink_master", flink_master]
        if flink_version:
            args += ["--flink_version", flink_version]
    else:
        raise ValueError("give --job_endpoint HOST:PORT of a Flink job server (or --flink_master HOST:PORT)")
    args += _environment(environment_type, environment_config, sdk_container_image, package)
    if parallelism:
        args += ["--parallelism", str(parallelism)]
    return args + list(extra)


def spark_args(
    *,
    spark_master_url: str | None = None,
    job_endpoint: str | None = None,
    environment_type: str = "DOCKER",
    environment_config: str | None = None,
    sdk_container_image: str | None = None,
    package: str | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """Options of a Spark job: PortableRunner against a Spark job server, else SparkRunner."""
    if job_endpoint:
        args = ["--runner", "PortableRunner", "--job_endpoint", _hostport("--job_endpoint", job_endpoint)]
    elif spark_master_url:
        args = ["--runner", "SparkRunner", "--spark_master_url", spark_master_url]
    else:
        raise ValueError("give --job_endpoint HOST:PORT of a Spark job server (or --spark_master_url)")
    return args + _environment(environment_type, environment_config, sdk_container_image, package) + list(extra)


def portable_args(
    *,
    job_endpoint: str,
    environment_type: str = "LOOPBACK",
    environment_config: str | None = None,
    sdk_container_image: str | None = None,
    package: str | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """Options of a job on any Beam job service."""
    return (
        ["--runner", "PortableRunner", "--job_endpoint", _hostport("--job_endpoint", job_endpoint)]
        + _environment(environment_type, environment_config, sdk_container_image, package)
        + list(extra)
    )


def dask_args(*, dask_client_address: str, partition_size: int = 1, extra: tuple[str, ...] = ()) -> list[str]:
    """Options of a DaskRunner job on a running dask.distributed scheduler. One shard key per
    Dask partition (``partition_size`` 1): Beam's default of 128 elements per partition puts
    every shard of a dataset into one task, on one worker."""
    return [
        "--runner",
        DASK_RUNNER,
        "--dask_client_address",
        _hostport("--dask_client_address", dask_client_address),
        "--dask_partition_size",
        str(partition_size),
    ] + list(extra)


def needs_package(ns: argparse.Namespace) -> bool:
    """Whether the workers of this launch get the package staged (no image that holds it)."""
    if ns.runner == "dask" or getattr(ns, "sdk_container_image", None):
        return False
    if ns.runner == "dataflow":
        return not ns.setup_file
    return ns.environment_type != "LOOPBACK"


def _portable_env_flags(parser, default_env: str) -> None:
    parser.add_argument("--environment_type", default=default_env, choices=ENVIRONMENTS, help=ENV_HELP)
    parser.add_argument("--environment_config", default=None, help=ENV_CONFIG_HELP)
    parser.add_argument(
        "--sdk_container_image",
        default=None,
        help="worker image built from launch/Dockerfile (holds the package: nothing staged)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``benbeam launch`` argument parser (one subcommand per runner)."""
    ap = flagtypes.Parser(
        prog="benbeam launch",
        allow_abbrev=False,
        description=__doc__.splitlines()[0],
        epilog="Everything after `--` goes to `benbeam convert` (--meta, --out, ...).",
    )
    sub = ap.add_subparsers(dest="runner", required=True)
    d = sub.add_parser("dataflow", allow_abbrev=False, help="Google Cloud Dataflow")
    d.add_argument("--project", required=True, help="Google Cloud project id")
    d.add_argument("--region", required=True, help="Dataflow region, e.g. europe-west4")
    d.add_argument("--temp_location", required=True, help="gs:// folder for temporary files")
    d.add_argument("--staging_location", default=None, help="gs:// folder for staged files (default: <temp>/staging)")
    d.add_argument("--machine_type", default=None, help="e.g. n2-standard-4")
    d.add_argument(
        "--num_workers", type=flagtypes.positive_int, default=None, help="initial workers (default: Dataflow's)"
    )
    d.add_argument("--max_workers", type=flagtypes.positive_int, default=None, help="autoscaling upper bound")
    d.add_argument(
        "--autoscaling",
        default="THROUGHPUT_BASED",
        choices=["THROUGHPUT_BASED", "NONE"],
        help="autoscaling algorithm (default %(default)s)",
    )
    d.add_argument("--sdk_container_image", default=None, help="custom worker image built from launch/Dockerfile")
    d.add_argument(
        "--setup_file",
        default=None,
        help="a setup.py to build on the workers (default: stage a wheel of the installed package)",
    )
    d.add_argument("--job_name", default=None, help="Dataflow job name (default: Beam derives one)")
    d.add_argument("--dry_run", action="store_true", help="build the job graph offline; submit nothing")
    for name, helptext in (("flink", "Apache Flink"), ("spark", "Apache Spark")):
        f = sub.add_parser(
            name, allow_abbrev=False, help=f"{helptext} through Beam's {helptext.split()[-1]} job server"
        )
        f.add_argument(
            "--job_endpoint",
            default=None,
            help="HOST:PORT of a running job server (PortableRunner: nothing is downloaded)",
        )
        if name == "flink":
            f.add_argument("--flink_master", default=None, help="HOST:PORT of the Flink REST endpoint")
            f.add_argument(
                "--flink_version",
                default=None,
                help="Flink version of the job server Beam starts itself (without --job_endpoint)",
            )
            f.add_argument(
                "--parallelism",
                type=flagtypes.positive_int,
                default=None,
                help="Flink parallelism (default: the cluster's)",
            )
        else:
            f.add_argument("--spark_master_url", default=None, help="spark://HOST:PORT (without --job_endpoint)")
        _portable_env_flags(f, "DOCKER")
    pt = sub.add_parser("portable", allow_abbrev=False, help="any Beam job service (Job API)")
    pt.add_argument("--job_endpoint", required=True, help="HOST:PORT")
    _portable_env_flags(pt, "LOOPBACK")
    k = sub.add_parser("dask", allow_abbrev=False, help="a dask.distributed cluster")
    k.add_argument("--dask_client_address", required=True, help="HOST:PORT of the Dask scheduler")
    k.add_argument(
        "--partition_size", type=flagtypes.positive_int, default=1, help="shard keys per Dask partition (default 1)"
    )
    return ap


def runner_args(ns: argparse.Namespace, package: str | None = None) -> list[str]:
    """The pipeline options of parsed ``benbeam launch`` flags; ``package`` is the wheel to stage."""
    if ns.runner == "dataflow":
        from bigearthnet_beam.launch import (
            names,  # placeholder names fail here, in one line, not in the Dataflow client
        )

        names.check_launch(ns)
        return dataflow_args(
            project=ns.project,
            region=ns.region,
            temp_location=ns.temp_location,
            staging_location=ns.staging_location,
            package=package,
            setup_file=ns.setup_file,
            machine_type=ns.machine_type,
            num_workers=ns.num_workers,
            max_workers=ns.max_workers,
            autoscaling=ns.autoscaling,
            sdk_container_image=ns.sdk_container_image,
            job_name=ns.job_name,
            dry_run=ns.dry_run,
        )
    if ns.runner == "dask":
        return dask_args(dask_client_address=ns.dask_client_address, partition_size=ns.partition_size)
    env = dict(
        environment_type=ns.environment_type,
        environment_config=ns.environment_config,
        sdk_container_image=ns.sdk_container_image,
        package=package,
    )
    if ns.runner == "flink":
        return flink_args(
            flink_master=ns.flink_master,
            job_endpoint=ns.job_endpoint,
            flink_version=ns.flink_version,
            parallelism=ns.parallelism,
            **env,
        )
    if ns.runner == "spark":
        return spark_args(spark_master_url=ns.spark_master_url, job_endpoint=ns.job_endpoint, **env)
    return portable_args(job_endpoint=ns.job_endpoint, **env)


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``launch`` flags and ``convert`` flags (after ``--``)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []
