"""``benbeam``: one command with subcommands.

    benbeam synth     write a synthetic reBEN replica (metadata + GeoTIFFs)
    benbeam synth-tile  write synthetic Sentinel-2 tiles (SAFE folders or GeoTIFFs)
    benbeam index     add the 15 object URLs of every patch to the metadata
    benbeam validate  check every patch's objects exist (and, --deep, decode)
    benbeam convert   the main pipeline: TFRecord shards + statistics + manifest
    benbeam verify    re-check a dataset's shards against its manifest
    benbeam report    (re)write a dataset's report.html
    benbeam train     train the U-Net on a converted dataset
    benbeam evaluate  per-class IoU, mIoU, confusion matrix
    benbeam export    a trained model as a TensorFlow SavedModel serving on raw bands
    benbeam predict   map whole Sentinel-2 tiles with a trained model
    benbeam launch    run convert on Dataflow, Flink, Spark, a portable job service or Dask

Each subcommand's ``--help`` lists its flags. Beam flags (``--runner`` …) pass through
to the pipelines unchanged. ``--debug`` (anywhere) shows tracebacks instead of one line.

Exit codes, the same for every command: 0 ok · 1 data failures over the threshold (or a
failed run) · 2 usage error (bad flag, bad input file, output folder refused) · 3
environment (unreachable store, refused credentials, full disk, output folder in use) ·
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import os

# One worker process per core already: keep BLAS/OpenMP in each single-threaded (their
# thread pools oversubscribe the cores and make small matmuls 10x slower). Worker
# processes inherit this environment.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
# TensorFlow's C++ INFO lines (oneDNN, CUDA probing) drown the commands' own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import errno  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

from bigearthnet_beam.beam_pipeline.quiet import DEBUG  # noqa: E402 - --debug: tracebacks and the workers' error logs are shown

EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_ENV, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

COMMANDS = (
    "synth",
    "synth-tile",
    "index",
    "validate",
    "convert",
    "verify",
    "report",
    "train",
    "evaluate",
    "export",
    "predict",
    "launch",
)


def _synth(argv: list[str]) -> int:
    from bigearthnet_beam.beam_pipeline.options import add_storage_args, positive_int, strict_parser, unit_fraction
    from bigearthnet_beam.schemas.failures import FAULT_KINDS
    from bigearthnet_beam.transforms import flagtypes

    ap = strict_parser(prog="benbeam synth", description="Write a synthetic BigEarthNet v2.0 replica.")
    ap.add_argument("--out", type=flagtypes.output, required=True, help="output folder or URL")
    ap.add_argument("--n", type=positive_int, required=True, help="number of patches")
    ap.add_argument(
        "--seed", type=flagtypes.seed, default=0, help="random seed: the same seed writes the same bytes (default 0)"
    )
    ap.add_argument("--include_snow_cloud", action="store_true", help="sample from the snow/cloud/shadow metadata too")
    g = ap.add_mutually_exclusive_group()
    g.add_argument(
        "--corrupt",
        type=unit_fraction,
        default=0.0,
        metavar="FRACTION",
        help="inject a fault into this fraction of the patches",
    )
    g.add_argument(
        "--faults",
        default=None,
        metavar="KIND,...",
        help="inject one patch per listed fault kind: " + ",".join(FAULT_KINDS),
    )
    ap.add_argument("--workers", type=positive_int, default=None, help="worker processes (default: all cores)")
    ap.add_argument(
        "--archives",
        action="store_true",
        help="also write the replica as official-style BigEarthNet-S2.tar.zst, BigEarthNet-S1.tar.zst "
        "and Reference_Maps.tar.zst (input of `benbeam convert --archives`)",
    )
    add_storage_args(ap)
    args = ap.parse_args(argv)
    from bigearthnet_beam.synth.generator import generate
    from bigearthnet_beam.transforms.cli_args import storage_from_args

    st = storage_from_args(args)

    faults = [f.strip() for f in args.faults.split(",") if f.strip()] if args.faults else None
    try:
        summary = generate(
            args.out,
            args.n,
            seed=args.seed,
            include_snow_cloud=args.include_snow_cloud,
            corrupt=args.corrupt,
            faults=faults,
            workers=args.workers,
            progress=True,
            st=st,
        )
    except ValueError as e:
        print(f"benbeam synth: error: {e}", file=sys.stderr)
        return 2
    if args.archives:
        from bigearthnet_beam.synth.archives import write_archives

        for a in write_archives(args.out, st):
            print(f"archive: {a['archive']} ({a['files']} files, {a['bytes']} bytes)")
    for k, v in summary.items():
        print(f"{k}: {v}")
    return 0


# Commands that need an extra of the package (setup.py), and the modules it provides.
EXTRAS = {
    "train": ("train", ("tensorflow", "keras")),
    "evaluate": ("train", ("tensorflow", "keras")),
    "predict": ("train", ("tensorflow", "keras")),
    "export": ("train", ("tensorflow", "keras")),
}


# `predict` / `evaluate --model ORG/NAME` (a reBEN authors' model): PyTorch, no TensorFlow
PRETRAINED_EXTRA = ("pretrained", ("torch", "timm", "safetensors", "huggingface_hub"))


def _model_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--model" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--model="):
            return a.split("=", 1)[1]
    return None


def missing_extra(cmd: str, argv: list[str] | None = None) -> str | None:
    """One line naming the extra to install when ``cmd``'s modules are missing, else None."""
    import importlib.util

    extra, modules = EXTRAS[cmd]
    if cmd in ("predict", "evaluate") and (model := _model_arg(argv or [])):
        from bigearthnet_beam.trainer.pretrained.model import is_pretrained_ref

        if is_pretrained_ref(model):
            extra, modules = PRETRAINED_EXTRA
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return f"benbeam {cmd}: error: {', '.join(absent)} is not installed; pip install 'bigearthnet-beam[{extra}]'"


