"""The TFRecord feature spec: names, shapes and dtypes of every example feature.

The writer (``transforms.encode``), the trainer's reader and the tests all use this
definition. ``parsing_spec()`` gives the ``tf.io.FixedLenFeature`` dict, and
``tfmd_schema()`` the equivalent TensorFlow Metadata schema for TFX/TFDV tools. This
module imports TensorFlow only inside the functions that need it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bigearthnet_beam.schemas.bands import BAND_BY_NAME, PATCH_SIZE, S1_NAMES, S2_NAMES
from bigearthnet_beam.schemas.classes import NUM_CLASSES

IMAGE_DTYPES = ("float32", "float16")
# How the images are stored: "normalized" (resampled to 10 m, normalised, IMAGE_DTYPES) or
# "raw" (lossless: S2 uint16 at native resolution, S1 float32 dB; readers normalise).
ENCODINGS = ("normalized", "raw")
RAW = "raw"  # the manifest's image_dtype (and features()' argument) of the raw encoding
STORED_DTYPES = IMAGE_DTYPES + (RAW,)


@dataclass(frozen=True)
class Feature:
    """One TFRecord feature: its wire kind and its logical shape and dtype after decoding."""

    name: str
    kind: str  # "bytes" (scalar string), "float" (float list), "int64" (int64 list), "raw" (bytes holding an array)
    shape: tuple[int, ...]  # logical array shape after decoding
    dtype: str  # logical dtype after decoding
    description: str


PATCH_ID = "patch_id"
S2 = "s2_data"
S1 = "s1_data"
LABEL = "label"
MULTI_HOT = "labels_multi_hot"
SPLIT = "split"
COUNTRY = "country"

IMAGE_FEATURES = (S2, S1)

# The raw encoding's image features: S2 bands grouped by native resolution, band-major (CHW).
S2_10M = "s2_10m"
S2_20M = "s2_20m"
S2_60M = "s2_60m"
S1_DB = "s1_db"
# (feature, native resolution in m, band names in schemas.bands.S2_NAMES order)
S2_GROUPS: tuple[tuple[str, int, tuple[str, ...]], ...] = tuple(
    (feat, res, tuple(n for n in S2_NAMES if BAND_BY_NAME[n].resolution_m == res))
    for feat, res in ((S2_10M, 10), (S2_20M, 20), (S2_60M, 60))
)
RAW_IMAGE_FEATURES = (S2_10M, S2_20M, S2_60M, S1_DB)


def encoding_of(image_dtype: str) -> str:
    """The encoding of a stored image dtype: ``raw`` for RAW, else ``normalized``."""
    return RAW if image_dtype == RAW else "normalized"


def _common() -> tuple[Feature, ...]:
    return (
        Feature(LABEL, "raw", (PATCH_SIZE, PATCH_SIZE), "uint8", "19-class index per pixel, 255 = no class (ignore)"),
        Feature(
            MULTI_HOT, "int64", (NUM_CLASSES,), "int64", "multi-hot of the metadata labels in canonical class order"
        ),
        Feature(SPLIT, "bytes", (), "string", "train / validation / test"),
        Feature(COUNTRY, "bytes", (), "string", "country of the patch"),
    )


def raw_features() -> tuple[Feature, ...]:
    """The features of the raw encoding: lossless native-resolution arrays, readers normalise."""
    s2 = tuple(
        Feature(
            feat,
            "raw",
            (len(names), PATCH_SIZE * 10 // res, PATCH_SIZE * 10 // res),
            "uint16",
            f"S2 bands {','.join(names)} at their native {res} m, digital numbers, band-major (CHW)",
        )
        for feat, res, names in S2_GROUPS
    )
    s1 = Feature(
        S1_DB,
        "raw",
        (len(S1_NAMES), PATCH_SIZE, PATCH_SIZE),
        "float32",
        "S1 backscatter " + ",".join(S1_NAMES) + " in dB as in the source files, band-major (CHW)",
    )
    return (Feature(PATCH_ID, "bytes", (), "string", "reBEN patch id"), *s2, s1, *_common())


def features(image_dtype: str = "float32") -> tuple[Feature, ...]:
    """All features of one example (``image_dtype`` RAW: the raw encoding's), in the order they are serialised."""
    if image_dtype == RAW:
        return raw_features()
    if image_dtype not in IMAGE_DTYPES:
        raise ValueError(f"--dtype must be one of {IMAGE_DTYPES}, got {image_dtype!r}")
    img_kind = "float" if image_dtype == "float32" else "raw"
    return (
        Feature(PATCH_ID, "bytes", (), "string", "reBEN patch id"),
        Feature(
            S2,
            img_kind,
            (PATCH_SIZE, PATCH_SIZE, len(S2_NAMES)),
            image_dtype,
            "normalised S2 bands " + ",".join(S2_NAMES) + ", HWC, 10 m grid",
        ),
        Feature(
            S1,
            img_kind,
            (PATCH_SIZE, PATCH_SIZE, len(S1_NAMES)),
            image_dtype,
            "normalised S1 backscatter " + ",".join(S1_NAMES) + ", HWC",
        ),
        *_common(),
    )


def feature_by_name(image_dtype: str = "float32") -> dict[str, Feature]:
    """``features`` by name."""
    return {f.name: f for f in features(image_dtype)}


def parsing_spec(image_dtype: str = "float32") -> dict:
    """``tf.io.parse_example`` spec: every feature is a FixedLenFeature."""
    import tensorflow as tf

    spec = {}
    for f in features(image_dtype):
        if f.kind == "float":
            n = 1
            for d in f.shape:
                n *= d
            spec[f.name] = tf.io.FixedLenFeature([n], tf.float32)
        elif f.kind == "int64":
            spec[f.name] = tf.io.FixedLenFeature(list(f.shape), tf.int64)
        else:
            spec[f.name] = tf.io.FixedLenFeature([], tf.string)
    return spec


def decode_parsed(parsed: dict, image_dtype: str = "float32") -> dict:
    """Turn the output of ``tf.io.parse_(single_)example`` into shaped tensors.

    Works on a single example or a batch (leading batch dimension).
    """
    import tensorflow as tf

    out = {}
    for f in features(image_dtype):
        t = parsed[f.name]
        if f.kind == "float":
            lead = tf.shape(t)[:-1]
            out[f.name] = tf.reshape(t, tf.concat([lead, f.shape], 0))
        elif f.kind == "raw":
            raw = tf.io.decode_raw(t, tf.as_dtype(f.dtype))
            lead = tf.shape(raw)[:-1]
            out[f.name] = tf.reshape(raw, tf.concat([lead, f.shape], 0))
        else:
            out[f.name] = t
    return out


def tfmd_schema(image_dtype: str = "float32"):
    """The TensorFlow Metadata ``Schema`` proto describing the serialised examples."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    for f in features(image_dtype):
        feat = schema.feature.add()
        feat.name = f.name
        feat.presence.min_fraction = 1.0
        feat.presence.min_count = 1
        if f.kind == "float":
            feat.type = schema_pb2.FLOAT
            n = 1
            for d in f.shape:
                n *= d
            feat.shape.dim.add().size = n
        elif f.kind == "int64":
            feat.type = schema_pb2.INT
            feat.shape.dim.add().size = f.shape[0]
            feat.int_domain.min = 0
            feat.int_domain.max = 1
        else:
            feat.type = schema_pb2.BYTES
            feat.shape.dim.add().size = 1
        feat.annotation.tag.append(f"dtype:{f.dtype}")
        feat.annotation.tag.append("shape:" + "x".join(str(d) for d in f.shape))
    return schema
