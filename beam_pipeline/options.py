"""Command-line options of the Beam pipelines, as PipelineOptions subclasses.

Each subclass declares its flags once; the CLI uses the same declaration for ``--help``
and validation, and Beam options (``--runner`` and everything else) pass through
unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys

from apache_beam.options.pipeline_options import PipelineOptions

from bigearthnet_beam.schemas.tfrecord import ENCODINGS, IMAGE_DTYPES
from bigearthnet_beam.transforms import flagtypes
from bigearthnet_beam.transforms.cli_args import add_s3_endpoint as add_s3_endpoint
from bigearthnet_beam.transforms.cli_args import add_storage_args as add_storage_args
from bigearthnet_beam.transforms.cli_args import positive_int as positive_int
from bigearthnet_beam.transforms.cli_args import (
    unknown_pipeline_args as unknown_pipeline_args,  # shared with trainer: re-exported
)
from bigearthnet_beam.transforms.progress import LOCAL_RUNNER

BEAM_PASSTHROUGH = (
    "Apache Beam pipeline options (--runner, --direct_num_workers, --project, --temp_location, ...) "
    "are passed through to Beam unchanged."
)
RESAMPLING_METHODS = ("bilinear", "nearest", "cubic", "average")
DEFAULT_SHARD_SIZE = 180  # ~150 MB float32 shards (~820 KB per patch)
DEFAULT_MAX_FAILURE_FRACTION = 0.05  # a run where more than 5 % of the input fails exits 1


def strict_parser(**kwargs) -> argparse.ArgumentParser:
    """The commands' parser (``transforms.flagtypes.Parser``): no abbreviated flags, usage errors in one line."""
    return flagtypes.Parser(**kwargs)


# The number types of the flags (one set for every command: transforms.flagtypes).
unit_fraction = flagtypes.unit_fraction
sample_fraction = flagtypes.sample_fraction
percentile = flagtypes.percentile


