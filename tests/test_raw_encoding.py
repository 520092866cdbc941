"""``convert --encoding raw``: lossless native-resolution records, and readers (tf.data, PyTorch)
that turn them into the same tensors as the normalised encoding of the same run, patch by patch.

One synthetic replica (with dead letters) converted three ways through the real CLI: normalised
float32 (the default), raw, raw + gzip; and once more raw from the official-style archives.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from rasterio.io import MemoryFile

from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.schemas import bands, manifest, tfrecord
from bigearthnet_beam.schemas.naming import object_urls
from bigearthnet_beam.transforms import raw_decode
from bigearthnet_beam.transforms.encode import decode_example, encode_raw_example, iter_records
from bigearthnet_beam.transforms.normalize import NormParams, normalize
from bigearthnet_beam.transforms.resample import upsample
from tests.helpers import IN_PROCESS

N = 24
TOL = 1e-3  # normalised units


@pytest.fixture(scope="module")
def reben(tmp_path_factory):
    root = tmp_path_factory.mktemp("reben")
    argv = ["synth", "--out", str(root), "--n", str(N), "--seed", "5", "--faults", "s1_nan,wrong_crs", "--archives"]
    assert main(argv + ["--workers", "1"]) == 0
    return root


def convert(reben, out, *extra):
    argv = ["convert", "--meta", str(reben / "metadata.parquet"), "--out", str(out), "--shard_size", "5"]
    return main(argv + ["--max_failure_fraction", "1", "--workers", "1", *extra])


@pytest.fixture(scope="module")
def runs(reben, tmp_path_factory):
    # in one process (Beam's in-memory runner): the bytes of the worker processes without their
    # start-up (tests/test_byte_identity.py checks that both modes write the same bytes)
    base = tmp_path_factory.mktemp("runs")
    assert convert(reben, base / "norm", *IN_PROCESS) == 0
    assert convert(reben, base / "raw", "--encoding", "raw", *IN_PROCESS) == 0
    return base


def _man(path):
    return json.loads((path / manifest.MANIFEST).read_text())


def _examples(path, dtype):
    man = _man(path)
    out = {}
    for info in man["splits"].values():
        for sh in info["shards"]:
            for rec in iter_records(str(path / sh["path"]), man["compression"]):
                ex = decode_example(rec, dtype)
                out[ex[tfrecord.PATCH_ID]] = ex
    return out


# --------------------------------------------------------------------------- the format


def test_raw_feature_spec_is_a_third_of_float32():
    raw = sum(int(np.prod(f.shape)) * np.dtype(f.dtype).itemsize for f in tfrecord.features("raw") if f.kind == "raw")
    assert raw == 4 * 120 * 120 * 2 + 6 * 60 * 60 * 2 + 2 * 20 * 20 * 2 + 2 * 120 * 120 * 4 + 120 * 120
    assert {f.name for f in tfrecord.features("raw")} >= set(tfrecord.RAW_IMAGE_FEATURES)
    assert [n for _, _, names in tfrecord.S2_GROUPS for n in names] != list(bands.S2_NAMES)  # reordered by group
    assert sorted(n for _, _, names in tfrecord.S2_GROUPS for n in names) == sorted(bands.S2_NAMES)


def test_encode_raw_example_parses_with_tensorflow_and_refuses_wrong_dtypes():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = {
        f.name: rng.integers(1, 20000, f.shape).astype(f.dtype)
        if f.dtype == "uint16"
        else rng.normal(-12, 5, f.shape).astype(np.float32)
        for f in tfrecord.features("raw")
        if f.name in tfrecord.RAW_IMAGE_FEATURES
    }
    label = rng.integers(0, 19, (120, 120)).astype(np.uint8)
    mh = np.zeros(19, np.int64)
    data = encode_raw_example("S2A_x", images, label, mh, "train", "Portugal")
    tf_ex = tfrecord.decode_parsed(tf.io.parse_single_example(data, tfrecord.parsing_spec("raw")), "raw")
    ours = decode_example(data, "raw")
    for name, arr in images.items():
        np.testing.assert_array_equal(tf_ex[name].numpy(), arr)
        np.testing.assert_array_equal(ours[name], arr)
    bad = dict(images, s2_20m=images["s2_20m"].astype(np.float32))
    with pytest.raises(ValueError, match="s2_20m.*dtype uint16"):
        encode_raw_example("S2A_x", bad, label, mh, "train", "Portugal")
    with pytest.raises(ValueError, match="lacks image feature 's1_db'"):
        encode_raw_example("S2A_x", {k: v for k, v in images.items() if k != "s1_db"}, label, mh, "train", "P")


@pytest.mark.slow
def test_manifest_records_the_encoding_and_refuses_unknown_ones(runs):
    norm, raw = _man(runs / "norm"), _man(runs / "raw")
    assert "encoding" not in norm and norm["image_dtype"] == "float32"
    assert raw["encoding"] == "raw" and raw["image_dtype"] == "raw" and raw["options"]["encoding"] == "raw"
    assert [f["name"] for f in raw["features"]] == [f.name for f in tfrecord.features("raw")]
    future = dict(raw, encoding="jpeg-xl")
    with pytest.raises(manifest.ManifestError, match="encoding 'jpeg-xl', which this version .* cannot read"):
        manifest.from_dict(future)
    with pytest.raises(manifest.ManifestError, match="contradicts encoding"):
        manifest.from_dict(dict(raw, image_dtype="float32"))
    with pytest.raises(manifest.ManifestError, match="contradicts encoding"):
        manifest.from_dict({k: v for k, v in raw.items() if k != "encoding"})
    assert manifest.from_dict(raw).to_dict()["encoding"] == "raw"
    assert "encoding" not in manifest.from_dict(norm).to_dict()


@pytest.mark.slow
def test_readers_refuse_an_unknown_encoding_in_one_line(runs, tmp_path):
    import shutil

    from bigearthnet_beam.trainer import data
    from bigearthnet_beam.trainer.torch_data import BenDataset

    future = tmp_path / "future"
    shutil.copytree(runs / "raw", future)
    man = _man(future)
    man["encoding"] = "zstd-planes"
    (future / manifest.MANIFEST).write_text(json.dumps(man))
    for read in (data.open_dataset, lambda p: BenDataset(p, "train")):
        with pytest.raises(manifest.ManifestError, match="encoding 'zstd-planes'.*cannot read") as e:
            read(str(future))
        assert "\n" not in str(e.value)
    assert main(["verify", str(future)]) != 0


def test_dtype_with_raw_encoding_is_a_usage_error(reben, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        convert(reben, tmp_path / "o", "--encoding", "raw", "--dtype", "float16")
    assert e.value.code == 2
    assert "--dtype applies to the normalized encoding" in capsys.readouterr().err


# --------------------------------------------------------------------------- the conversion


@pytest.mark.slow
def test_raw_run_has_the_statistics_and_dead_letters_of_the_normalised_run(runs):
    norm, raw = _man(runs / "norm"), _man(runs / "raw")
    assert raw["statistics"] == norm["statistics"]
    assert (runs / "raw" / "failures.jsonl").read_bytes() == (runs / "norm" / "failures.jsonl").read_bytes()
    assert raw["failures"]["total"] == 2
    for split in norm["splits"]:
        a, b = norm["splits"][split], raw["splits"][split]
        assert (a["written"], a["class_pixel_counts"]) == (b["written"], b["class_pixel_counts"])


@pytest.mark.slow
def test_raw_records_are_lossless_and_under_320_kb(reben, runs):
    man = _man(runs / "raw")
    written = sum(s["written"] for s in man["splits"].values())
    total = sum(sh["bytes"] for s in man["splits"].values() for sh in s["shards"])
    assert total / written <= 320_000
    exs = _examples(runs / "raw", "raw")
    assert len(exs) == written
    for pid in sorted(exs)[:3]:
        urls = object_urls(str(reben), pid, _s1_id(reben, pid))
        ex = exs[pid]
        for feat, _, names in tfrecord.S2_GROUPS:
            want = np.stack([_read(urls[n]) for n in names])
            assert want.dtype == np.uint16
            np.testing.assert_array_equal(ex[feat], want)
        want = np.stack([_read(urls[n]) for n in bands.S1_NAMES])
        assert np.array_equal(ex[tfrecord.S1_DB].view(np.uint32), want.astype(np.float32).view(np.uint32))


def _s1_id(reben, pid):
    import pyarrow.parquet as pq

    t = pq.read_table(reben / "metadata.parquet").to_pylist()
    return next(r["s1_name"] for r in t if r["patch_id"] == pid)


def _read(url):
    with open(url, "rb") as fh, MemoryFile(fh.read()) as mem, mem.open() as src:
        return src.read(1)


@pytest.mark.slow  # two more conversions (~10 s)
def test_gzip_raw_and_the_archive_route_write_the_same_records(reben, runs, tmp_path):
    assert convert(reben, tmp_path / "gz", "--encoding", "raw", "--compression", "gzip") == 0
    assert convert(reben, tmp_path / "arch", "--encoding", "raw", "--archives", str(reben)) == 0
    plain = _examples(runs / "raw", "raw")
    for other in ("gz", "arch"):
        got = _examples(tmp_path / other, "raw")
        assert sorted(got) == sorted(plain)
        for pid, ex in got.items():
            for name in tfrecord.RAW_IMAGE_FEATURES + (tfrecord.LABEL,):
                assert ex[name].tobytes() == plain[pid][name].tobytes()
    arch, raw = _man(tmp_path / "arch"), _man(runs / "raw")
    assert [sh["sha256"] for s in arch["splits"].values() for sh in s["shards"]] == [
        sh["sha256"] for s in raw["splits"].values() for sh in s["shards"]
    ]
    gz = _man(tmp_path / "gz")
    gz_bytes = sum(sh["bytes"] for s in gz["splits"].values() for sh in s["shards"])
    raw_bytes = sum(sh["bytes"] for s in raw["splits"].values() for sh in s["shards"])
    assert gz_bytes < raw_bytes
    assert main(["verify", str(tmp_path / "gz")]) == 0


# --------------------------------------------------------------------------- the readers


@pytest.fixture(scope="module")
def normalised(runs):
    return _examples(runs / "norm", "float32")


def _full(ex):
    return np.concatenate([ex[tfrecord.S2], ex[tfrecord.S1]], -1)


@pytest.mark.slow
def test_tf_data_reads_raw_into_the_normalised_tensors_patch_by_patch(runs, normalised):
    from bigearthnet_beam.trainer import data

    ds = data.open_dataset(str(runs / "raw"))
    assert ds.raw
    worst, seen = 0.0, 0
    for split in ds.manifest["splits"]:
        for mods in ("s2,s1", "s2", "s1"):
            idx = [bands.ALL_NAMES.index(c) for c in bands.channels_for(mods)]
            for x, y, ids in data.make_dataset(ds, split, batch_size=4, modalities=mods, with_ids=True):
                for i, pid in enumerate(ids.numpy()):
                    ex = normalised[pid.decode()]
                    diff = float(np.abs(x[i].numpy() - _full(ex)[..., idx]).max())
                    assert diff <= TOL, (pid, mods, diff)
                    np.testing.assert_array_equal(y["seg"][i].numpy(), ex[tfrecord.LABEL])
                    worst, seen = max(worst, diff), seen + 1
    assert seen == 3 * len(normalised)
    print(f"tf.data raw vs normalised: max |diff| {worst:.2e} over {len(normalised)} patches")


@pytest.mark.slow
def test_torch_reads_raw_into_the_normalised_tensors_patch_by_patch(runs, normalised):
    from bigearthnet_beam.trainer.torch_data import BenDataset

    worst, seen = 0.0, 0
    for split in _man(runs / "raw")["splits"]:
        for s in BenDataset(str(runs / "raw"), split, with_ids=True):
            want = _full(normalised[s["patch_id"]]).transpose(2, 0, 1)
            diff = float(np.abs(s["image"].numpy() - want).max())
            assert diff <= TOL and s["image"].dtype.is_floating_point
            np.testing.assert_array_equal(s["mask"].numpy(), normalised[s["patch_id"]][tfrecord.LABEL])
            worst, seen = max(worst, diff), seen + 1
    assert seen == len(normalised)
    print(f"torch raw vs normalised: max |diff| {worst:.2e}")


@pytest.mark.slow
def test_torch_decodes_whole_batches_into_the_per_sample_tensors(runs, normalised):
    """``decode_on="batch"``: samples carry the stored bands (S2 as int16 bits), the collated batch
    is decoded by ``ds.batch_decoder`` into the per-sample decoding's tensors, in worker processes too."""
    import torch
    from torch.utils.data import DataLoader

    from bigearthnet_beam.trainer.torch_data import BenDataset

    root = str(runs / "raw")
    for opts in ({}, dict(resampling="nearest", statistics="none", band_subset=("B12", "VH", "B01", "B04"))):
        seen = 0
        for split in _man(runs / "raw")["splits"]:
            per_sample = {s["patch_id"]: s["image"].numpy() for s in BenDataset(root, split, with_ids=True, **opts)}
            ds = BenDataset(root, split, with_ids=True, decode_on="batch", **opts)
            for batch in DataLoader(ds, batch_size=4, num_workers=2 if split == "train" else 0):
                assert "image" not in batch and batch["raw"][tfrecord.S2_20M].dtype == torch.int16
                assert batch["raw"][tfrecord.S1_DB].dtype == torch.float32
                batch = ds.batch_decoder(batch, "cpu")
                assert "raw" not in batch and batch["image"].shape[1:] == (len(ds.channels), 120, 120)
                for i, pid in enumerate(batch["patch_id"]):
                    want = per_sample[pid]
                    scale = max(1.0, float(np.abs(want).max()))  # raw DN (statistics "none"): relative
                    assert np.abs(batch["image"][i].numpy() - want).max() / scale <= 1e-6, pid
                    if not opts:
                        assert (
                            np.abs(batch["image"][i].numpy() - _full(normalised[pid]).transpose(2, 0, 1)).max() <= TOL
                        )
                        np.testing.assert_array_equal(batch["mask"][i].numpy(), normalised[pid][tfrecord.LABEL])
                    seen += 1
        assert seen == len(normalised)


