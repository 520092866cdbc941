"""``benbeam synth``: a faithful synthetic replica of BigEarthNet v2.0 (reBEN).

Samples real rows of the official metadata (vendored in ``synth/data``) and writes, for
each, the 15 GeoTIFFs of the official layout: S2 bands at their native 10/20/60 m sizes
(uint16, nodata 0, uncompressed), S1 VV/VH (float32 dB, no nodata, uncompressed) and the
reference map (uint16 CLC codes, nodata 0, DEFLATE + predictor 2), all on the patch's
UTM grid. Content is learnable: the map is a few smooth regions whose CLC codes map
exactly to the row's labels, and every class has its own spectral and backscatter
signature (``synth.signatures``).

Output is deterministic: each patch draws from its own RNG seeded by (seed, patch id),
so the bytes do not depend on the worker count. Files are built in memory and written
through fsspec, so ``out`` may be a local folder or an ``s3://`` / ``gs://`` URL.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import resources

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bigearthnet_beam.schemas import failures
from bigearthnet_beam.schemas.bands import BAND_BY_NAME, PATCH_EXTENT_M, PATCH_SIZE, S1_NAMES, S2_NAMES
from bigearthnet_beam.schemas.classes import CLASS_INDEX, clc_table, no_class_codes
from bigearthnet_beam.schemas.naming import REFERENCE_MAP_KEY, parse_patch_id, relative_paths
from bigearthnet_beam.synth.signatures import NO_CLASS_ROW, render, smooth_field
from bigearthnet_beam.transforms import storage
from bigearthnet_beam.transforms.progress import Bar

CLEAN = "metadata.parquet"
SNOW_CLOUD = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
FAULTS_JSON = "injected_faults.json"

# MGRS 100 km square letters (I and O are not used).
_COL_SETS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"
_LAT_BANDS = "CDEFGHJKLMNPQRSTUVWX"  # 8° bands from 80°S
TILE_EXTENT_M = 109_800.0
SQUARE_M = 100_000.0
ROW_CYCLE_M = 2_000_000.0  # the 20 row letters repeat every 2,000 km of northing
EVEN_ZONE_ROW_SHIFT = 5  # even zones: northing 0 is row letter F (index 5), odd zones: A
_WGS84_A, _WGS84_F, _UTM_K0 = 6_378_137.0, 1 / 298.257223563, 0.9996


def band_latitudes(band: str) -> tuple[float, float]:
    """(south, north) latitude in degrees of an MGRS latitude band letter (C…X; X spans 72–84°N)."""
    if band not in _LAT_BANDS:
        raise ValueError(f"{band!r} is not an MGRS latitude band letter (C-X without I and O)")
    south = -80.0 + 8.0 * _LAT_BANDS.index(band)
    return south, south + (12.0 if band == "X" else 8.0)


def meridian_northing(lat_deg: float) -> float:
    """UTM northing (metres, northern hemisphere) of a latitude on a zone's central meridian:
    the WGS84 meridian arc (series to e^6) times the UTM scale 0.9996."""
    e2 = _WGS84_F * (2 - _WGS84_F)
    e4, e6 = e2 * e2, e2 * e2 * e2
    p = np.radians(lat_deg)
    m = _WGS84_A * (
        (1 - e2 / 4 - 3 * e4 / 64 - 5 * e6 / 256) * p
        - (3 * e2 / 8 + 3 * e4 / 32 + 45 * e6 / 1024) * np.sin(2 * p)
        + (15 * e4 / 256 + 45 * e6 / 1024) * np.sin(4 * p)
        - (35 * e6 / 3072) * np.sin(6 * p)
    )
    return float(_UTM_K0 * m)


def square_origin(zone: int, square: str) -> tuple[float, float]:
    """South-west corner (x, y) in UTM metres of the MGRS 100 km square named by a latitude band
    and two letters, e.g. 33 + "UUP" (northern hemisphere).

    Easting: the column letter's position in the zone's letter set (sets cycle with the zone:
    A-H, J-R, S-Z), the first column at 100 km. Northing: the row letter's 100 km row modulo
    2,000 km, rows A-V counted from the equator in odd zones and from 500 km south of it
    (letter F at the equator) in even zones, lifted by whole 2,000 km cycles to the repetition
    nearest the latitude band's middle.
    """
    band, col, row = square[0], square[1], square[2]
    cols = _COL_SETS[(zone - 1) % 3]
    if col not in cols or row not in _ROW_LETTERS:
        raise ValueError(f"{zone}{square}: {col}{row} is not a 100 km square of zone {zone}")
    easting = (cols.index(col) + 1) * SQUARE_M
    shift = EVEN_ZONE_ROW_SHIFT if zone % 2 == 0 else 0
    base = ((_ROW_LETTERS.index(row) - shift) % len(_ROW_LETTERS)) * SQUARE_M
    south, north = band_latitudes(band)
    middle = meridian_northing((south + north) / 2)
    northing = base + ROW_CYCLE_M * round((middle - base - SQUARE_M / 2) / ROW_CYCLE_M)
    return easting, northing


def tile_origin(zone: int, square: str) -> tuple[float, float]:
    """Upper-left corner (x, y) in UTM metres of a Sentinel-2 tile like 33 + "UUP": the north-west
    corner of its MGRS 100 km square (``square_origin``); the tile reaches 109.8 km east and
    south from there, overlapping its neighbours by 9.8 km, as the Sentinel-2 tiling grid does."""
    x, y = square_origin(zone, square)
    return x, y + SQUARE_M


def patch_origin(patch_id: str) -> tuple[float, float]:
    """Upper-left corner (x, y) in UTM metres of a patch."""
    p = parse_patch_id(patch_id)
    x0, y0 = tile_origin(p.utm_zone, p.tile[3:])
    return x0 + PATCH_EXTENT_M * p.x, y0 - PATCH_EXTENT_M * p.y


def _rng(seed: int, patch_id: str) -> np.random.Generator:
    h = int.from_bytes(hashlib.blake2b(patch_id.encode(), digest_size=8).digest(), "big")
    return np.random.default_rng(np.random.SeedSequence([seed, h]))


def _codes_by_class() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for r in clc_table():
        if r["name_19"] in CLASS_INDEX:
            out.setdefault(CLASS_INDEX[r["name_19"]], []).append(r["code"])
    return out


def reference_map(labels, rng: np.random.Generator, size: int = PATCH_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(CLC codes uint16, signature rows uint8) for a patch with these labels.

    Warped Voronoi regions: one seed per label plus a few extra seeds, distances measured
    on coordinates displaced by smooth random fields, so region borders are smooth curves.
    Every label is present (a swallowed label gets its seed's block back); with
    probability 0.3 a small no-class region (e.g. a road, 122, or 999) is added.
    """
    classes = [CLASS_INDEX[lab] for lab in labels]
    codes_of = _codes_by_class()
    k = len(classes)
    extra = int(rng.integers(0, 4))
    owners = classes + [classes[int(i)] for i in rng.integers(0, k, extra)]
    seeds = rng.uniform(8, size - 8, (len(owners), 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    amp = size * 0.12
    wy = yy + amp * smooth_field(rng, (size, size), 4)
    wx = xx + amp * smooth_field(rng, (size, size), 4)
    d = (wy[None] - seeds[:, 0, None, None]) ** 2 + (wx[None] - seeds[:, 1, None, None]) ** 2
    region = np.argmin(d, axis=0)
    cls_map = np.asarray(owners, dtype=np.int64)[region]
    for i, c in enumerate(classes):
        if not (cls_map == c).any():
            y, x = seeds[i].astype(int)
            cls_map[max(0, y - 4) : y + 4, max(0, x - 4) : x + 4] = c
    # one CLC code per class of this patch
    code_of = {c: int(rng.choice(codes_of[c])) for c in set(classes)}
    codes = np.zeros((size, size), dtype=np.uint16)
    rows = cls_map.astype(np.uint8)
    for c, code in code_of.items():
        codes[cls_map == c] = code
    if rng.random() < 0.3:
        nc = int(rng.choice(sorted(no_class_codes() - {0})))
        y, x = rng.integers(10, size - 30, 2)
        h, w = rng.integers(4, 20, 2)
        patch = np.zeros((size, size), dtype=bool)
        patch[y : y + h, x : x + w] = True
        # never swallow a whole class
        swallowed = [c for c in set(classes) if not ((cls_map == c) & ~patch).any()]
        if not swallowed:
            codes[patch] = nc
            rows[patch] = NO_CLASS_ROW
    return codes, rows


def _tiff_bytes(arr: np.ndarray, x0: float, y0: float, res: float, epsg: int, nodata, compress: bool) -> bytes:
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    profile = dict(
        driver="GTiff",
        width=arr.shape[1],
        height=arr.shape[0],
        count=1,
        dtype=arr.dtype.name,
        crs=f"EPSG:{epsg}",
        transform=from_origin(x0, y0, res, res),
    )
    if nodata is not None:
        profile["nodata"] = nodata
    if compress:
        profile.update(compress="deflate", predictor=2)
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(arr, 1)
        return bytes(mem.read())


def patch_files(row: dict, seed: int, fault: str | None = None) -> tuple[dict[str, bytes | None], str]:
    """The 15 files of a patch as {relative path: bytes (None = not written)} and a fault detail."""
    pid, s1 = row["patch_id"], row["s1_name"]
    rng = _rng(seed, pid)
    epsg = parse_patch_id(pid).epsg
    x0, y0 = patch_origin(pid)
    codes, rows = reference_map(row["labels"], rng)
    bands, vv, vh = render(rows, rng)
    arrays: dict[str, np.ndarray] = {**bands, "VV": vv, "VH": vh, REFERENCE_MAP_KEY: codes}
    origin = {k: (x0, y0) for k in arrays}
    crs = {k: epsg for k in arrays}
    detail = ""
    frng = np.random.default_rng(np.random.SeedSequence([seed, 7, int(rng.integers(1 << 30))]))
    pick_s2 = S2_NAMES[int(frng.integers(len(S2_NAMES)))]
    if fault == "wrong_raster_size":
        arrays["B04"] = arrays["B04"][:100, :100].copy()
        detail = "B04 written at 100x100 instead of 120x120"
    elif fault == "s2_nodata_zeros":
        a = arrays[pick_s2].copy()
        n = max(1, a.shape[0] // 6)
        a[:n, :n] = 0
        arrays[pick_s2] = a
        detail = f"{pick_s2} has a {n}x{n} block of 0"
    elif fault == "s1_nan":
        a = arrays["VV"].copy()
        a[50:60, 50:60] = np.nan
        arrays["VV"] = a
        detail = "VV has a 10x10 block of NaN"
    elif fault == "misaligned_origin":
        origin["VH"] = (x0 + 30.0, y0)
        detail = "VH origin shifted by 30 m east"
    elif fault == "wrong_crs":
        crs[REFERENCE_MAP_KEY] = epsg + 1 if epsg < 32660 else epsg - 1
        detail = f"reference map in EPSG:{crs[REFERENCE_MAP_KEY]} instead of EPSG:{epsg}"
    elif fault == "unknown_clc_code":
        c = arrays[REFERENCE_MAP_KEY].copy()
        c[:6, :6] = 777
        arrays[REFERENCE_MAP_KEY] = c
        detail = "reference map holds code 777"
    rel = relative_paths(pid, s1)
    files: dict[str, bytes | None] = {}
    for key, arr in arrays.items():
        if key == REFERENCE_MAP_KEY:
            res, nodata, comp = 10.0, 0, True
        else:
            band = BAND_BY_NAME[key]
            res, nodata, comp = float(band.resolution_m), band.nodata, False
        files[rel[key]] = _tiff_bytes(arr, *origin[key], res, crs[key], nodata, comp)
    if fault == "missing_band_file":
        files[rel[pick_s2]] = None
        detail = f"{pick_s2} file not written"
    elif fault == "zero_byte_file":
        files[rel[pick_s2]] = b""
        detail = f"{pick_s2} file is 0 bytes"
    elif fault == "truncated_tiff":
        b = files[rel[pick_s2]]
        files[rel[pick_s2]] = b[: len(b) // 2]
        detail = f"{pick_s2} truncated to {len(b) // 2} of {len(b)} bytes"
    elif fault == "missing_s1_folder":
        for k in S1_NAMES:
            files[rel[k]] = None
        detail = "S1 folder not written"
    return files, detail


def _write(out: str, rel: str, data: bytes, st: storage.Storage) -> None:
    url = storage.join(out, rel)
    if storage.is_remote(out):
        storage.retry(st.filesystem(url).pipe_file, url, data, what=f"write {url}")
    else:
        os.makedirs(os.path.dirname(url), exist_ok=True)
        with open(url, "wb") as fh:
            fh.write(data)


def _work(args) -> list[tuple[str, str]]:
    out, seed, items, st = args
    done = []
    for row, fault in items:
        files, detail = patch_files(row, seed, fault)
        for rel, data in files.items():
            if data is not None:
                _write(out, rel, data, st)
        done.append((row["patch_id"], detail))
    return done


def _official(include_snow_cloud: bool) -> pa.Table:
    base = resources.files(__package__).joinpath("data")
    tables = [pq.read_table(io.BytesIO(base.joinpath(CLEAN).read_bytes()))]
    if include_snow_cloud:
        tables.append(pq.read_table(io.BytesIO(base.joinpath(SNOW_CLOUD).read_bytes())))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _plan_faults(ids: list[str], rng, corrupt: float, faults) -> dict[str, str]:
    if faults:
        unknown = [f for f in faults if f not in failures.FAULT_KINDS]
        if unknown:
            raise ValueError(
                f"unknown fault kind(s) {', '.join(unknown)}; valid kinds: {', '.join(failures.FAULT_KINDS)}"
            )
        kinds = [f for f in faults if f != "missing_files"]
    elif corrupt > 0:
        n = int(round(corrupt * len(ids)))
        kinds = [failures.FAULT_KINDS[i % len(failures.FAULT_KINDS)] for i in range(n)]
        kinds = [k for k in kinds if k != "missing_files"]
    else:
        return {}
    if len(kinds) > len(ids):
        raise ValueError(f"{len(kinds)} faults need at least as many patches; got --n {len(ids)}")
    chosen = rng.choice(len(ids), len(kinds), replace=False)
    return {ids[int(i)]: k for i, k in zip(sorted(chosen), kinds, strict=False)}


def generate(
    out: str,
    n: int,
    seed: int = 0,
    include_snow_cloud: bool = False,
    corrupt: float = 0.0,
    faults: list[str] | None = None,
    workers: int | None = None,
    progress: bool = False,
    st: storage.Storage | None = None,
) -> dict:
    """Write a synthetic reBEN sample of ``n`` patches under ``out``; returns a summary.

    ``faults``: one patch per listed kind; ``corrupt``: that fraction of the patches,
    kinds cycling over ``schemas.failures.FAULT_KINDS``. ``missing_files`` faults are
    extra metadata rows (real ids not otherwise sampled) whose files are not written, so
    metadata.parquet then holds ``n`` + their number of rows. ``st``: the ``Storage`` of a
    bucket ``out`` (default ``Storage()``).
    """
    st = st if st is not None else storage.Storage()
    if n < 1:
        raise ValueError("--n must be at least 1")
    if not 0 <= corrupt <= 1:
        raise ValueError("--corrupt must be a fraction in [0, 1]")
    t0 = time.perf_counter()
    table = _official(include_snow_cloud)
    if n > table.num_rows:
        raise ValueError(f"--n {n} exceeds the {table.num_rows} rows of the official metadata")
    rng = np.random.default_rng(seed)
    order = rng.permutation(table.num_rows)
    idx = np.sort(order[:n])
    sample = table.take(pa.array(idx))
    ids = sample.column("patch_id").to_pylist()
    plan = _plan_faults(ids, rng, corrupt, faults)
    n_missing = (faults or []).count("missing_files") + (
        sum(
            1
            for i in range(int(round(corrupt * n)))
            if failures.FAULT_KINDS[i % len(failures.FAULT_KINDS)] == "missing_files"
        )
        if not faults
        else 0
    )
    extra_idx = np.sort(order[n : n + n_missing])
    extra = table.take(pa.array(extra_idx)) if n_missing else None
    full = pa.concat_tables([sample, extra]) if extra is not None else sample
    full = full.sort_by("patch_id")
    buf = io.BytesIO()
    pq.write_table(full, buf)  # written last: a replica cut short (a full disk, Ctrl-C) has none

    rows = sample.to_pylist()
    items = [(r, plan.get(r["patch_id"])) for r in rows]
    workers = max(1, workers or os.cpu_count() or 1)
    chunk = max(1, min(64, len(items) // (workers * 4) or 1))
    jobs = [(out, seed, items[i : i + chunk], st) for i in range(0, len(items), chunk)]
    details: dict[str, str] = {}
    bar = Bar("synth", n) if progress else None
    if workers == 1 or len(jobs) == 1:
        results = map(_work, jobs)
        for res in results:
            details.update(res)
            if bar:
                bar.update(len(res))
    else:
        # fork is cheap, but a forked child must not inherit the parent's open object-store
        # connections and event-loop thread: remote outputs use fresh (spawned) workers.
        ctx = multiprocessing.get_context("spawn" if storage.is_remote(out) else "fork")
        with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            for res in ex.map(_work, jobs):
                details.update(res)
                if bar:
                    bar.update(len(res))
    if bar:
        bar.close()
    injected = [{"patch_id": pid, "kind": kind, "detail": details[pid]} for pid, kind in plan.items()]
    if extra is not None:
        injected += [
            {"patch_id": pid, "kind": "missing_files", "detail": "metadata row without any files"}
            for pid in extra.column("patch_id").to_pylist()
        ]
    injected.sort(key=lambda f: f["patch_id"])
    _write(out, FAULTS_JSON, (json.dumps(injected, indent=2) + "\n").encode(), st)
    # the metadata last and atomically: its presence means the replica is complete
    st.write_bytes_atomic(storage.join(out, CLEAN), buf.getvalue())
    dt = time.perf_counter() - t0
    return {
        "out": out,
        "patches": n,
        "metadata_rows": full.num_rows,
        "faults": len(injected),
        "seconds": round(dt, 2),
        "patches_per_s": round(n / dt, 1),
    }
