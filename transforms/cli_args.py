"""Command-line helpers that several commands share (``benbeam convert`` / ``train`` / ``predict`` …).

Plain argparse: the storage flags and the ``Storage`` they build, integer types, and the check
that the flags a command leaves to Beam are real pipeline options. ``beam_pipeline`` and
``trainer`` both import this module; it imports neither.
"""

from __future__ import annotations

import argparse

from bigearthnet_beam.transforms import flagtypes


def add_storage_args(parser, s3_endpoint: bool = True) -> None:
    """Storage flags (``storage_from_args`` turns them into a ``Storage``). Beam's own S3Options
    already defines ``--s3_endpoint_url`` (same meaning), so PipelineOptions subclasses pass
    ``s3_endpoint=False``. No flag takes a secret: keys come from the credential chains."""
    g = parser.add_argument_group("object storage")
    if s3_endpoint:
        add_s3_endpoint(g)
    g.add_argument("--anon", action="store_true", help="anonymous access to public buckets")
    g.add_argument(
        "--s3_profile", default=None, help="named AWS profile (~/.aws/config) for s3:// (default: the chain)"
    )
    g.add_argument("--s3_region", default=None, help="region of the s3:// buckets (default: the profile's)")
    g.add_argument(
        "--gcs_endpoint_url", default=None, help="GCS endpoint (defaults to $STORAGE_EMULATOR_HOST when set)"
    )
    g.add_argument("--gcs_project", default=None, help="Google Cloud project billed for gs:// requests")
    g.add_argument(
        "--gcs_credentials",
        default=None,
        metavar="JSON",
        help="service-account key file for gs:// (default: Application Default Credentials)",
    )


def add_s3_endpoint(parser) -> None:
    """The ``--s3_endpoint_url`` flag (default: ``$AWS_ENDPOINT_URL_S3`` or ``$AWS_ENDPOINT_URL``)."""
    parser.add_argument(
        "--s3_endpoint_url",
        default=None,
        help="S3-compatible endpoint (MinIO, SeaweedFS, Ceph; default: $AWS_ENDPOINT_URL_S3 or "
        "$AWS_ENDPOINT_URL); credentials come from the standard AWS chain",
    )


def storage_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None, probe: bool = True):
    """The ``Storage`` the parsed flags describe, the environment (read once, here) filling what
    they leave unset; with ``probe``, fails in seconds when nothing answers at a custom endpoint."""
    from bigearthnet_beam.transforms.storage import Storage

    st = Storage.from_env(
        environ,
        s3_endpoint_url=getattr(args, "s3_endpoint_url", None),
        gcs_endpoint_url=getattr(args, "gcs_endpoint_url", None),
        anon=getattr(args, "anon", False) or None,
        s3_profile=getattr(args, "s3_profile", None),
        s3_region=getattr(args, "s3_region", None),
        gcs_project=getattr(args, "gcs_project", None),
        gcs_token=getattr(args, "gcs_credentials", None),
    )
    return st.probe() if probe else st


positive_int = flagtypes.positive_int  # argparse types: one set for every command (transforms.flagtypes)
nonneg_int = flagtypes.nonneg_int


def unknown_pipeline_args(args: list[str]) -> list[str]:
    """The flags in ``args`` that no PipelineOptions class knows (Beam would only warn and drop them)."""
    if not args:
        return []
    import importlib

    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    # A runner named by its module path (e.g. apache_beam.runners.dask.dask_runner.DaskRunner)
    # registers its own options class when imported.
    for i, a in enumerate(args):
        name = (
            a.split("=", 1)[1]
            if a.startswith("--runner=")
            else (args[i + 1] if a == "--runner" and i + 1 < len(args) else None)
        )
        if name and "." in name:
            try:
                importlib.import_module(name.rsplit(".", 1)[0])
            except ImportError:
                pass

    parser = _BeamArgumentParser(allow_abbrev=False)
    subset = {}
    for c in PipelineOptions.__subclasses__():
        subset.setdefault(str(c), c)
    for c in subset.values():
        c._add_argparse_args(parser)  # the same set Beam parses for every pipeline
    _, unknown = parser.parse_known_args(args)
    return [a for a in unknown if a.startswith("-")]
