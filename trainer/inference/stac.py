"""STAC metadata of the maps: an item per mapped tile, a collection per ``--benchmark`` run (pystac).

``<tile>_item.json`` (beside the maps) is a STAC 1.x item with the ``proj`` (CRS, shape,
transform of the tile's grid), ``raster`` (data type, nodata, scale of every band) and
``classification`` (class values, names, colours, pixel counts, on the class map) extensions;
every output is an asset with its role (``data`` for the maps, ``metadata`` for the JSON and
GDAL sidecars, ``style`` for the QGIS styles, ``thumbnail`` for the preview). Asset hrefs are
relative (``./<file>``), so the folder can be moved or uploaded as it is. ``--benchmark`` adds
``collection.json`` in its output folder, linking every tile's item (``./<tile>/<tile>_item.json``)
and linked back from them.

The item's ``datetime`` is the acquisition time in the tile's name (``T32TQR_20240715T101031``
or ``..._20240715``); a name without a date gets the time of mapping and says so in
``benbeam:datetime_source``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re

from bigearthnet_beam.trainer.inference.layers import LAYER_DOC, NODATA_CLASS, PROBS_SCALE
from bigearthnet_beam.trainer.inference.styles import class_entries

ITEM_SUFFIX = "_item.json"
COLLECTION = "collection.json"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
_NAME_TIME = re.compile(r"(?<!\d)(\d{8})(?:T(\d{6}))?(?!\d)")


def item_name(tile: str) -> str:
    """File name of a tile's STAC item."""
    return f"{tile}{ITEM_SUFFIX}"


def acquisition_time(name: str) -> dt.datetime | None:
    """The UTC time in a tile name (``YYYYMMDD[THHMMSS]``), or None."""
    m = _NAME_TIME.search(name)
    if not m:
        return None
    try:
        when = dt.datetime.strptime(m.group(1) + (m.group(2) or "000000"), "%Y%m%d%H%M%S")
        return when.replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower() or "class"


def footprint(crs: str, transform: list[float], width: int, height: int) -> tuple[dict, list[float]]:
    """(GeoJSON polygon in WGS84, bbox) of the grid's outline (densified: UTM edges are curves in lon/lat)."""
    from rasterio.warp import transform_geom

    a, b, c, d, e, f = transform[:6]

    def at(col: float, row: float) -> list[float]:
        return [a * col + b * row + c, d * col + e * row + f]

    n = 10
    ring = (
        [at(width * i / n, 0) for i in range(n)]
        + [at(width, height * i / n) for i in range(n)]
        + [at(width * (n - i) / n, height) for i in range(n)]
        + [at(0, height * (n - i) / n) for i in range(n)]
    )
    ring.append(ring[0])
    geom = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]}, precision=7)
    coords = [tuple(p) for p in geom["coordinates"][0]]
    xs, ys = [p[0] for p in coords], [p[1] for p in coords]
    return {"type": "Polygon", "coordinates": [[list(p) for p in coords]]}, [min(xs), min(ys), max(xs), max(ys)]


def _raster_bands(layer: str, summary: dict, probs_dtype: str | None, count: int = 1) -> list:
    from pystac.extensions.raster import RasterBand

    res = abs(float(summary["transform"][0]))
    if layer == "class":
        return [RasterBand.create(nodata=NODATA_CLASS, data_type="uint8", spatial_resolution=res, sampling="area")]
    if layer == "probs" and probs_dtype == "uint8":
        return [
            RasterBand.create(
                nodata=255,
                data_type="uint8",
                spatial_resolution=res,
                sampling="area",
                scale=1 / PROBS_SCALE,
                offset=0.0,
            )
            for _ in range(count)
        ]
    return [
        RasterBand.create(nodata="nan", data_type="float32", spatial_resolution=res, sampling="area")
        for _ in range(count)
    ]


