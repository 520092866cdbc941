"""The data contract: bands, classes, naming, TFRecord spec, manifest and failure vocabulary."""
