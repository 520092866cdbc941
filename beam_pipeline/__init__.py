"""bigearthnet-beam: graph assembly, options and the ``benbeam`` command line."""

__version__ = "0.1.0"
