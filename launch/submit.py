"""``benbeam launch RUNNER [flags] -- <convert flags>``: run the conversion on a distributed engine.

Each runner's flags become the Beam pipeline options it needs; the conversion itself is
the same code as ``benbeam convert`` (this module only builds arguments):

    dataflow  DataflowRunner: project, region, temp/staging locations, --setup_file (this
              repository's setup.py, so workers install the package), machine type, worker
              counts, autoscaling, optional custom container (launch/Dockerfile).
    flink     FlinkRunner: --flink_master host:port, environment type (DOCKER, PROCESS,
              EXTERNAL, LOOPBACK), parallelism.
    spark     SparkRunner: --spark_master_url, environment type.
    portable  PortableRunner against any Beam job service (--job_endpoint host:port).
    dask      DaskRunner on a dask.distributed cluster (--dask_client_address host:port).
"""

from __future__ import annotations

import argparse
import os
import sys

REPO_SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
ENVIRONMENTS = ("DOCKER", "PROCESS", "EXTERNAL", "LOOPBACK")
ENV_HELP = f"Beam SDK harness environment: {', '.join(ENVIRONMENTS)} (default %(default)s)"
ENV_CONFIG_HELP = "its configuration: a container image (DOCKER), a JSON command (PROCESS), host:port (EXTERNAL)"


def dataflow_args(*, project: str, region: str, temp_location: str, staging_location: str | None = None,
                  setup_file: str | None = REPO_SETUP, machine_type: str | None = None,
                  num_workers: int | None = None, max_workers: int | None = None,
                  autoscaling: str = "THROUGHPUT_BASED", sdk_container_image: str | None = None,
                  job_name: str | None = None, dry_run: bool = False, extra: tuple[str, ...] = ()) -> list[str]:
    """Pipeline options of a Dataflow job running ``convert``."""
    for name, v in (("--temp_location", temp_location), ("--staging_location", staging_location)):
        if v is not None and not str(v).startswith("gs://"):
            raise ValueError(f"{name} must be a gs:// URL for Dataflow, got {v!r}")
    args = ["--runner", "DataflowRunner", "--project", project, "--region", region,
            "--temp_location", temp_location,
            "--staging_location", staging_location or temp_location.rstrip("/") + "/staging",
            "--autoscaling_algorithm", autoscaling, "--experiments", "use_runner_v2"]
    if sdk_container_image:  # the image already holds the package and its native dependencies
        args += ["--sdk_container_image", sdk_container_image, "--sdk_location", "container"]
    elif setup_file:
        args += ["--setup_file", setup_file]
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


def _portable(runner: str, endpoint_flag: str, endpoint: str, environment_type: str,
              environment_config: str | None) -> list[str]:
    """The flags every portable runner (Flink, Spark, a job service) takes."""
    _check_env(environment_type)
    args = ["--runner", runner, endpoint_flag, endpoint, "--environment_type", environment_type]
    if environment_config:
        args += ["--environment_config", environment_config]
    return args


