"""What GIS software needs to show the maps as maps, not grey numbers (plain Python, no GDAL call).

Beside ``<tile>_class.tif`` (whose colour table is embedded by ``LayerWriter.open``):

    <tile>_class.tif.aux.xml   GDAL's PAM sidecar: the category names and a thematic raster
                               attribute table (value, class, red, green, blue); ``gdalinfo``
                               lists them under "Categories:" and the RAT, QGIS and ArcGIS read it
    <tile>_class.qml           QGIS style: a paletted renderer with the class colours and names

and beside each of ``maxprob``, ``entropy`` and ``gap`` a QGIS style with a pseudocolour ramp
(``<tile>_<layer>.qml``). QGIS loads ``<name>.qml`` beside ``<name>.tif`` as the layer's default
style. Category names and RATs cannot be stored inside a (Cloud-Optimised) GeoTIFF by GDAL: it keeps
them in the PAM sidecar, which GDAL also looks for beside a ``/vsicurl/`` or ``/vsis3/`` file.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from bigearthnet_beam.trainer.inference.layers import NODATA_CLASS, NODATA_COLOR

QGIS_VERSION = "3.28.0-Firenze"  # the style format of QGIS 3.x (3.28 LTR and later read it)
NODATA_NAME = "no data"

# Colour ramps (matplotlib's viridis and magma, sampled): (position 0..1, (r, g, b)).
VIRIDIS = (
    (0.0, (68, 1, 84)),
    (0.25, (59, 82, 139)),
    (0.5, (33, 145, 140)),
    (0.75, (94, 201, 98)),
    (1.0, (253, 231, 37)),
)
MAGMA = (
    (0.0, (0, 0, 4)),
    (0.2, (59, 15, 112)),
    (0.4, (140, 41, 129)),
    (0.6, (222, 73, 104)),
    (0.8, (254, 159, 109)),
    (1.0, (252, 253, 191)),
)
# layer -> (minimum, maximum, ramp, what the colours mean)
RAMPS = {
    "maxprob": (0.0, 1.0, VIRIDIS, "max probability: dark = unsure, yellow = sure"),
    "entropy": (0.0, math.log(19), MAGMA, "entropy in nats: dark = sure, light = unsure (max ln 19)"),
    "gap": (0.0, 1.0, VIRIDIS, "top-1 minus top-2: dark = a tie, yellow = clear"),
}


def class_entries(info: dict) -> list[tuple[int, str, tuple[int, int, int]]]:
    """(value, name, rgb) of every class id and of no data (255)."""
    colors = info.get("class_colors") or [[128, 128, 128]] * len(info["classes"])
    out = [(i, str(n), tuple(int(v) for v in colors[i][:3])) for i, n in enumerate(info["classes"])]
    return out + [(NODATA_CLASS, NODATA_NAME, tuple(NODATA_COLOR))]


def _xml(root: ET.Element, doctype: str = "") -> bytes:
    ET.indent(root, space="  ")
    return (doctype + ET.tostring(root, encoding="unicode") + "\n").encode()


def class_pam(info: dict) -> bytes:
    """The ``.aux.xml`` of the class map: category names (value = index) and a thematic RAT."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    cats = ET.SubElement(band, "CategoryNames")
    for _, name, _ in class_entries(info)[:-1]:  # GDAL's list is indexed by value: 0..18 (255 is the nodata value)
        ET.SubElement(cats, "Category").text = name
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    # GDAL field types: 0 integer, 2 string; usages: 5 min-max (the value), 2 name, 6/7/8 red/green/blue
    for i, (name, typ, usage) in enumerate(
        (("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8))
    ):
        f = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(f, "Name").text = name
        ET.SubElement(f, "Type").text = str(typ)
        ET.SubElement(f, "Usage").text = str(usage)
    for row, (value, name, rgb) in enumerate(class_entries(info)):
        r = ET.SubElement(rat, "Row", index=str(row))
        for v in (value, name, *rgb):
            ET.SubElement(r, "F").text = str(v)
    return _xml(root)


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _qgis(renderer: ET.Element) -> bytes:
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="Symbology")
    pipe = ET.SubElement(root, "pipe")
    pipe.append(renderer)
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", invertColors="0", colorizeOn="0")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    return _xml(root, "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n")


def class_qml(info: dict) -> bytes:
    """QGIS style of the class map: a paletted renderer, one entry per class (no data transparent)."""
    r = ET.Element("rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1", nodataColor="")
    ET.SubElement(r, "rasterTransparency")
    pal = ET.SubElement(r, "colorPalette")
    for value, name, rgb in class_entries(info)[:-1]:
        ET.SubElement(pal, "paletteEntry", value=str(value), color=_hex(rgb), alpha="255", label=name)
    return _qgis(r)


def ramp_qml(layer: str) -> bytes:
    """QGIS style of a probability-derived layer (``RAMPS``): an interpolated pseudocolour ramp."""
    lo, hi, stops, _ = RAMPS[layer]
    lo_s, hi_s = f"{lo:g}", f"{hi:.6g}"
    r = ET.Element(
        "rasterrenderer",
        type="singlebandpseudocolor",
        band="1",
        opacity="1",
        alphaBand="-1",
        classificationMin=lo_s,
        classificationMax=hi_s,
        nodataColor="",
    )
    ET.SubElement(r, "rasterTransparency")
    shader = ET.SubElement(ET.SubElement(r, "rastershader"), "colorrampshader")
    for k, v in (
        ("colorRampType", "INTERPOLATED"),
        ("classificationMode", "1"),
        ("clip", "0"),
        ("minimumValue", lo_s),
        ("maximumValue", hi_s),
        ("labelPrecision", "2"),
    ):
        shader.set(k, v)
    ramp = ET.SubElement(shader, "colorramp", type="gradient", name="[source]")
    opts = ET.SubElement(ramp, "Option", type="Map")
    inner = ":".join(f"{p:g};{c[0]},{c[1]},{c[2]},255" for p, c in stops[1:-1])  # QGIS: "pos;r,g,b,a:..."
    for name, value in (
        ("color1", ",".join(map(str, (*stops[0][1], 255)))),
        ("color2", ",".join(map(str, (*stops[-1][1], 255)))),
        ("discrete", "0"),
        ("rampType", "gradient"),
        ("stops", inner),
    ):
        ET.SubElement(opts, "Option", type="QString", name=name, value=value)
    for p, c in stops:
        v = lo + p * (hi - lo)
        ET.SubElement(shader, "item", alpha="255", value=f"{v:.6g}", label=f"{v:.2f}", color=_hex(c))
    return _qgis(r)


def style_files(stem: str, info: dict, layers=("class", "maxprob", "entropy", "gap")) -> dict[str, bytes]:
    """File name -> bytes of the styles of a tile's maps (module docstring)."""
    out: dict[str, bytes] = {}
    if "class" in layers:
        out[f"{stem}_class.tif.aux.xml"] = class_pam(info)
        out[f"{stem}_class.qml"] = class_qml(info)
    for layer in layers:
        if layer in RAMPS:
            out[f"{stem}_{layer}.qml"] = ramp_qml(layer)
    return out
