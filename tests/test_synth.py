"""The synthetic reBEN replica honours every FORMAT.md fact, and its content is learnable."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import rasterio
import tifffile

from bigearthnet_beam.schemas import classes as class_table
from bigearthnet_beam.schemas.bands import BAND_BY_NAME, S2_NAMES
from bigearthnet_beam.schemas.failures import FAULT_KINDS
from bigearthnet_beam.schemas.naming import OBJECT_KEYS, REFERENCE_MAP_KEY, object_urls, parse_patch_id
from bigearthnet_beam.synth.generator import generate, patch_origin, tile_origin

ROOT = Path(__file__).resolve().parents[1]
# The official reBEN metadata and CLC table ship inside the package (synth/data, schemas/data);
# their sha256 are those of the files distributed with reBEN v2.0.
OFFICIAL_METADATA = ROOT / "synth" / "data" / "metadata.parquet"
OFFICIAL_CLC = ROOT / "schemas" / "data" / "clc_metadata.json"
OFFICIAL_SHA256 = {
    OFFICIAL_METADATA: "408911df2da7092da9ecc72071972a808ec486ba09f6cb048f7716793d14ded6",
    OFFICIAL_CLC: "8c7f1bac5039f3558530b8ac26b80680a53e1bd0879b74df3c16cc22fff95c5b",
}
N = 16


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = generate(str(out), N, seed=11, workers=2)
    assert summary["patches"] == N
    return out


def _tree_hash(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_bundled_metadata_are_the_official_files():
    for path, digest in OFFICIAL_SHA256.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path


def test_metadata_has_the_official_schema_and_real_rows(sample):
    ours = pq.read_table(sample / "metadata.parquet")
    official = pq.read_table(OFFICIAL_METADATA)
    assert ours.schema.equals(official.schema)
    assert ours.num_rows == N
    ids = ours.column("patch_id").to_pylist()
    assert ids == sorted(ids)
    real = {r["patch_id"]: r for r in official.filter(pc.is_in(official["patch_id"], ours["patch_id"])).to_pylist()}
    for r in ours.to_pylist():
        assert r == real[r["patch_id"]]  # a real row, unchanged


def test_rasters_follow_the_format(sample):
    for r in pq.read_table(sample / "metadata.parquet").to_pylist():
        pid = r["patch_id"]
        urls = object_urls(str(sample), pid, r["s1_name"])
        epsg = parse_patch_id(pid).epsg
        x0, y0 = patch_origin(pid)
        for key in OBJECT_KEYS:
            with rasterio.open(urls[key]) as ds:
                assert ds.count == 1 and ds.crs.to_epsg() == epsg
                t = ds.transform
                assert (t.c, t.f) == (x0, y0)  # upper-left corner of the patch
                assert t.b == 0 and t.d == 0
                assert ds.tags().get("AREA_OR_POINT") == "Area"
                ist = ds.tags(ns="IMAGE_STRUCTURE")
                if key == REFERENCE_MAP_KEY:
                    assert (ds.width, ds.height, ds.dtypes[0], ds.nodata) == (120, 120, "uint16", 0)
                    assert ist.get("COMPRESSION") == "DEFLATE"
                    with tifffile.TiffFile(urls[key]) as tf_:  # rasterio does not report the predictor
                        assert tf_.pages.first.predictor == 2
                    codes = ds.read(1)
                else:
                    band = BAND_BY_NAME[key]
                    size = band.native_size
                    assert (ds.width, ds.height) == (size, size)
                    assert t.a == band.resolution_m and t.e == -band.resolution_m
                    assert "COMPRESSION" not in ist
                    if key in S2_NAMES:
                        assert ds.dtypes[0] == "uint16" and ds.nodata == 0
                        assert ds.read(1).min() >= 1  # 0 is nodata
                    else:
                        assert ds.dtypes[0] == "float32" and ds.nodata is None
                        v = ds.read(1)
                        assert np.isfinite(v).all() and -50 < v.mean() < 30
        # labels derived from the map equal the metadata labels
        derived = {
            class_table.CLASS_NAMES[i]
            for i in np.unique(class_table.map_reference(codes))
            if i != class_table.IGNORE_INDEX
        }
        assert derived == set(r["labels"])
        assert not class_table.unknown_codes(codes)


def test_tile_origin_is_plausible_and_patch_origin_follows_x_y():
    x0, y0 = tile_origin(33, "UUP")
    assert 100_000 <= x0 <= 900_000 and 5_300_000 <= y0 <= 6_300_000  # band U: 48-56 N
    pid = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"
    assert patch_origin(pid) == (x0 + 1200 * 75, y0 - 1200 * 43)
    fx, fy = tile_origin(35, "VNL")  # Finland, band V: 56-64 N
    assert 6_200_000 <= fy <= 7_200_000


def test_coarse_bands_are_area_averages_of_the_10m_signal(sample):
    # The 20 m and 60 m bands of a class-homogeneous block equal the mean of that block:
    # check via the class map: a 6x6 block of one class has B09 close to the class signature.
    from bigearthnet_beam.synth.signatures import signatures

    s2sig, _ = signatures()
    r = pq.read_table(sample / "metadata.parquet").to_pylist()[0]
    urls = object_urls(str(sample), r["patch_id"], r["s1_name"])
    with rasterio.open(urls[REFERENCE_MAP_KEY]) as ds:
        cls = class_table.map_reference(ds.read(1))
    with rasterio.open(urls["B09"]) as ds:
        b09 = ds.read(1).astype(float)
    blocks = cls.reshape(20, 6, 20, 6).transpose(0, 2, 1, 3).reshape(20, 20, 36)
    pure = (blocks == blocks[..., :1]).all(-1) & (blocks[..., 0] != class_table.IGNORE_INDEX)
    assert pure.sum() > 50
    i = S2_NAMES.index("B09")
    expected = s2sig[blocks[..., 0][pure], i]
    rel = np.abs(b09[pure] - expected) / expected
    assert np.median(rel) < 0.08  # texture and noise only


def test_class_table_equals_the_official_clc_metadata():
    off = json.loads(OFFICIAL_CLC.read_text())["clc_data"]
    names_in_order = []
    for row in off:
        if row["name_19"] != "UNLABELED" and row["name_19"] not in names_in_order:
            names_in_order.append(row["name_19"])
    assert set(names_in_order) == set(class_table.CLASS_NAMES) and len(class_table.CLASS_NAMES) == 19
    assert class_table.CLASS_NAMES[0] == "Urban fabric" and class_table.CLASS_NAMES[18] == "Marine waters"
    assert class_table.CLASS_NAMES != tuple(sorted(class_table.CLASS_NAMES))  # canonical, not alphabetical
    mapping = {int(r["code"]): class_table.CLASS_INDEX[r["name_19"]] for r in off if r["name_19"] != "UNLABELED"}
    assert class_table.clc_to_class() == mapping
    expected_map = {
        111: 0,
        112: 0,
        121: 1,
        211: 2,
        212: 2,
        213: 2,
        221: 3,
        222: 3,
        223: 3,
        241: 3,
        231: 4,
        242: 5,
        243: 6,
        244: 7,
        311: 8,
        312: 9,
        313: 10,
        321: 11,
        333: 11,
        322: 12,
        323: 12,
        324: 13,
        331: 14,
        411: 15,
        412: 15,
        421: 16,
        422: 16,
        511: 17,
        512: 17,
        521: 18,
        522: 18,
        523: 18,
    }
    assert class_table.clc_to_class() == expected_map
    assert class_table.no_class_codes() == {0, 122, 123, 124, 131, 132, 133, 141, 142, 332, 334, 335, 423, 999}
    assert class_table.map_reference(np.array([523, 999, 0, 111], dtype=np.uint16)).tolist() == [18, 255, 255, 0]


def test_same_seed_same_bytes_whatever_the_worker_count(sample, tmp_path):
    again = tmp_path / "again"
    generate(str(again), N, seed=11, workers=1)
    assert _tree_hash(again) == _tree_hash(sample)
    other = tmp_path / "other"
    generate(str(other), N, seed=12, workers=2)
    assert _tree_hash(other) != _tree_hash(sample)


def test_every_fault_is_injected_and_listed(tmp_path):
    out = tmp_path / "faulty"
    generate(str(out), 20, seed=5, faults=list(FAULT_KINDS), workers=2)
    faults = json.loads((out / "injected_faults.json").read_text())
    assert sorted(f["kind"] for f in faults) == sorted(FAULT_KINDS)
    meta = {r["patch_id"]: r for r in pq.read_table(out / "metadata.parquet").to_pylist()}
    assert len(meta) == 21  # 20 patches + the missing_files row
    for f in faults:
        r = meta[f["patch_id"]]
        urls = object_urls(str(out), r["patch_id"], r["s1_name"])
        present = {k: Path(u).exists() for k, u in urls.items()}
        kind = f["kind"]
        if kind == "missing_files":
            assert not any(present.values())
        elif kind == "missing_s1_folder":
            assert not Path(urls["VV"]).parent.exists() and all(present[k] for k in S2_NAMES)
        elif kind == "missing_band_file":
            assert sum(not v for v in present.values()) == 1
        elif kind == "zero_byte_file":
            assert sum(Path(u).stat().st_size == 0 for u in urls.values()) == 1
        else:
            assert all(present.values())
        if kind == "wrong_raster_size":
            with rasterio.open(urls["B04"]) as ds:
                assert (ds.width, ds.height) == (100, 100)
        if kind == "s1_nan":
            with rasterio.open(urls["VV"]) as ds:
                assert np.isnan(ds.read(1)).any()
        if kind == "unknown_clc_code":
            with rasterio.open(urls[REFERENCE_MAP_KEY]) as ds:
                assert 777 in ds.read(1)
    with pytest.raises(ValueError, match="valid kinds"):
        generate(str(tmp_path / "x"), 3, faults=["gremlins"])


def test_content_is_learnable_by_a_per_pixel_classifier(sample):
    """Nearest-centroid on the 14 upsampled channels is far above chance (1/19)."""
    from bigearthnet_beam.transforms.patch import decode_patch, fetch_objects

    rows = pq.read_table(sample / "metadata.parquet").to_pylist()
    xs, ys = [], []
    for r in rows:
        p = decode_patch(r["patch_id"], fetch_objects(object_urls(str(sample), r["patch_id"], r["s1_name"])))
        m = p.label != class_table.IGNORE_INDEX
        xs.append(p.pixels[m])
        ys.append(p.label[m])
    x, y = np.concatenate(xs), np.concatenate(ys)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    train = np.arange(len(y)) % 2 == 0
    classes = np.unique(y[train])
    cent = np.stack([z[train & (y == c)].mean(0) for c in classes])
    d = ((z[~train, None, :] - cent[None]) ** 2).sum(-1)
    pred = classes[d.argmin(1)]
    acc = (pred == y[~train]).mean()
    assert acc > 0.7, acc
