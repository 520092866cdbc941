"""The data contract: bands, classes, naming, TFRecord spec, manifest and failure vocabulary."""

__version__ = "0.2.0"  # the package's version (setup.py reads it here; beam_pipeline re-exports it)