def tile_item(summary: dict, info: dict, outputs: list[str], *, probs_dtype: str | None = None, now=None):
    """The ``pystac.Item`` of one mapped tile (module docstring); ``outputs``: the file names beside it."""
    import pystac
    from pystac.extensions.classification import Classification, ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension

    tile = summary["tile"]
    geom, bbox = footprint(summary["crs"], summary["transform"], summary["width"], summary["height"])
    when = acquisition_time(tile)
    source = "tile name"
    if when is None:
        when, source = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0), "time of mapping"
    item = pystac.Item(
        id=tile,
        geometry=geom,
        bbox=bbox,
        datetime=when,
        properties={
            "title": f"benbeam predict: {tile}",
            "benbeam:datetime_source": source,
            "benbeam:valid_pixels": summary.get("valid_pixels"),
        },
    )
    a, b, c, d, e, f = summary["transform"][:6]
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        code=summary["crs"] if ":" in summary["crs"] else None,
        wkt2=None if ":" in summary["crs"] else summary["crs"],
        shape=[summary["height"], summary["width"]],
        transform=[a, b, c, d, e, f],
    )
    RasterExtension.add_to(item)
    ClassificationExtension.add_to(item)
    stem = f"{tile}_"
    names = list(info["classes"])
    for fname in sorted(outputs):
        if fname == item_name(tile):
            continue
        key = fname[len(stem) :] if fname.startswith(stem) else fname
        href = f"./{fname}"
        if fname.endswith(".tif"):
            layer = key[: -len(".tif")]
            count = len(names) if layer == "probs" else 1
            asset = pystac.Asset(
                href, title=layer, description=LAYER_DOC.get(layer, "user layer (--extra)"), media_type=COG_TYPE
            )
            asset.roles = ["data"]
            item.add_asset(layer, asset)
            RasterExtension.ext(asset).apply(_raster_bands(layer, summary, probs_dtype, count))
            if layer == "class":
                counts = summary.get("class_pixels", {})
                classes = [
                    Classification.create(
                        value=v,
                        name=_slug(n),
                        description=n,
                        color_hint="{:02X}{:02X}{:02X}".format(*rgb),
                        count=int(counts.get(n, 0)) if v != NODATA_CLASS else None,
                        nodata=True if v == NODATA_CLASS else None,
                    )
                    for v, n, rgb in class_entries(info)
                ]
                ClassificationExtension.ext(asset).apply(classes=classes)
        elif fname.endswith(".qml"):
            item.add_asset(f"{key[:-4]}_style", pystac.Asset(href, media_type="application/xml", roles=["style"]))
        elif fname.endswith(".aux.xml"):
            item.add_asset(
                f"{key.split('.')[0]}_gdal_pam",
                pystac.Asset(href, description="GDAL sidecar: category names, attribute table", roles=["metadata"]),
            )
        elif fname.endswith(".json"):
            item.add_asset(key[:-5], pystac.Asset(href, media_type="application/json", roles=["metadata"]))
        elif fname.endswith(".png"):
            item.add_asset("preview", pystac.Asset(href, media_type="image/png", roles=["thumbnail", "overview"]))
    return item


def item_bytes(item) -> bytes:
    """The item as written: relative hrefs kept, no self link (the folder can move)."""
    return (json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2) + "\n").encode()


def write_collection(out: str, summaries: list[dict], *, title: str = "benbeam predict --benchmark") -> str | None:
    """``out/collection.json`` linking the items of ``summaries`` (tiles under ``out/<dir>/``), and
    each item linked back to it; returns its path (None when no tile has an item)."""
    import pystac

    items = []
    for s in summaries:
        path = os.path.join(out, s.get("dir", s["tile"]), item_name(s["tile"]))
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                items.append((path, pystac.Item.from_dict(json.load(fh), preserve_dict=False)))
    if not items:
        return None
    bboxes = [it.bbox for _, it in items]
    spatial = [min(b[i] for b in bboxes) for i in (0, 1)] + [max(b[i] for b in bboxes) for i in (2, 3)]
    times = sorted(it.datetime for _, it in items)
    coll = pystac.Collection(
        id=_slug(os.path.basename(os.path.abspath(out))) or "benchmark",
        description=f"{title}: {len(items)} mapped tiles (class maps, probability layers, styles)",
        extent=pystac.Extent(pystac.SpatialExtent([spatial]), pystac.TemporalExtent([[times[0], times[-1]]])),
        license="other",
        title=title,
    )
    coll.stac_extensions = sorted({e for _, it in items for e in it.stac_extensions})
    for path, it in items:
        rel = "./" + os.path.relpath(path, out).replace(os.sep, "/")
        back = os.path.relpath(os.path.join(out, COLLECTION), os.path.dirname(path)).replace(os.sep, "/")
        coll.add_link(pystac.Link("item", rel, media_type="application/geo+json", title=it.id))
        it.collection_id = coll.id
        for rel_type in ("collection", "parent", "root"):
            it.add_link(pystac.Link(rel_type, back, media_type="application/json"))
        with open(path, "wb") as fh:
            fh.write(item_bytes(it))
    coll.add_link(pystac.Link("root", f"./{COLLECTION}", media_type="application/json"))
    target = os.path.join(out, COLLECTION)
    tmp = f"{target}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(coll.to_dict(include_self_link=False, transform_hrefs=False), fh, indent=2)
        fh.write("\n")
    os.replace(tmp, target)
    return target
