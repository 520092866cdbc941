"""bigearthnet-beam: BigEarthNet v2.0 (reBEN) to training-ready sharded TFRecords with Apache Beam."""

from bigearthnet_beam.schemas import __version__ as __version__

__all__ = ["__version__"]
