"""``python -m bigearthnet_beam`` is the ``benbeam`` command."""

from bigearthnet_beam.beam_pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
