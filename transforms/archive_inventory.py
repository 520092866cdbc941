"""What the metadata expects but the official archives lack, for ``benbeam validate --archives``:
each archive's member list is streamed once (no data kept) and checked against the patch
folders the metadata names, with one bit per object and folder. Plain Python (no Beam).
"""

from __future__ import annotations

import numpy as np

from bigearthnet_beam.schemas.bands import S1_NAMES, S2_NAMES
from bigearthnet_beam.schemas.naming import (
    MAP_DIR,
    OBJECT_KEYS,
    REFERENCE_MAP_KEY,
    S1_DIR,
    S2_DIR,
    parse_patch_id,
    parse_s1_name,
)
from bigearthnet_beam.transforms.archives import iter_members, patch_folder

FOLDER_KEYS: dict[str, tuple[str, ...]] = {S2_DIR: S2_NAMES, S1_DIR: S1_NAMES, MAP_DIR: (REFERENCE_MAP_KEY,)}


def expected_members(folder: str, name: str) -> dict[str, str]:
    """Object key -> member path, for the patch folder ``name`` (patch id or S1 name) of ``folder``."""
    if folder == S1_DIR:
        parent = f"{S1_DIR}/{parse_s1_name(name).scene_dir}/{name}"
    else:
        parent = f"{folder}/{parse_patch_id(name).s2_tile_dir}/{name}"
    return {k: f"{parent}/{name}_{k}.tif" for k in FOLDER_KEYS[folder]}


def expected_folders(metas, folder: str, splits, frac: float, st=None) -> np.ndarray:
    """Sorted unique patch folder names of ``folder`` that the selected metadata rows name."""
    from bigearthnet_beam.transforms import metadata as md

    column = "s1_name" if folder == S1_DIR else "patch_id"
    names = set()
    for url in metas:
        table, _ = md.read_table(url, st)
        for pid, split, v in zip(
            table.column("patch_id").to_pylist(),
            table.column("split").to_pylist(),
            table.column(column).to_pylist(),
            strict=True,
        ):
            if isinstance(v, str) and md.selected_split(pid, split, splits, frac) is not None:
                names.add(v.encode())
    return np.array(sorted(names), dtype=bytes) if names else np.array([], dtype="S1")


def inventory(url: str, folder: str, expected: np.ndarray, st=None) -> tuple[dict[str, dict], int]:
    """Stream the member list of one archive (no data kept) against the ``expected`` patch
    folders: ``({folder name: {"missing": keys, "empty": keys}} for incomplete ones, members)``."""
    keys = FOLDER_KEYS[folder]
    found = np.zeros(expected.size, dtype=np.uint16)
    empty = np.zeros(expected.size, dtype=np.uint16)
    members = 0
    last, slot, paths = None, -1, {}
    for m in iter_members(url, read_data=False, st=st):
        members += 1
        pf = patch_folder(m.name)
        if pf is None or not expected.size:
            continue
        if pf != last:
            last, slot = pf, -1
            raw = pf.encode()
            if len(raw) <= expected.dtype.itemsize:
                i = int(np.searchsorted(expected, raw))
                if i < expected.size and expected[i] == raw:
                    slot, paths = i, {p: b for b, p in enumerate(expected_members(folder, pf).values())}
        bit = paths.get(m.name) if slot >= 0 else None
        if bit is not None:
            found[slot] |= 1 << bit
            if m.size == 0:
                empty[slot] |= 1 << bit
    full = (1 << len(keys)) - 1
    lacking = {}
    for i in np.flatnonzero((found != full) | (empty != 0)):
        lacking[expected[i].decode()] = {
            "missing": [k for b, k in enumerate(keys) if not found[i] >> b & 1],
            "empty": [k for b, k in enumerate(keys) if empty[i] >> b & 1],
        }
    return lacking, members


def check_archived(rec: dict, lacking: dict) -> list:
    """The missing / empty objects of a record according to the archives' inventories
    (``{(folder, patch folder): {"missing", "empty"}}``): PatchErrors worded as for files."""
    from bigearthnet_beam.schemas import failures
    from bigearthnet_beam.transforms import metadata as md

    urls = md.record_urls(rec)
    gaps: dict[str, str] = {}
    for folder in FOLDER_KEYS:
        what = lacking.get((folder, rec["s1_name"] if folder == S1_DIR else rec["patch_id"]))
        if what:
            gaps.update({k: "missing" for k in what["missing"]})
            gaps.update({k: "empty" for k in what["empty"]})
    errs = []
    for key in OBJECT_KEYS:
        if gaps.get(key) == "missing":
            errs.append(
                failures.PatchError(failures.FETCH, "missing_object", f"{key} object {urls[key]} does not exist")
            )
        elif gaps.get(key) == "empty":
            errs.append(failures.PatchError(failures.FETCH, "empty_object", f"{key} object {urls[key]} is 0 bytes"))
    return errs
