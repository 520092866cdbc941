"""Maps that GIS tools show as maps: the class map's colour table, GDAL category names and
attribute table (read back through GDAL's own ``gdalinfo``), QGIS styles beside every map, and
the maps still Cloud-Optimised GeoTIFFs."""

import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from bigearthnet_beam.schemas import classes  # noqa: E402
from bigearthnet_beam.trainer.inference.predictor import Predictor  # noqa: E402
from bigearthnet_beam.trainer.inference.styles import RAMPS, class_pam, class_qml, ramp_qml  # noqa: E402
from tests.gdal_info import gdalinfo  # noqa: E402
from tests.predict_fixtures import ArrayTile, run_tile, tiny_model  # noqa: E402
from tests.test_predict import _cog_problems  # noqa: E402


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    model, info = tiny_model()
    out = tmp_path_factory.mktemp("styled")
    src = ArrayTile.random(260, 250, tuple(info["channels"]), np.random.default_rng(3))
    src.valid[:10] = False
    s = run_tile(Predictor(model, info, batch_size=8, overlap=32), src, out, chunk_size=128)
    return out, src.name, s, info


def test_gdalinfo_shows_the_palette_category_names_and_attribute_table(mapped):
    out, name, _, _ = mapped
    text = gdalinfo(str(out / f"{name}_class.tif"))
    assert "ColorInterp=Palette" in text and "NoData Value=255" in text
    cats = text.split("Categories:")[1].split("Color Table")[0]
    for i, n in enumerate(classes.CLASS_NAMES):
        assert f"{i:3d}: {n}" in cats
        r, g, b = classes.class_colors()[i]
        assert f"\n  {i:3d}: {r},{g},{b},255" in text.split("Color Table")[1]
    rat = ET.fromstring(text[text.index("<GDALRasterAttributeTable") : text.index("</GDALRasterAttributeTable>") + 27])
    assert rat.get("tableType") == "thematic"
    assert [f.findtext("Name") for f in rat.findall("FieldDefn")] == ["Value", "Class", "Red", "Green", "Blue"]
    rows = [[c.text for c in row.findall("F")] for row in rat.findall("Row")]
    assert rows[0] == ["0", classes.CLASS_NAMES[0], *map(str, classes.class_colors()[0])]
    assert [r[0] for r in rows] == [str(i) for i in range(len(classes.CLASS_NAMES))] + ["255"]
    assert rows[-1][1] == "no data"


def test_every_map_gets_a_qgis_style_and_stays_a_cog(mapped):
    out, name, s, _ = mapped
    for layer in ("class", "maxprob", "entropy", "gap"):
        assert f"{name}_{layer}.qml" in s["outputs"]
        assert _cog_problems(str(out / f"{name}_{layer}.tif")) == [], layer
    assert f"{name}_class.tif.aux.xml" in s["outputs"]
    assert sorted(os.listdir(out)) == sorted(s["outputs"])  # nothing else: no temporary file, no stray sidecar


def test_class_style_is_a_paletted_renderer_with_the_class_colours_and_names(mapped):
    out, name, _, info = mapped
    root = ET.parse(out / f"{name}_class.qml").getroot()
    assert root.tag == "qgis"
    r = root.find("pipe/rasterrenderer")
    assert r.get("type") == "paletted" and r.get("band") == "1"
    entries = r.findall("colorPalette/paletteEntry")
    assert len(entries) == len(classes.CLASS_NAMES)
    for i, e in enumerate(entries):
        assert e.get("value") == str(i) and e.get("label") == classes.CLASS_NAMES[i]
        assert e.get("color") == "#{:02x}{:02x}{:02x}".format(*classes.class_colors()[i])
    assert (out / f"{name}_class.qml").read_bytes() == class_qml(info)  # deterministic


@pytest.mark.parametrize("layer", sorted(RAMPS))
def test_probability_layers_get_a_pseudocolour_ramp_over_their_range(mapped, layer):
    out, name, _, _ = mapped
    r = ET.parse(out / f"{name}_{layer}.qml").getroot().find("pipe/rasterrenderer")
    assert r.get("type") == "singlebandpseudocolor"
    shader = r.find("rastershader/colorrampshader")
    lo, hi, stops, _ = RAMPS[layer]
    assert float(shader.get("minimumValue")) == lo and abs(float(shader.get("maximumValue")) - hi) < 1e-5
    items = shader.findall("item")
    assert len(items) == len(stops) and float(items[0].get("value")) == lo
    assert abs(float(items[-1].get("value")) - hi) < 1e-5
    vals = [float(i.get("value")) for i in items]
    assert vals == sorted(vals)
    ramp = shader.find("colorramp/Option")
    opts = {o.get("name"): o.get("value") for o in ramp.findall("Option")}
    assert opts["color1"] == ",".join(map(str, (*stops[0][1], 255))) and len(opts["stops"].split(":")) == len(stops) - 2


def test_names_with_markup_characters_are_escaped():
    info = {"classes": ["A & B <c>"], "class_colors": [[1, 2, 3]]}
    for blob in (class_pam(info), class_qml(info), ramp_qml("gap")):
        ET.fromstring(blob.split(b"\n", 1)[1] if blob.startswith(b"<!DOCTYPE") else blob)  # well-formed
    assert b"A &amp; B &lt;c&gt;" in class_qml(info)
