"""``python -m beam_pipeline`` is the ``benbeam`` command."""

from beam_pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
