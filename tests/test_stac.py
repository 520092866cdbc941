"""STAC metadata of the maps: an item per mapped tile with the proj, raster and classification
extensions and every output as an asset; a collection for ``--benchmark``. Read back with pystac,
every link and asset href resolving to a file."""

import datetime as dt
import os

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
pystac = pytest.importorskip("pystac")

from pystac.extensions.classification import ClassificationExtension  # noqa: E402
from pystac.extensions.projection import ProjectionExtension  # noqa: E402
from pystac.extensions.raster import RasterExtension  # noqa: E402

from bigearthnet_beam.schemas import classes  # noqa: E402
from bigearthnet_beam.trainer.inference.predictor import Predictor  # noqa: E402
from bigearthnet_beam.trainer.inference.stac import COLLECTION, acquisition_time, item_name  # noqa: E402
from tests.predict_fixtures import ArrayTile, run_tile, save_tiny_model, tiny_model  # noqa: E402


def _resolves(obj) -> None:
    """Every asset href and every link (but self) of a STAC object points at an existing file."""
    for key, a in getattr(obj, "assets", {}).items():
        assert os.path.isfile(a.get_absolute_href()), (obj.id, key, a.href)
    for link in obj.links:
        if link.rel != "self":
            assert os.path.isfile(link.get_absolute_href()), (obj.id, link.rel, link.href)


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    model, info = tiny_model()
    out = tmp_path_factory.mktemp("stac")
    src = ArrayTile.random(250, 260, tuple(info["channels"]), np.random.default_rng(4))
    src.valid[:, :8] = False
    s = run_tile(Predictor(model, info, batch_size=8, overlap=32), src, out, chunk_size=128, save_probs=True)
    return out, src, s


def test_a_tile_item_reads_back_with_its_extensions_and_assets(mapped):
    out, src, s = mapped
    assert item_name(src.name) in s["outputs"] and (out / item_name(src.name)).is_file()
    item = pystac.Item.from_file(str(out / item_name(src.name)))
    assert item.id == src.name and item.datetime == dt.datetime(2024, 7, 15, 10, 10, 31, tzinfo=dt.timezone.utc)
    for ext in (ProjectionExtension, RasterExtension, ClassificationExtension):
        assert ext.has_extension(item), ext
    proj = ProjectionExtension.ext(item)
    assert proj.code == "EPSG:32632" and proj.shape == [250, 260]
    assert proj.transform == [10.0, 0.0, 699960.0, 0.0, -10.0, 5000040.0]
    # the footprint in WGS84: zone 32, 5,000 km north: about 45 N, 11.5 E
    w, south, e, n = item.bbox
    assert 11 < w < e < 12 and 44.9 < south < n < 45.2
    assert item.geometry["type"] == "Polygon" and len(item.geometry["coordinates"][0]) == 41
    # every output but the item itself is an asset, with a role
    hrefs = {os.path.basename(a.href) for a in item.assets.values()}
    assert hrefs == set(s["outputs"]) - {item_name(src.name)} | {"preview.png"}
    roles = {k: a.roles for k, a in item.assets.items()}
    assert roles["class"] == roles["maxprob"] == roles["probs"] == ["data"]
    assert roles["class_style"] == ["style"] and roles["summary"] == ["metadata"] and "thumbnail" in roles["preview"]
    assert roles["class_gdal_pam"] == ["metadata"]
    _resolves(item)


def test_raster_and_classification_fields_describe_the_files(mapped):
    out, src, s = mapped
    item = pystac.Item.from_file(str(out / item_name(src.name)))
    cls = item.assets["class"]
    assert cls.media_type == pystac.MediaType.COG
    (band,) = RasterExtension.ext(cls).bands
    assert band.data_type == "uint8" and band.nodata == 255 and band.spatial_resolution == 10.0
    probs = RasterExtension.ext(item.assets["probs"]).bands
    assert len(probs) == classes.NUM_CLASSES and probs[0].scale == pytest.approx(1 / 254) and probs[0].nodata == 255
    assert RasterExtension.ext(item.assets["entropy"]).bands[0].nodata == "nan"
    got = ClassificationExtension.ext(cls).classes
    assert [c.value for c in got] == list(range(classes.NUM_CLASSES)) + [255]
    assert got[-1].nodata is True
    with rasterio.open(out / f"{src.name}_class.tif") as ds:
        ids, counts = np.unique(ds.read(1), return_counts=True)
        cmap = ds.colormap(1)
    tally = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    for c in got[:-1]:
        assert c.description == classes.CLASS_NAMES[c.value]
        assert c.color_hint == "{:02X}{:02X}{:02X}".format(*cmap[c.value][:3])
        assert c.count == tally.get(c.value, 0)


def test_acquisition_time_comes_from_the_tile_name():
    assert acquisition_time("T33UUP_20170613T101031") == dt.datetime(2017, 6, 13, 10, 10, 31, tzinfo=dt.timezone.utc)
    assert acquisition_time("T33UUP_20170613") == dt.datetime(2017, 6, 13, tzinfo=dt.timezone.utc)
    assert acquisition_time("my_tile") is None and acquisition_time("T33UUP_20171399") is None


@pytest.mark.slow
def test_benchmark_writes_a_collection_linking_every_tiles_item(tmp_path):
    from bigearthnet_beam.synth.tiles import make_tile, tile_ids
    from bigearthnet_beam.trainer.inference.cli import run

    d = tmp_path / "tiles"
    names = [
        make_tile(str(d), size=150 + 30 * i, seed=i, tile=tid, layout=("geotiff", "safe")[i])["name"]
        for i, tid in enumerate(tile_ids(2))
    ]
    model = save_tiny_model(str(tmp_path / "tiny.keras"))
    out = tmp_path / "bench"
    assert run(["--model", model, "--input_dir", str(d), "--out", str(out), "--benchmark", "--chunk_size", "128"]) == 0
    coll = pystac.Collection.from_file(str(out / COLLECTION))
    items = sorted(coll.get_items(), key=lambda i: i.id)
    assert [i.id for i in items] == sorted(names)
    _resolves(coll)
    for it in items:
        _resolves(it)
        assert it.collection_id == coll.id
        assert it.get_single_link("collection").get_absolute_href() == str(out / COLLECTION)
        assert ClassificationExtension.has_extension(it) and "class" in it.assets
    ((w, s, e, n),) = coll.extent.spatial.bboxes
    assert all(w <= i.bbox[0] and s <= i.bbox[1] and i.bbox[2] <= e and i.bbox[3] <= n for i in items)
    assert coll.extent.temporal.intervals[0][0] == min(i.datetime for i in items)