def flink_args(*, flink_master: str, environment_type: str = "DOCKER", environment_config: str | None = None,
               parallelism: int | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    args = _portable("FlinkRunner", "--flink_master", flink_master, environment_type, environment_config)
    if parallelism:
        args += ["--parallelism", str(parallelism)]
    return args + list(extra)


def spark_args(*, spark_master_url: str, environment_type: str = "DOCKER", environment_config: str | None = None,
               extra: tuple[str, ...] = ()) -> list[str]:
    return _portable("SparkRunner", "--spark_master_url", spark_master_url, environment_type,
                     environment_config) + list(extra)


def portable_args(*, job_endpoint: str, environment_type: str = "LOOPBACK", environment_config: str | None = None,
                  extra: tuple[str, ...] = ()) -> list[str]:
    return _portable("PortableRunner", "--job_endpoint", job_endpoint, environment_type,
                     environment_config) + list(extra)


def dask_args(*, dask_client_address: str, extra: tuple[str, ...] = ()) -> list[str]:
    return ["--runner", DASK_RUNNER, "--dask_client_address", dask_client_address] + list(extra)


def _check_env(environment_type: str) -> None:
    if environment_type not in ENVIRONMENTS:
        raise ValueError(f"--environment_type must be one of {', '.join(ENVIRONMENTS)}, got {environment_type!r}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="benbeam launch", allow_abbrev=False, description=__doc__.splitlines()[0],
                                 epilog="Everything after `--` goes to `benbeam convert` (--meta, --out, ...).")
    sub = ap.add_subparsers(dest="runner", required=True)
    d = sub.add_parser("dataflow", allow_abbrev=False, help="Google Cloud Dataflow")
    d.add_argument("--project", required=True, help="Google Cloud project id")
    d.add_argument("--region", required=True, help="Dataflow region, e.g. europe-west4")
    d.add_argument("--temp_location", required=True, help="gs:// folder for temporary files")
    d.add_argument("--staging_location", default=None, help="gs:// folder for staged files (default: <temp>/staging)")
    d.add_argument("--machine_type", default=None, help="e.g. n2-standard-4")
    d.add_argument("--num_workers", type=int, default=None, help="initial workers (default: Dataflow's)")
    d.add_argument("--max_workers", type=int, default=None, help="autoscaling upper bound")
    d.add_argument("--autoscaling", default="THROUGHPUT_BASED", choices=["THROUGHPUT_BASED", "NONE"],
                   help="autoscaling algorithm (default %(default)s)")
    d.add_argument("--sdk_container_image", default=None, help="custom worker image built from launch/Dockerfile")
    d.add_argument("--setup_file", default=REPO_SETUP, help="package installed on the workers (default: this repo's)")
    d.add_argument("--job_name", default=None, help="Dataflow job name (default: Beam derives one)")
    d.add_argument("--dry_run", action="store_true", help="build the job graph offline; submit nothing")
    f = sub.add_parser("flink", allow_abbrev=False, help="Apache Flink (through Beam's Flink job server)")
    f.add_argument("--flink_master", required=True, help="host:port of the Flink REST endpoint, or [local]")
    f.add_argument("--environment_type", default="DOCKER", choices=ENVIRONMENTS, help=ENV_HELP)
    f.add_argument("--environment_config", default=None, help=ENV_CONFIG_HELP)
    f.add_argument("--parallelism", type=int, default=None, help="Flink parallelism (default: the cluster's)")
    s = sub.add_parser("spark", allow_abbrev=False, help="Apache Spark (through Beam's Spark job server)")
    s.add_argument("--spark_master_url", required=True, help="spark://host:port of the Spark master, or local[N]")
    s.add_argument("--environment_type", default="DOCKER", choices=ENVIRONMENTS, help=ENV_HELP)
    s.add_argument("--environment_config", default=None, help=ENV_CONFIG_HELP)
    pt = sub.add_parser("portable", allow_abbrev=False, help="any Beam job service (Job API)")
    pt.add_argument("--job_endpoint", required=True, help="host:port")
    pt.add_argument("--environment_type", default="LOOPBACK", choices=ENVIRONMENTS, help=ENV_HELP)
    pt.add_argument("--environment_config", default=None, help=ENV_CONFIG_HELP)
    k = sub.add_parser("dask", allow_abbrev=False, help="a dask.distributed cluster")
    k.add_argument("--dask_client_address", required=True, help="host:port of the Dask scheduler")
    return ap


def runner_args(ns: argparse.Namespace) -> list[str]:
    if ns.runner == "dataflow":
        from launch import names  # placeholder names fail here, in one line, not in the Dataflow client

        names.check_project(ns.project)
        names.check_region(ns.region)
        names.check_gcs_url(ns.temp_location, "--temp_location")
        if ns.staging_location:
            names.check_gcs_url(ns.staging_location, "--staging_location")
        return dataflow_args(project=ns.project, region=ns.region, temp_location=ns.temp_location,
                             staging_location=ns.staging_location, setup_file=ns.setup_file,
                             machine_type=ns.machine_type, num_workers=ns.num_workers, max_workers=ns.max_workers,
                             autoscaling=ns.autoscaling, sdk_container_image=ns.sdk_container_image,
                             job_name=ns.job_name, dry_run=ns.dry_run)
    if ns.runner == "flink":
        return flink_args(flink_master=ns.flink_master, environment_type=ns.environment_type,
                          environment_config=ns.environment_config, parallelism=ns.parallelism)
    if ns.runner == "spark":
        return spark_args(spark_master_url=ns.spark_master_url, environment_type=ns.environment_type,
                          environment_config=ns.environment_config)
    if ns.runner == "portable":
        return portable_args(job_endpoint=ns.job_endpoint, environment_type=ns.environment_type,
                             environment_config=ns.environment_config)
    return dask_args(dask_client_address=ns.dask_client_address)


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        ours, convert_argv = argv[:i], argv[i + 1:]
    else:
        ours, convert_argv = argv, []
    ns = build_parser().parse_args(ours)
    try:
        extra = runner_args(ns)
    except ValueError as e:
        print(f"benbeam launch: error: {e}", file=sys.stderr)
        return 2
    if not convert_argv:
        print("benbeam launch: error: give the conversion's flags after `--` (at least --meta and --out)",
              file=sys.stderr)
        return 2
    from beam_pipeline.convert import run as convert

    return convert(convert_argv + extra)
