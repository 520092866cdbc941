"""bigearthnet-beam: graph assembly, options and the ``benbeam`` command line."""

from bigearthnet_beam.schemas import __version__ as __version__  # one version, defined in schemas