def _dispatch(cmd: str, argv: list[str]) -> int:
    if cmd == "synth":
        return _synth(argv)
    if cmd == "convert":
        from bigearthnet_beam.beam_pipeline.convert import run

        return run(argv)
    if cmd == "index":
        from bigearthnet_beam.beam_pipeline.index import run

        return run(argv)
    if cmd == "verify":
        from bigearthnet_beam.beam_pipeline.verify import run

        return run(argv)
    if cmd == "validate":
        from bigearthnet_beam.beam_pipeline.validate import run

        return run(argv)
    if cmd == "synth-tile":
        from bigearthnet_beam.synth.tile_cli import run

        return run(argv)
    if cmd == "report":
        from bigearthnet_beam.beam_pipeline.report import run

        return run(argv)
    if cmd in EXTRAS and (missing := missing_extra(cmd, argv)):
        print(missing, file=sys.stderr)
        return 3
    if cmd in EXTRAS:
        # TensorFlow's C++ start-up lines (cuInit, CUDA factories) only with --verbose (or --debug)
        verbose = "--verbose" in argv
        argv = [a for a in argv if a != "--verbose"]
        from bigearthnet_beam.trainer.tfenv import set_verbose

        set_verbose(verbose or DEBUG["on"])  # each command imports TensorFlow once its flags are parsed
    if cmd == "predict":
        from bigearthnet_beam.trainer.inference.cli import run

        return run(argv)
    if cmd == "launch":
        from bigearthnet_beam.beam_pipeline.launch_cmd import run

        return run(argv)
    if cmd == "train":
        from bigearthnet_beam.trainer.train_cli import train_cli

        return train_cli(argv)
    if cmd == "evaluate":
        from bigearthnet_beam.trainer.evaluate import evaluate_cli

        return evaluate_cli(argv)
    if cmd == "export":
        from bigearthnet_beam.trainer.export import export_cli

        return export_cli(argv)
    raise AssertionError(cmd)


_WORKER_MSG = re.compile(r'message: "(?P<msg>(?:[^"\\]|\\.)*)".*?log_location: "(?P<loc>[^"]*)"')


class _WorkerLogFilter(logging.Filter):
    """Shows the project's own worker log lines (shard progress) as plain lines, drops the
    DirectRunner's routine worker warnings, keeps everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        m = _WORKER_MSG.search(record.getMessage())
        if not m:
            return record.levelno >= logging.WARNING
        if record.levelno >= logging.ERROR and not DEBUG["on"]:
            return False  # a worker's traceback: the command prints one line (--debug shows it)
        loc = m.group("loc")
        if "/transforms/" in loc or "/beam_pipeline/" in loc or "/synth/" in loc:
            record.msg, record.args = "worker: " + m.group("msg").replace("\\'", "'"), ()
            return True
        noise = ("Discarding unparseable args", "No semi_persistent_directory")
        if any(n in m.group("msg") for n in noise):
            return False
        return record.levelno >= logging.WARNING


def setup_logging() -> None:
    """Plain log lines on stderr; the libraries' routine INFO lines are dropped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("apache_beam", "absl", "fsspec", "s3fs", "gcsfs", "botocore", "urllib3", "rasterio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in (
        "apache_beam.runners.portability.local_job_service",
        "apache_beam.runners.portability.fn_api_runner.worker_handlers",
    ):
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO)
        if not any(isinstance(f, _WorkerLogFilter) for f in lg.filters):
            lg.addFilter(_WorkerLogFilter())
    logging.getLogger("root").setLevel(logging.WARNING)
    from bigearthnet_beam.beam_pipeline.quiet import BeamTracebackFilter

    for h in logging.getLogger().handlers:
        if not any(isinstance(f, BeamTracebackFilter) for f in h.filters):
            h.addFilter(BeamTracebackFilter())