def description(doc: str) -> str:
    """A command's --help description: the first paragraph of its module docstring, as one line."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def add_workers_arg(parser, default_help="all cores") -> None:
    """Add ``--workers`` (local DirectRunner worker processes) to ``parser``."""
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help=f"local worker processes for the DirectRunner (default: {default_help}); ignored by other runners",
    )


class ConvertOptions(PipelineOptions):
    """Options of ``benbeam convert``.

    No flag is ``required=True`` here: Beam parses every PipelineOptions subclass for
    any pipeline in the process; ``parse`` checks REQUIRED instead.
    """

    REQUIRED = ("meta", "out")

    @staticmethod
    def conflicts(args) -> str | None:
        """What contradicts itself in parsed options (None: nothing)."""
        if getattr(args, "encoding", "normalized") == "raw" and args.image_dtype != "float32":
            return "--dtype applies to the normalized encoding; --encoding raw stores each band in its own dtype"
        return None

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--meta", default=None, help="metadata.parquet (local path, s3:// or gs://); required")
        parser.add_argument(
            "--include_snow_cloud",
            default=None,
            metavar="PARQUET",
            help="also convert the patches of this parquet (the snow/cloud/shadow metadata)",
        )
        parser.add_argument(
            "--root",
            default=None,
            help="dataset root holding BigEarthNet-S2/, BigEarthNet-S1/, Reference_Maps/ "
            "(default: the folder of --meta); objects outside it are refused",
        )
        parser.add_argument(
            "--out", type=flagtypes.output, default=None, help="output dataset directory or URL; required"
        )
        parser.add_argument(
            "--archives",
            default=None,
            metavar="DIR_OR_URL",
            help="read the objects straight from the official BigEarthNet-S2.tar.zst, "
            "BigEarthNet-S1.tar.zst and Reference_Maps.tar.zst in this folder or bucket "
            "prefix (each streamed once, in parallel) instead of the extracted folders",
        )
        parser.add_argument(
            "--splits", default="train,validation,test", help="comma-separated splits to convert (default: all three)"
        )
        parser.add_argument(
            "--frac",
            type=sample_fraction,
            default=1.0,
            help="deterministic hash sample of patch ids (0.001 sample is a subset of 0.01)",
        )
        parser.add_argument(
            "--resampling",
            choices=RESAMPLING_METHODS,
            default="bilinear",
            help="resampling of 20 m and 60 m bands to the 10 m grid",
        )
        parser.add_argument(
            "--shard_size",
            "--batch",
            dest="shard_size",
            type=positive_int,
            default=DEFAULT_SHARD_SIZE,
            help=f"patches per shard (default {DEFAULT_SHARD_SIZE}: ~150 MB float32 shards)",
        )
        parser.add_argument(
            "--compression",
            choices=("none", "gzip"),
            default="none",
            help="shard compression (default none; TFDS reads uncompressed shards only)",
        )
        parser.add_argument(
            "--dtype", dest="image_dtype", choices=IMAGE_DTYPES, default="float32", help="dtype of the image features"
        )
        parser.add_argument(
            "--encoding",
            choices=ENCODINGS,
            default="normalized",
            help="normalized (default): bands resampled to 10 m and normalised at conversion, --dtype images; "
            "raw: every band losslessly at its native resolution (S2 uint16, S1 float32 dB, ~290 KB per "
            "patch), resampled and normalised by the readers (docs/raw-records.md)",
        )
        parser.add_argument(
            "--clip_percentiles",
            type=percentile,
            nargs=2,
            default=[1.0, 99.0],
            metavar=("LO", "HI"),
            help="percentiles that bound each band before normalisation",
        )
        parser.add_argument(
            "--no_clip",
            dest="clip",
            action="store_false",
            help="normalise with plain mean/std, without percentile clipping",
        )
        parser.add_argument(
            "--stats",
            default=None,
            help="apply these statistics (a stats.json of an earlier run) instead of computing them",
        )
        parser.add_argument(
            "--stats_fraction",
            type=sample_fraction,
            default=1.0,
            help="compute statistics on a deterministic sample of training patches",
        )
        add_decode_timeout_arg(parser)
        parser.add_argument(
            "--object_cache",
            default="auto",
            metavar="auto|none|DIR",
            help="keep the objects of training patches fetched for the statistics on local disk "
            "for the writer, so that each is fetched once (default auto: in the system's "
            "temporary directory when the dataset is in an object store and the runner is "
            "local; removed at the end; never fills the disk)",
        )
        parser.add_argument(
            "--no_report",
            dest="report",
            action="store_false",
            help="do not write report.html (`benbeam report DATASET` writes it later)",
        )
        add_max_failure_arg(parser)
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="also log a line per shard of the statistics and writing passes (default: one "
            "overall progress line per pass)",
        )
        add_workers_arg(parser)
        add_storage_args(parser, s3_endpoint=False)


def add_max_failure_arg(parser) -> None:
    """``--max_failure_fraction`` (convert, validate): exit 1 when more of the input fails."""
    parser.add_argument(
        "--max_failure_fraction",
        type=unit_fraction,
        default=DEFAULT_MAX_FAILURE_FRACTION,
        metavar="FRACTION",
        help="exit 1 (after writing everything, failures.jsonl included) if more than this "
        f"fraction of the selected patches failed (default {DEFAULT_MAX_FAILURE_FRACTION:g}; "
        "1: never)",
    )


def add_decode_timeout_arg(parser) -> None:
    """Add ``--decode_timeout`` (seconds >= 0; 0: no limit) to ``parser``."""
    from bigearthnet_beam.transforms.patch import DEFAULT_DECODE_TIMEOUT

    parser.add_argument(
        "--decode_timeout",
        type=flagtypes.seconds,
        default=DEFAULT_DECODE_TIMEOUT,
        metavar="SECONDS",
        help="give up decoding an object after this long and dead-letter its patch as "
        f"decode_timeout (default {DEFAULT_DECODE_TIMEOUT:g}; 0: no limit)",
    )


def direct_num_workers(argv: list[str]) -> str | None:
    """The value of Beam's ``--direct_num_workers`` in ``argv`` (``--flag=N`` or ``--flag N``), else None."""
    for i, a in enumerate(argv):
        if a.startswith("--direct_num_workers="):
            return a.split("=", 1)[1]
        if a == "--direct_num_workers" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def local_runner_args(argv: list[str], workers: int | None, prog: str = "benbeam") -> list[str]:
    """Default to Beam's local multi-process runner on all cores, unless the user chose a
    runner or a running mode. With no ``--runner`` it is the ``FnApiRunner`` the DirectRunner
    delegates to, named directly: the DirectRunner would first try to start Prism (a
    download, and a ``/tmp/beam-temp*`` folder left behind when it cannot start).
    ``--workers N`` and Beam's ``--direct_num_workers M`` with M != N is a usage error (exit
    2): the command would otherwise silently run M workers."""
    given = direct_num_workers(argv)
    if workers is not None and given is not None and given.strip() != str(workers):
        print(
            f"{prog}: error: --workers {workers} and --direct_num_workers {given} disagree; "
            "give one of them (--workers is the same as --direct_num_workers on the DirectRunner)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    joined = " ".join(argv)
    extra = []
    runner_given = "--runner" in joined
    if not runner_given:
        extra.append(f"--runner={LOCAL_RUNNER}")
    if not runner_given or "DirectRunner" in joined:
        if "--direct_running_mode" not in joined:
            extra.append("--direct_running_mode=multi_processing")
        if "--direct_num_workers" not in joined:
            extra.append(f"--direct_num_workers={workers or os.cpu_count() or 1}")
    return list(argv) + extra


def parse(cls, argv: list[str], prog: str, description: str):
    """Parse ``argv`` for an options class: our flags strictly, Beam's passed through."""
    parser = strict_parser(prog=prog, description=description, epilog=BEAM_PASSTHROUGH)
    cls._add_argparse_args(parser)
    if "--s3_endpoint_url" not in parser._option_string_actions:
        add_s3_endpoint(parser)
    known, rest = parser.parse_known_args(argv)
    unknown = unknown_pipeline_args(rest)
    if unknown:
        parser.error(
            f"unrecognized arguments: {' '.join(unknown)} (neither a {prog} flag nor an Apache Beam "
            f"pipeline option{suggest(unknown, parser)}; flags are never abbreviated; see --help)"
        )
    missing = [f"--{r}" for r in getattr(cls, "REQUIRED", ()) if getattr(known, r) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    conflict = cls.conflicts(known) if hasattr(cls, "conflicts") else None
    if conflict:
        parser.error(conflict)
    return known, rest


def suggest(unknown: list[str], parser) -> str:
    """``; did you mean --meta?`` for flags close to ``parser``'s own, else ''."""
    import difflib

    known = [o for o in parser._option_string_actions if o.startswith("--")]
    hints = []
    for u in unknown:
        flag = u.split("=", 1)[0]
        near = [k for k in known if k.startswith(flag)] or difflib.get_close_matches(flag, known, n=1)
        if near:
            hints.append(f"{flag} -> {near[0]}")
    return f"; did you mean: {', '.join(hints)}" if hints else ""