@pytest.mark.slow
def test_batch_decoding_keeps_every_uint16_value_and_refuses_what_it_cannot_do(runs):
    import torch
    from torch.utils.data import default_collate

    from bigearthnet_beam.trainer import torch_raw
    from bigearthnet_beam.trainer.torch_data import BenDataset

    raw = BenDataset(str(runs / "raw"), "test", decode_on="batch", resampling="nearest", statistics="none")
    ex = next(iter(_examples(runs / "raw", "raw").values()))
    ex = dict(ex, **{tfrecord.S2_10M: ex[tfrecord.S2_10M].copy()})
    ex[tfrecord.S2_10M][0, 5, 7], ex[tfrecord.S2_10M][1, 0, 0] = 65535, 32768  # int16 would read -1, -32768
    batch = raw.batch_decoder({"raw": default_collate([torch_raw.raw_sample(ex, raw.raw_spec)] * 2)})
    names = tfrecord.S2_GROUPS[0][2]
    assert batch["image"][1, raw.channels.index(names[0]), 5, 7].item() == 65535.0
    assert batch["image"][0, raw.channels.index(names[1]), 0, 0].item() == 32768.0
    with pytest.raises(ValueError, match="needs a raw-encoded dataset"):
        BenDataset(str(runs / "norm"), "train", decode_on="batch")
    with pytest.raises(ValueError, match='decode_on must be "sample" or "batch"'):
        BenDataset(str(runs / "raw"), "train", decode_on="gpu")
    with pytest.raises(ValueError, match='no "raw" entry'):
        raw.batch_decoder({"image": torch.zeros(1)})


