"""TensorFlow Datasets metadata of a converted dataset, derived from its manifest.

``benbeam convert`` writes ``dataset_info.json``, ``features.json`` and ``metadata.json`` next
to ``dataset.json`` so that ``tfds.builder_from_directory(OUT).as_dataset(split=...)`` reads the
shards as they are: the shard names ``<split>/<split>-NNNNN-of-NNNNN.tfrecord`` are expressed by
the split's ``filepathTemplate`` ``{SPLIT}/{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}`` (TFDS formats the
template with ``str.format``, which may repeat a field), so shard bytes and names are unchanged.

The manifest stays the source of truth: every value here (features, splits, shard lengths,
bytes, classes) comes from ``dataset.json``; nothing is measured twice. The files are plain JSON in
the layout TFDS 4.9 reads (the JSON form of its ``DatasetInfo`` proto and of
``FeaturesDict.to_json``), so writing them needs neither TensorFlow nor ``tensorflow-datasets``.

A raw-encoded dataset (``convert --encoding raw``) gets TFDS files too: TFDS yields its features
as stored (S2 uint16 at 10/20/60 m, S1 float32 dB, CHW), not resampled or normalised; the
normalisation parameters are in ``info.metadata`` and ``transforms.raw_decode`` applies them.

TFDS reads TFRecords without compression only: a dataset converted with ``--compression gzip``
gets no TFDS files (``write`` says so and returns an empty list).
"""

from __future__ import annotations

import json
import logging

from bigearthnet_beam.schemas import manifest as manifest_schema
from bigearthnet_beam.transforms import storage

LOG = logging.getLogger("benbeam")

DATASET_INFO = "dataset_info.json"
FEATURES = "features.json"
METADATA = "metadata.json"
FILES = (DATASET_INFO, FEATURES, METADATA)
NAME = "bigearthnet_beam"
FILEPATH_TEMPLATE = "{SPLIT}/{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}"

_TENSOR = "tensorflow_datasets.core.features.tensor_feature.Tensor"
_TEXT = "tensorflow_datasets.core.features.text_feature.Text"
_DICT = "tensorflow_datasets.core.features.features_dict.FeaturesDict"


def supported(manifest: dict) -> bool:
    """Whether TFDS can read this dataset's shards (it reads uncompressed TFRecords only)."""
    return manifest["compression"] == "none"


def _feature(f: dict) -> dict:
    """One manifest feature (``schemas.tfrecord.Feature`` as JSON) as a TFDS feature config."""
    if f["kind"] == "bytes":
        return {"description": f["description"], "pythonClassName": _TEXT, "text": {}}
    encoding = "bytes" if f["kind"] == "raw" else "none"  # float / int64 lists: plain tf.train.Example lists
    return {
        "description": f["description"],
        "pythonClassName": _TENSOR,
        "tensor": {"dtype": f["dtype"], "encoding": encoding, "shape": {"dimensions": [str(d) for d in f["shape"]]}},
    }


def features_json(manifest: dict) -> dict:
    """``features.json``: a FeaturesDict with one feature per manifest feature, same names and dtypes."""
    feats = {f["name"]: _feature(f) for f in manifest["features"]}
    return {"featuresDict": {"features": dict(sorted(feats.items()))}, "pythonClassName": _DICT}


def dataset_info_json(manifest: dict) -> dict:
    """``dataset_info.json``: name, version, file format and each split's shard lengths and bytes."""
    splits = []
    for name, info in sorted(manifest["splits"].items()):
        if name not in manifest_schema.SPLITS or not info["shards"]:
            continue
        splits.append(
            {
                "filepathTemplate": FILEPATH_TEMPLATE,
                "name": name,
                "numBytes": str(sum(int(s["bytes"]) for s in info["shards"])),
                "shardLengths": [str(int(s["records"])) for s in info["shards"]],
            }
        )
    s2, s1 = ",".join(manifest["bands"]["s2"]), ",".join(manifest["bands"]["s1"])
    if manifest.get("encoding") == "raw":
        images = (
            f"raw Sentinel-2 bands {s2} as uint16 digital numbers at their native 10, 20 and 60 m "
            f"(s2_10m, s2_20m, s2_60m, CHW) and Sentinel-1 {s1} as float32 dB (s1_db, CHW), neither "
            "resampled nor normalised (metadata.json 'normalization' holds the dataset's statistics)"
        )
    else:
        images = (
            f"normalised Sentinel-2 bands {s2} and Sentinel-1 {s1} as HWC {manifest['image_dtype']} arrays "
            "on the 10 m grid"
        )
    description = (
        f"BigEarthNet v2.0 (reBEN) patches converted by bigearthnet-beam: {images}, a 19-class "
        f"label map (uint8, {manifest['ignore_index']} = ignore) and the multi-hot of the metadata labels. "
        "Class names: metadata.json 'classes' (info.metadata['classes']). The dataset's dataset.json is the "
        "source of truth; this file is derived from it."
    )
    return {
        "description": description,
        "fileFormat": "tfrecord",
        "moduleName": "bigearthnet_beam",
        "name": NAME,
        "releaseNotes": {},
        "splits": splits,
        "version": f"{manifest_schema.SCHEMA_VERSION}.0.0",
    }


def metadata_json(manifest: dict) -> dict:
    """``metadata.json`` (``info.metadata``): the class and band tables, the ignore index, the statistics."""
    extra = {"encoding": manifest["encoding"]} if "encoding" in manifest else {}
    return {
        **extra,
        "bands": manifest["bands"],
        "class_colors": manifest["class_colors"],
        "classes": manifest["classes"],
        "ignore_index": manifest["ignore_index"],
        "image_dtype": manifest["image_dtype"],
        "normalization": manifest["statistics"].get("normalization"),
    }


def _dumps(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def documents(manifest: dict) -> dict[str, bytes]:
    """File name -> bytes of every TFDS file for ``manifest``; empty when TFDS cannot read the shards."""
    if not supported(manifest):
        return {}
    return {
        DATASET_INFO: _dumps(dataset_info_json(manifest)),
        FEATURES: _dumps(features_json(manifest)),
        METADATA: _dumps(metadata_json(manifest)),
    }


def write(out: str, manifest: dict, st: storage.Storage | None = None) -> list[str]:
    """Write the TFDS files of ``manifest`` into the dataset folder ``out`` (under ``st``); returns their names."""
    st = st if st is not None else storage.Storage()
    docs = documents(manifest)
    if not docs:
        LOG.info(
            "no TFDS metadata: TFDS reads uncompressed TFRecords only (this dataset is --compression %s)",
            manifest["compression"],
        )
        for name in FILES:  # an earlier uncompressed run's files would describe shards that are gone
            url = storage.join(out, name)
            if st.exists(url):
                st.filesystem(url).rm(url)
    for name, data in docs.items():
        st.write_bytes_atomic(storage.join(out, name), data)
    return sorted(docs)


def check(out: str, manifest: dict, st: storage.Storage | None = None) -> list[str]:
    """Problems of the TFDS files present in ``out``: each must equal what ``manifest`` derives
    (a dataset converted before these files existed has none, which is no problem)."""
    st = st if st is not None else storage.Storage()
    want = documents(manifest)
    problems = []
    for name in FILES:
        url = storage.join(out, name)
        if not st.exists(url):
            continue
        if name not in want:
            problems.append(f"{name}: present, but TFDS cannot read {manifest['compression']} shards")
        elif st.read_bytes(url) != want[name]:
            problems.append(f"{name}: differs from what dataset.json derives (re-run `benbeam convert`)")
    return problems
