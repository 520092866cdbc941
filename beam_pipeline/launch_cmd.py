"""``benbeam launch RUNNER [flags] -- <convert flags>``: run ``convert`` on a distributed engine.

The runner flags become Beam pipeline options (``launch.submit``); unless the workers run
an image that holds the package, a wheel of the running package is built (``launch.staging``)
and staged with ``--extra_package``. The conversion itself is ``benbeam convert``.
"""

from __future__ import annotations

import sys
import tempfile

from bigearthnet_beam.launch import names, staging, submit


def run(argv: list[str] | None = None) -> int:
    """Parse the launch flags, stage the package if the workers need it, run ``convert``."""
    ours, convert_argv = submit.split_argv(list(sys.argv[1:] if argv is None else argv))
    ns = submit.build_parser().parse_args(ours)
    if not convert_argv:
        print(
            "benbeam launch: error: give the conversion's flags after `--` (at least --meta and --out)", file=sys.stderr
        )
        return 2
    try:  # placeholder project / bucket names: one line before a wheel is built or a client started
        names.check_launch(ns)
    except ValueError as e:
        print(f"benbeam launch: error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="benbeam-stage-") as tmp:
        package = None
        if submit.needs_package(ns):
            try:
                package = staging.build_wheel(tmp)
            except staging.StagingError as e:
                print(f"benbeam launch: error: {e}", file=sys.stderr)
                return 3
            print(f"staging {package.rsplit('/', 1)[-1]} for the workers", file=sys.stderr)
        try:
            extra = submit.runner_args(ns, package)
        except ValueError as e:
            print(f"benbeam launch: error: {e}", file=sys.stderr)
            return 2
        from bigearthnet_beam.beam_pipeline.convert import run as convert

        return convert(convert_argv + extra)
