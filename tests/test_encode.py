"""The hand-written Example encoder and TFRecord framing against TensorFlow's own parser."""

import gzip

import numpy as np
import pytest
import tensorflow as tf

from bigearthnet_beam.schemas import tfrecord
from bigearthnet_beam.schemas.classes import multi_hot
from bigearthnet_beam.transforms.encode import ShardWriter, decode_example, encode_example, frame_record, iter_records


def _patch(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    s2 = rng.standard_normal((120, 120, 12)).astype(dtype)
    s1 = rng.standard_normal((120, 120, 2)).astype(dtype)
    label = rng.integers(0, 19, (120, 120)).astype(np.uint8)
    label[:5] = 255
    mh = multi_hot(["Arable land", "Marine waters"])
    return s2, s1, label, mh


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_bytes_parse_with_the_schema_spec_to_the_same_arrays(dtype):
    s2, s1, label, mh = _patch(1, np.dtype(dtype))
    data = encode_example("S2A_x", s2, s1, label, mh, "train", "Österreich", image_dtype=dtype)
    ex = tfrecord.decode_parsed(tf.io.parse_single_example(data, tfrecord.parsing_spec(dtype)), dtype)
    np.testing.assert_array_equal(ex[tfrecord.S2].numpy(), s2)
    np.testing.assert_array_equal(ex[tfrecord.S1].numpy(), s1)
    np.testing.assert_array_equal(ex[tfrecord.LABEL].numpy(), label)
    np.testing.assert_array_equal(ex[tfrecord.MULTI_HOT].numpy(), mh)
    assert ex[tfrecord.PATCH_ID].numpy() == b"S2A_x"
    assert ex[tfrecord.COUNTRY].numpy().decode() == "Österreich"
    # our numpy decoder agrees
    d = decode_example(data, dtype)
    np.testing.assert_array_equal(d[tfrecord.S2], s2)
    np.testing.assert_array_equal(d[tfrecord.LABEL], label)
    np.testing.assert_array_equal(d[tfrecord.MULTI_HOT], mh)
    assert d[tfrecord.SPLIT] == "train"


def test_equals_an_example_built_with_the_tensorflow_api():
    s2, s1, label, mh = _patch(2)
    ours = tf.train.Example.FromString(encode_example("pid", s2, s1, label, mh, "test", "Ireland"))
    f = tf.train.Feature
    ref = tf.train.Example(
        features=tf.train.Features(
            feature={
                tfrecord.PATCH_ID: f(bytes_list=tf.train.BytesList(value=[b"pid"])),
                tfrecord.S2: f(float_list=tf.train.FloatList(value=s2.ravel())),
                tfrecord.S1: f(float_list=tf.train.FloatList(value=s1.ravel())),
                tfrecord.LABEL: f(bytes_list=tf.train.BytesList(value=[label.tobytes()])),
                tfrecord.MULTI_HOT: f(int64_list=tf.train.Int64List(value=mh)),
                tfrecord.SPLIT: f(bytes_list=tf.train.BytesList(value=[b"test"])),
                tfrecord.COUNTRY: f(bytes_list=tf.train.BytesList(value=[b"Ireland"])),
            }
        )
    )
    assert ours == ref


def test_deterministic_bytes_and_input_checks():
    s2, s1, label, mh = _patch(3)
    a = encode_example("p", s2, s1, label, mh, "train", "X")
    assert a == encode_example("p", s2.copy(), s1.copy(), label.copy(), mh.copy(), "train", "X")
    with pytest.raises(ValueError, match="shape"):
        encode_example("p", s2[:100], s1, label, mh, "train", "X")
    with pytest.raises(ValueError, match="dtype"):
        encode_example("p", s2, s1, label.astype(np.int32), mh, "train", "X")
    with pytest.raises(ValueError, match="--dtype"):
        encode_example("p", s2, s1, label, mh, "train", "X", image_dtype="int8")


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_shard_writer_files_read_by_tf_and_by_iter_records(tmp_path, compression):
    recs = [encode_example(f"p{i}", *_patch(i), "train", "X") for i in range(3)]
    url = str(tmp_path / f"s.tfrecord{'.gz' if compression == 'gzip' else ''}")
    with ShardWriter(url, compression) as w:
        for r in recs:
            w.write(r)
    info = w.close()
    assert info["records"] == 3 and info["bytes"] == (tmp_path / url.split("/")[-1]).stat().st_size
    tf_comp = "GZIP" if compression == "gzip" else ""
    assert [x.numpy() for x in tf.data.TFRecordDataset(url, compression_type=tf_comp)] == recs
    assert list(iter_records(url, compression)) == recs
    # same input -> same bytes and hash (gzip carries no timestamp)
    url2 = str(tmp_path / "again")
    with ShardWriter(url2, compression) as w2:
        for r in recs:
            w2.write(r)
    assert w2.close()["sha256"] == info["sha256"]
    assert open(url, "rb").read() == open(url2, "rb").read()
    if compression == "gzip":
        assert gzip.decompress(open(url, "rb").read()) == b"".join(frame_record(r) for r in recs)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_aborted_writer_leaves_nothing(tmp_path):
    url = tmp_path / "x.tfrecord"
    with pytest.raises(RuntimeError):
        with ShardWriter(str(url)) as w:
            w.write(b"abc")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_corruption_is_detected(tmp_path):
    url = tmp_path / "c.tfrecord"
    with ShardWriter(str(url)) as w:
        w.write(b"hello world" * 10)
        w.write(b"second")
    data = bytearray(url.read_bytes())
    data[20] ^= 0xFF
    url.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC"):
        list(iter_records(str(url)))
    url.write_bytes(bytes(data[:-3]))
    with pytest.raises(ValueError):
        list(iter_records(str(url), verify_crc=False))