# Exception types (by class name: the client libraries are optional) that mean the object
# store refused the credentials, or could not be reached at all.
CREDENTIAL_ERRORS = frozenset(
    {
        "NoCredentialsError",
        "PartialCredentialsError",
        "UnauthenticatedError",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "RefreshError",
        "DefaultCredentialsError",
    }
)
UNREACHABLE_ERRORS = frozenset({"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"})


def _endpoint_flag(chain: list[BaseException]) -> str:
    """The endpoint flag of the endpoint that refused (``storage.EndpointRefused`` names it), else
    of the client that raised: S3 (botocore, obstore) or GCS (gcsfs, google, aiohttp)."""
    for e in chain:
        flag = getattr(e, "flag", None)
        if isinstance(e, ConnectionRefusedError) and isinstance(flag, str):
            return flag
    roots = {type(e).__module__.split(".", 1)[0] for e in chain}
    if roots & {"botocore", "aiobotocore", "s3fs", "boto3", "obstore"}:
        return "--s3_endpoint_url"
    if roots & {"gcsfs", "google", "aiohttp"}:
        return "--gcs_endpoint_url"
    return "--s3_endpoint_url / --gcs_endpoint_url"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, what to tell the user) for an exception a command did not handle itself:
    by its type, errno or HTTP status (``schemas.errors.exit_code``), never its message's words."""
    from bigearthnet_beam.schemas import errors
    from bigearthnet_beam.transforms import storeconfig

    chain = list(storeconfig.exception_chain(exc))
    text = errors.redact(f"{type(exc).__name__}: {_first_line(exc)}")
    for e in chain:  # our own errors say what is wrong in their message
        if isinstance(e, errors.BenBeamError):
            return e.exit_code, errors.redact(_first_line(e))
    names = {type(e).__name__ for e in chain}
    statuses = {storeconfig.http_status(e) for e in chain} - {None}
    for e in chain:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return EXIT_ENV, f"the disk is full ({text}); free space or choose another --out"
        if isinstance(e, OSError) and e.errno == errno.EROFS:
            where = f"{e.filename} is" if e.filename else "the output is"
            return EXIT_ENV, f"{where} on a read-only file system; choose another --out"
    if names & CREDENTIAL_ERRORS or statuses & {401, 403}:
        return EXIT_ENV, f"the object store refused the credentials ({text}); check AWS_* / GOOGLE_* settings or --anon"
    if names & UNREACHABLE_ERRORS or any(isinstance(e, ConnectionRefusedError) for e in chain):
        return EXIT_ENV, f"the storage endpoint cannot be reached ({text}); check {_endpoint_flag(chain)} / the network"
    for e in chain:
        if isinstance(e, PermissionError):
            what = f"{e.filename}" if e.filename else "a path"
            return EXIT_ENV, (
                f"permission denied on {what}; make it readable (inputs) or writable (--out), or choose another --out"
            )
    if storeconfig.is_transient(exc):
        return EXIT_ENV, f"the storage kept failing after retries ({text}); try again later"
    for e in chain:
        code = errors.exit_code(e)
        if code is not None:
            return code, text
        if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
            return EXIT_USAGE, errors.redact(f"{e.strerror or type(e).__name__}: {e.filename or _first_line(e)}")
    return EXIT_DATA, f"unexpected {text} (run with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    """``benbeam``: dispatch a command; expected failures end with one line and an exit code
    (with ``--debug``: the traceback, then the same exit code)."""
    import traceback

    from bigearthnet_beam.beam_pipeline import quiet
    from bigearthnet_beam.transforms import scratch

    argv = list(sys.argv[1:] if argv is None else argv)
    DEBUG["on"] = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    cmd = argv[0] if argv else ""
    quiet.install_thread_hook()
    stopped = f"benbeam {cmd}: interrupted; a rerun of the same command continues from what is complete"
    with quiet.interrupt_guard(stopped) as guard:
        try:
            return _main(argv)
        except KeyboardInterrupt:
            quiet.INTERRUPTED["on"] = True
            scratch.remove_all()  # what the command made for itself and did not remove (transforms.scratch)
            if DEBUG["on"]:
                traceback.print_exc()
            print(stopped, file=sys.stderr, flush=True)
            guard["printed"] = True
            return EXIT_INTERRUPTED
        except SystemExit:
            raise
        except Exception as e:  # noqa: BLE001 - the last resort: one line and the exit code of its type
            code, line = classify(e)
            if DEBUG["on"]:
                traceback.print_exc()
            print(f"benbeam {cmd}: error: {line}", file=sys.stderr)
            return code


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from bigearthnet_beam.beam_pipeline import __version__

        print(f"benbeam {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"benbeam: unknown command {cmd!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    setup_logging()
    return _dispatch(cmd, rest)


if __name__ == "__main__":
    raise SystemExit(main())
