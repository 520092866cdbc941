"""Fast, deterministic TFRecord encoding without TensorFlow (plain Python + numpy).

``encode_example`` writes the protobuf wire format of a ``tf.train.Example`` directly:
float32 images become packed FloatLists from ``ndarray.tobytes()`` (no per-element
Python work: ~0.1 ms per patch instead of ~43 ms through ``tf.train.FloatList``), map
entries are serialised in sorted key order so equal inputs give equal bytes.
``frame_record`` adds the TFRecord framing (length, masked CRC32C). The tests check the
bytes against TensorFlow's own parser.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import tempfile
import uuid
from typing import Iterator

import google_crc32c
import numpy as np

from bigearthnet_beam.schemas import tfrecord
from bigearthnet_beam.transforms import storage

_MASK_DELTA = 0xA282EAD8


# --------------------------------------------------------------------------- protobuf wire format


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _head(field: int, length: int) -> bytes:
    """The key and length of a length-delimited field whose payload follows separately."""
    return _varint((field << 3) | 2) + _varint(length)


# A feature is encoded as a list of byte parts plus their total length, so the large
# payloads (image bytes) are copied once, by the final join, not at every nesting level.


def _bytes_feature(values: list[bytes]) -> tuple[list[bytes], int]:
    # Feature.bytes_list = 1 ; BytesList.value = 1 (repeated bytes)
    parts: list = []
    n = 0
    for v in values:
        h = _head(1, len(v))
        parts += [h, v]
        n += len(h) + len(v)
    h = _head(1, n)
    return [h] + parts, len(h) + n


def _float_feature(arr: np.ndarray) -> tuple[list[bytes], int]:
    # Feature.float_list = 2 ; FloatList.value = 1 (packed float)
    data = np.ascontiguousarray(arr, dtype="<f4").data.cast("B")
    if not len(data):
        h = _head(2, 0)
        return [h], len(h)
    h1 = _head(1, len(data))
    h2 = _head(2, len(h1) + len(data))
    return [h2, h1, data], len(h2) + len(h1) + len(data)


def _int64_feature(arr) -> tuple[list[bytes], int]:
    # Feature.int64_list = 3 ; Int64List.value = 1 (packed varint, two's complement for negatives)
    packed = b"".join(_varint(int(v) & 0xFFFFFFFFFFFFFFFF) for v in np.asarray(arr).ravel())
    payload = _ld(3, _ld(1, packed) if packed else b"")
    return [payload], len(payload)


def serialize_features(features: dict[str, tuple[list[bytes], int]]) -> bytes:
    """Example{features: Features{feature: map<string, Feature>}} from encoded features,
    map entries in sorted key order (deterministic bytes)."""
    parts: list = []
    total = 0
    for name, (fparts, flen) in sorted(features.items()):
        key = _ld(1, name.encode("utf-8"))
        fhead = _head(2, flen)
        entry_len = len(key) + len(fhead) + flen
        ehead = _head(1, entry_len)
        parts += [ehead, key, fhead, *fparts]
        total += len(ehead) + entry_len
    return b"".join([_head(1, total), *parts])


def _check(name: str, arr: np.ndarray, shape, dtypes) -> np.ndarray:
    arr = np.asarray(arr)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"feature {name!r} must have shape {tuple(shape)}, got {arr.shape}")
    if arr.dtype not in dtypes:
        raise ValueError(f"feature {name!r} must have dtype {' or '.join(str(d) for d in dtypes)}, got {arr.dtype}")
    return arr


def encode_example(
    patch_id: str, s2, s1, label, multi_hot, split: str, country: str, image_dtype: str = "float32"
) -> bytes:
    """Serialised ``tf.train.Example`` of one patch, following ``schemas.tfrecord.features``."""
    spec = tfrecord.feature_by_name(image_dtype)
    img_dt = np.dtype(image_dtype)
    feats: dict[str, bytes] = {}
    for name, arr in ((tfrecord.S2, s2), (tfrecord.S1, s1)):
        a = _check(name, arr, spec[name].shape, (np.dtype(np.float32), np.dtype(np.float16)))
        if image_dtype == "float32":
            feats[name] = _float_feature(a)
        else:
            feats[name] = _bytes_feature([np.ascontiguousarray(a, dtype=img_dt.newbyteorder("<")).data.cast("B")])
    _common_features(feats, spec, patch_id, label, multi_hot, split, country)
    return serialize_features(feats)


def encode_raw_example(patch_id: str, images: dict, label, multi_hot, split: str, country: str) -> bytes:
    """Serialised ``tf.train.Example`` of one patch in the raw encoding (``schemas.tfrecord.raw_features``):
    ``images`` maps each of ``tfrecord.RAW_IMAGE_FEATURES`` to its native array (S2 uint16, S1 float32, CHW)."""
    spec = tfrecord.feature_by_name(tfrecord.RAW)
    feats: dict = {}
    for name in tfrecord.RAW_IMAGE_FEATURES:
        if name not in images:
            raise ValueError(f"raw example lacks image feature {name!r}")
        dt = np.dtype(spec[name].dtype)
        a = _check(name, images[name], spec[name].shape, (dt,))
        feats[name] = _bytes_feature([np.ascontiguousarray(a, dtype=dt.newbyteorder("<")).data.cast("B")])
    _common_features(feats, spec, patch_id, label, multi_hot, split, country)
    return serialize_features(feats)


def _common_features(feats: dict, spec: dict, patch_id: str, label, multi_hot, split: str, country: str) -> None:
    """Add the label map, multi-hot and text features (the same in every encoding) to ``feats``."""
    lab = _check(tfrecord.LABEL, label, spec[tfrecord.LABEL].shape, (np.dtype(np.uint8),))
    feats[tfrecord.LABEL] = _bytes_feature([np.ascontiguousarray(lab).data.cast("B")])
    mh = np.asarray(multi_hot)
    if mh.shape != spec[tfrecord.MULTI_HOT].shape:
        raise ValueError(
            f"feature {tfrecord.MULTI_HOT!r} must have shape {spec[tfrecord.MULTI_HOT].shape}, got {mh.shape}"
        )
    feats[tfrecord.MULTI_HOT] = _int64_feature(mh)
    for name, text in ((tfrecord.PATCH_ID, patch_id), (tfrecord.SPLIT, split), (tfrecord.COUNTRY, country)):
        if not isinstance(text, str):
            raise ValueError(f"feature {name!r} must be a string, got {type(text).__name__}")
        feats[name] = _bytes_feature([text.encode("utf-8")])


# --------------------------------------------------------------------------- decoding (verify, tests)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated length-delimited field")
            yield field, wire, buf[pos : pos + n]
            pos += n
        elif wire == 0:
            v, pos = _read_varint(buf, pos)
            yield field, wire, v
        elif wire == 5:
            yield field, wire, buf[pos : pos + 4]
            pos += 4
        elif wire == 1:
            yield field, wire, buf[pos : pos + 8]
            pos += 8
        else:
            raise ValueError(f"unsupported wire type {wire}")


def parse_features(data: bytes) -> dict[str, tuple[str, object]]:
    """Generic Example parser: name -> ("bytes", [bytes...]) | ("float", ndarray) | ("int64", ndarray)."""
    out: dict[str, tuple[str, object]] = {}
    for f, _, features in _fields(memoryview(data)):
        if f != 1:
            continue
        for f2, _, entry in _fields(features):
            if f2 != 1:
                continue
            name, feat = None, b""
            for f3, _, v in _fields(entry):
                if f3 == 1:
                    name = bytes(v).decode("utf-8")
                elif f3 == 2:
                    feat = v
            for kind, _, payload in _fields(memoryview(feat)):
                if kind == 1:
                    out[name] = ("bytes", [bytes(v) for ff, _, v in _fields(payload) if ff == 1])
                elif kind == 2:
                    parts = [bytes(v) for ff, w, v in _fields(payload) if ff == 1 and w == 2]
                    out[name] = ("float", np.frombuffer(b"".join(parts), dtype="<f4"))
                elif kind == 3:
                    vals = []
                    for ff, w, v in _fields(payload):
                        if ff != 1:
                            continue
                        if w == 2:
                            p = 0
                            while p < len(v):
                                x, p = _read_varint(v, p)
                                vals.append(x)
                        else:
                            vals.append(v)
                    arr = np.array(vals, dtype=np.uint64).astype(np.int64)
                    out[name] = ("int64", arr)
    return out


def decode_example(data: bytes, image_dtype: str = "float32") -> dict:
    """Decode one of our examples into numpy arrays / str, shaped per ``schemas.tfrecord``."""
    raw = parse_features(data)
    out: dict = {}
    for f in tfrecord.features(image_dtype):
        if f.name not in raw:
            raise ValueError(f"example lacks feature {f.name!r}")
        kind, val = raw[f.name]
        if f.kind == "float":
            out[f.name] = np.asarray(val, dtype=np.float32).reshape(f.shape)
        elif f.kind == "raw":
            out[f.name] = np.frombuffer(val[0], dtype=np.dtype(f.dtype).newbyteorder("<")).reshape(f.shape)
        elif f.kind == "int64":
            out[f.name] = np.asarray(val).reshape(f.shape)
        else:
            out[f.name] = val[0].decode("utf-8")
    return out


# --------------------------------------------------------------------------- TFRecord framing


def masked_crc(data: bytes) -> int:
    """TFRecord masked CRC32C of ``data``."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_parts(data: bytes) -> tuple[bytes, bytes, bytes]:
    """TFRecord framing as (head, data, tail): uint64 length + masked crc32c(length), the
    data, masked crc32c(data). Written as parts, the data is never copied."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)), data, struct.pack("<I", masked_crc(data))


def frame_record(data: bytes) -> bytes:
    """One framed TFRecord record as bytes."""
    return b"".join(frame_parts(data))


def _open_raw(url: str, compression: str, st: storage.Storage | None = None):
    fh = (st or storage.Storage()).filesystem(url).open(url, "rb")
    if compression == "gzip":
        return gzip.GzipFile(fileobj=fh, mode="rb")
    return fh


def iter_records(
    url: str, compression: str = "none", verify_crc: bool = True, st: storage.Storage | None = None
) -> Iterator[bytes]:
    """Records of a TFRecord file (read under ``st``, default ``Storage()``); raises ValueError
    on a truncated record or a bad CRC."""
    with _open_raw(url, compression, st) as fh:
        offset = 0
        while True:
            header = fh.read(12)
            if not header:
                return
            if len(header) < 12:
                raise ValueError(f"{url}: truncated record header at offset {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            if verify_crc and struct.unpack("<I", header[8:])[0] != masked_crc(header[:8]):
                raise ValueError(f"{url}: bad length CRC at offset {offset}")
            body = fh.read(length + 4)
            if len(body) < length + 4:
                raise ValueError(f"{url}: truncated record at offset {offset}")
            data = body[:length]
            if verify_crc and struct.unpack("<I", body[length:])[0] != masked_crc(data):
                raise ValueError(f"{url}: bad data CRC at offset {offset}")
            offset += 12 + length + 4
            yield data


class ShardWriter:
    """Write a TFRecord file that only ever appears complete under its final name.

    Local: records go to ``.tmp-<name>-<uuid>`` beside the target, renamed on ``close``
    (no per-shard fsync: ``convert`` flushes once before writing its manifest). Remote (s3://, gs://):
    a local temp file is uploaded once on ``close`` under ``st`` (a single PUT is atomic). ``gzip`` output is
    deterministic (mtime 0, no name). On an exception inside ``with``, the temp file is removed and nothing appears.
    """

    def __init__(self, url: str, compression: str = "none", st: storage.Storage | None = None):
        if compression not in ("none", "gzip"):
            raise ValueError(f"compression must be 'none' or 'gzip', got {compression!r}")
        self.url = str(url)
        self.compression = compression
        self.storage = st if st is not None else storage.Storage()
        self.records = 0
        self._result: dict | None = None
        if storage.is_remote(self.url):
            fd, self._tmp = tempfile.mkstemp(prefix=".tmp-benbeam-", suffix=".tfrecord")
            os.close(fd)
        else:
            d = os.path.dirname(os.path.abspath(self.url))
            os.makedirs(d, exist_ok=True)
            self._tmp = os.path.join(d, f".tmp-{os.path.basename(self.url)}-{uuid.uuid4().hex}")
        self._raw = open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        self._size = 0
        self._gz = None
        if compression == "gzip":
            self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=_HashingWriter(self), mtime=0)

    def _emit(self, b: bytes) -> None:
        self._raw.write(b)
        self._hash.update(b)
        self._size += len(b)

    def write(self, example: bytes) -> None:
        """Append one serialised example as a framed record."""
        for part in frame_parts(example):
            if self._gz is not None:
                self._gz.write(part)
            else:
                self._emit(part)
        self.records += 1

    def close(self) -> dict:
        """Finish the file, move it to its URL (upload when remote); the result dict (idempotent)."""
        if self._result is not None:
            return self._result
        if self._gz is not None:
            self._gz.close()
        self._raw.close()  # durability: convert syncs once, before it writes dataset.json
        if storage.is_remote(self.url):
            self.storage.upload_file(self._tmp, self.url)
            os.unlink(self._tmp)
        else:
            os.replace(self._tmp, self.url)
        self._result = {"records": self.records, "bytes": self._size, "sha256": self._hash.hexdigest()}
        return self._result

    def abort(self) -> None:
        """Discard the temporary file of an unfinished shard."""
        if self._result is None:
            try:
                self._raw.close()
            finally:
                if os.path.exists(self._tmp):
                    os.unlink(self._tmp)
            self._result = {"aborted": True}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
            return False
        self.close()
        return False


class _HashingWriter(io.RawIOBase):
    """File-like sink for GzipFile that feeds ShardWriter's hash and size."""

    def __init__(self, owner: ShardWriter):
        self._owner = owner

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        b = bytes(b)
        self._owner._emit(b)
        return len(b)