def _reference(ex, channels, method, norm: NormParams | None):
    """The image of a raw example computed with the conversion's own functions (upsample, normalize)."""
    cols = []
    for c in channels:
        for feat, _, names in tfrecord.S2_GROUPS + ((tfrecord.S1_DB, 10, bands.S1_NAMES),):
            if c in names:
                a = ex[feat][names.index(c)]
                cols.append(upsample(a, 120 // a.shape[0], method))
    img = np.stack(cols, -1).astype(np.float32)
    return img if norm is None else normalize(img, norm)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nearest", "cubic"])
def test_read_time_resampling_statistics_and_band_subset(runs, method):
    from bigearthnet_beam.trainer import data
    from bigearthnet_beam.trainer.torch_data import BenDataset

    ds = data.open_dataset(str(runs / "raw"))
    raw = _examples(runs / "raw", "raw")
    subset = ("B12", "VH", "B01", "B04")  # three resolutions and S1, out of order
    authors = {c: (bands.BAND_BY_NAME[c].published_mean + 1.5, 2 * bands.BAND_BY_NAME[c].published_std) for c in subset}
    manifest_norm = NormParams.from_dict(ds.manifest["statistics"]["normalization"]).select(subset)
    cases = [
        (None, manifest_norm),
        ("none", None),
        (authors, raw_decode.user_statistics(authors, subset)),
        ("published", raw_decode.user_statistics(raw_decode.published_statistics(), subset)),
    ]
    for stats, norm in cases:
        opts = dict(band_subset=subset, resampling=method, statistics=stats)
        seen = 0
        for x, _, ids in data.make_dataset(ds, "validation", batch_size=3, with_ids=True, **opts):
            for i, pid in enumerate(ids.numpy()):
                want = _reference(raw[pid.decode()], subset, method, norm)
                scale = 1.0 if norm is not None else np.abs(want).max()  # raw DN: relative
                assert np.abs(x[i].numpy() - want).max() / scale <= TOL
                seen += 1
        for s in BenDataset(str(runs / "raw"), "validation", with_ids=True, **opts):
            want = _reference(raw[s["patch_id"]], subset, method, norm).transpose(2, 0, 1)
            scale = 1.0 if norm is not None else np.abs(want).max()
            assert np.abs(s["image"].numpy() - want).max() / scale <= TOL
            seen += 1
        assert seen == 2 * ds.records("validation")


@pytest.mark.slow
def test_read_time_options_are_refused_on_normalised_data_and_checked(runs):
    from bigearthnet_beam.trainer import data
    from bigearthnet_beam.trainer.torch_data import BenDataset

    norm = data.open_dataset(str(runs / "norm"))
    with pytest.raises(ValueError, match="need a raw-encoded dataset"):
        data.make_dataset(norm, "train", resampling="nearest")
    with pytest.raises(ValueError, match="need a raw-encoded dataset"):
        BenDataset(str(runs / "norm"), "train", statistics="published")
    raw = data.open_dataset(str(runs / "raw"))
    with pytest.raises(ValueError, match="resampling must be one of"):
        data.make_dataset(raw, "train", resampling="lanczos")
    with pytest.raises(ValueError, match="unknown band"):
        data.make_dataset(raw, "train", band_subset=("B10",))
    with pytest.raises(ValueError, match="no mean/std for band.*VV"):
        data.make_dataset(raw, "train", statistics={"B02": (1.0, 2.0)}, band_subset=("B02", "VV"))
    with pytest.raises(ValueError, match="standard deviations positive"):
        BenDataset(str(runs / "raw"), "train", statistics={b: (0.0, 0.0) for b in bands.ALL_NAMES})


# --------------------------------------------------------------------------- verify, report, TFDS


@pytest.mark.slow
def test_verify_report_and_tfds_handle_raw(runs, tmp_path):
    import shutil

    import tensorflow_datasets as tfds

    raw = runs / "raw"
    assert main(["verify", str(raw)]) == 0
    assert (raw / "report.html").is_file()
    for png in sorted((runs / "norm" / "report").glob("sample-*.png")):  # same samples, same pictures
        assert (raw / "report" / png.name).read_bytes() == png.read_bytes()
    info = json.loads((raw / "dataset_info.json").read_text())
    assert "raw Sentinel-2 bands" in info["description"]
    builder = tfds.builder_from_directory(str(raw))
    assert builder.info.metadata["encoding"] == "raw"
    n = 0
    exs = _examples(raw, "raw")
    for ex in builder.as_dataset(split="validation"):
        want = exs[ex[tfrecord.PATCH_ID].numpy().decode()]
        for name in tfrecord.RAW_IMAGE_FEATURES:
            np.testing.assert_array_equal(ex[name].numpy(), want[name])
        n += 1
    assert n == _man(raw)["splits"]["validation"]["written"]
    # a raw record whose S2 holds nodata is found by verify
    bad = tmp_path / "bad"
    shutil.copytree(raw, bad)
    man = _man(bad)
    sh = man["splits"]["validation"]["shards"][0]
    recs = list(iter_records(str(bad / sh["path"])))
    ex = decode_example(recs[0], "raw")
    images = {k: np.array(ex[k]) for k in tfrecord.RAW_IMAGE_FEATURES}
    images[tfrecord.S2_60M][0, 0, 0] = 0
    from bigearthnet_beam.transforms.encode import ShardWriter

    with ShardWriter(str(bad / sh["path"])) as w:
        w.write(
            encode_raw_example(
                ex[tfrecord.PATCH_ID], images, ex[tfrecord.LABEL], ex[tfrecord.MULTI_HOT], "validation", ex["country"]
            )
        )
        for r in recs[1:]:
            w.write(r)
    from bigearthnet_beam.beam_pipeline.verify import verify

    problems = verify(str(bad), tfx="off")
    assert any("s2_60m holds nodata (0) values" in p for p in problems)


# --------------------------------------------------------------------------- training on raw data


@pytest.mark.slow
def test_train_evaluate_export_predict_on_a_raw_dataset(runs, tmp_path):
    from bigearthnet_beam.synth.tiles import make_tile
    from bigearthnet_beam.trainer import model as unet_model

    save = tmp_path / "m.keras"
    argv = ["train", "--data", str(runs / "raw"), "--epochs", "1", "--batch", "4", "--save", str(save)]
    argv += ["--width", "4", "--steps_per_epoch", "2", "--no_tensorboard", "--modalities", "s2"]
    assert main(argv + ["--export", str(tmp_path / "serving")]) == 0
    _, info = unet_model.load_model(str(save))
    assert info["image_dtype"] == "raw" and info["channels"] == list(bands.S2_NAMES)
    assert (tmp_path / "serving" / "saved_model.pb").is_file()
    metrics = {}
    for name in ("raw", "norm"):  # the same model on the raw and the normalised run's records
        ev = tmp_path / f"ev-{name}"
        argv = ["evaluate", "--model", str(save), "--data", str(runs / name), "--split", "validation"]
        assert main(argv + ["--out", str(ev)]) == 0
        metrics[name] = json.loads((ev / "metrics.json").read_text())
    assert metrics["raw"]["patches"] == _man(runs / "raw")["splits"]["validation"]["written"]
    assert metrics["raw"]["miou"] == pytest.approx(metrics["norm"]["miou"], abs=1e-6)
    t = make_tile(str(tmp_path / "tiles"), size=180, seed=3, layout="geotiff")
    out = tmp_path / "pred"
    argv = ["predict", "--model", str(save), "--tile", t["path"], "--out", str(out), "--chunk_size", "128"]
    assert main(argv) == 0
    summary = json.loads((out / f"{t['name']}_summary.json").read_text())
    assert summary["pixels"] == 180 * 180 and summary["channels"] == list(bands.S2_NAMES)
