"""Which metadata rows each shard holds: the conversion's plan. Plain Python (no Beam).

Every selected row has exactly one *home*: the shard of its patch id in its split, or
``INVALID`` for a row that names no selectable split or has no string id (such a row can
only become a dead letter). Rows sharing a patch id share a home, so de-duplication is
local to a home. The rule is applied in two ways that agree: inside a pipeline, to rows
(``route_row`` / ``homes_of_group``: ``transforms.ptransforms.GroupByShard``, what
``ConvertDataset`` runs), and in the driver, to metadata files (``RowPlan``: counts for the
progress lines and the checks before a run, the archive packs of ``--archives``, the
diagnosis of a run without statistics). A ``RowPlan`` reads its files once per copy of the
value (its index is held by the value, not by the module, and is not pickled) and checks
them against the sha256 taken when it was made.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Tuple

import numpy as np

from bigearthnet_beam.schemas import failures
from bigearthnet_beam.schemas.manifest import SPLITS
from bigearthnet_beam.transforms import metadata as md
from bigearthnet_beam.transforms.storage import Storage

MAIN, DEAD, SELECTED = "main", "dead", "selected"
INVALID = ("", 0, 1)


# --------------------------------------------------------------------------- row checks


def check_row_tagged(row, root, splits, frac) -> Iterable[Tuple[str, Any]]:
    """One row: nothing (not sampled / split not selected), else ``(SELECTED, split)`` and
    either ``(DEAD, dead letter)`` or ``(MAIN, (patch_id, ((source, row), record)))``."""
    split = md.selected_split(row.get("patch_id"), row.get("split"), splits, frac)
    if split is None:
        return
    yield (SELECTED, split)
    try:
        rec = md.check_row(row, root)
    except failures.PatchError as e:
        yield (DEAD, e.record(md.row_key(row), split))
        return
    yield (MAIN, (rec["patch_id"], ((row["_source"], row["_row"]), rec)))


def dedupe_tagged(kv) -> Iterable[Tuple[str, Any]]:
    """The clean records of one patch id: the first occurrence (file, row) is kept, every
    later one is a ``duplicate_patch_id`` dead letter."""
    pid, items = kv
    items = sorted(items, key=lambda x: x[0])
    yield (MAIN, items[0][1])
    for (src, idx), rec in items[1:]:
        yield (
            DEAD,
            failures.dead_letter(
                pid,
                failures.METADATA,
                "duplicate_patch_id",
                f"patch id occurs more than once; kept the first occurrence (file {items[0][0][0]}, row "
                f"{items[0][0][1]}), dropped file {src} row {idx}: remove duplicate rows from the metadata",
                rec["split"],
            ),
        )


def check_rows(rows, root, splits, frac) -> tuple[Counter, list[dict], list[dict]]:
    """Sample, select, check and de-duplicate ``rows`` (every row of a patch id among them):
    (selected rows per split, dead letters, clean records sorted by patch id)."""
    selected: Counter = Counter()
    dead: list[dict] = []
    groups: dict[str, list] = {}
    for row in rows:
        for tag, value in check_row_tagged(row, root, splits, frac):
            if tag == SELECTED:
                selected[value] += 1
            elif tag == DEAD:
                dead.append(value)
            else:
                groups.setdefault(value[0], []).append(value[1])
    clean = []
    for pid in sorted(groups):
        for tag, value in dedupe_tagged((pid, groups[pid])):
            (clean if tag == MAIN else dead).append(value)
    return selected, dead, clean


# --------------------------------------------------------------------------- homes


def is_clean(row, root) -> bool:
    """Whether a row passes the metadata checks (``metadata.check_row``)."""
    try:
        md.check_row(row, root)
        return True
    except failures.PatchError:
        return False


def group_split(splits_in_order, clean) -> str:
    """The split a patch id's rows live in: that of its first row, or, when its rows name
    several splits, that of its first clean row (the one ``dedupe_tagged`` keeps);
    ``splits_in_order``: the rows' splits in (file, row) order; ``clean(i)``: row i is clean."""
    s = splits_in_order[0]
    if len(splits_in_order) > 1 and len(set(splits_in_order)) > 1:
        s = next((x for i, x in enumerate(splits_in_order) if clean(i)), s)
    return s


def route_row(row, splits, frac) -> Iterable[Tuple[str, Any]]:
    """How a row reaches its home in a pipeline: nothing (not selected), else ``("count", split)``
    and either ``("pid", (patch_id, row))`` (grouped with its patch id first) or
    ``("home", (INVALID, row))`` (no string id, or a split that is not selectable)."""
    pid = row.get("patch_id")
    s = md.selected_split(pid, row.get("split"), splits, frac)
    if s is None:
        return
    yield ("count", s)
    if isinstance(pid, str) and s in SPLITS:
        yield ("pid", (pid, row))
    else:
        yield ("home", (INVALID, row))


def shard_counts(counts: dict, shard_size: int) -> dict[str, int]:
    """Split -> number of shards, from the selected rows per split."""
    return {s: md.shard_count(n, shard_size) for s, n in sorted(counts.items()) if s in SPLITS}


def row_order(row) -> tuple:
    """The (file, row) order rows are checked and de-duplicated in."""
    return (row.get("_source", 0), row.get("_row", 0))


def homes_of_group(pid: str, rows, splits, frac, root, n_shards: dict) -> list[tuple]:
    """``(home, row)`` for every row of one patch id (the rule ``RowPlan`` applies to files)."""
    rows = sorted(rows, key=row_order)
    in_order = [md.selected_split(pid, r.get("split"), splits, frac) for r in rows]
    s = group_split(in_order, lambda i: is_clean(rows[i], root))
    home = (s, md.shard_index(pid, n_shards[s]), n_shards[s])
    return [(home, r) for r in rows]


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class RowPlan:
    """What decides the rows of every shard; small, hashable, shipped to the workers."""

    sources: tuple[str, ...]
    sha256: tuple[str, ...]
    rows: tuple[int, ...]
    root: str | None
    splits: tuple[str, ...]
    frac: float
    shard_size: int
    counts: tuple[tuple[str, int], ...]  # selected rows per split, invalid split values included
    storage: Storage = Storage()  # where the metadata files are read from

    @classmethod
    def create(cls, sources, root, splits, frac: float, shard_size: int, tables=None, storage=None) -> "RowPlan":
        """Read (or take the already read ``[(table, sha256)]``) metadata and fix the plan."""
        storage = storage if storage is not None else Storage()
        tables = tables if tables is not None else [md.read_table(u, storage) for u in sources]
        counts = md.split_counts([t for t, _ in tables], tuple(splits), frac)
        return cls(
            tuple(sources),
            tuple(sha for _, sha in tables),
            tuple(t.num_rows for t, _ in tables),
            root,
            tuple(splits),
            float(frac),
            int(shard_size),
            tuple(sorted(counts.items())),
            storage,
        )

    def shard_counts(self) -> dict[str, int]:
        """Split -> number of shards."""
        return shard_counts(dict(self.counts), self.shard_size)

    @property
    def _lock(self) -> threading.Lock:
        lock = self.__dict__.get("_lock_")
        if lock is None:
            lock = self.__dict__.setdefault("_lock_", threading.Lock())
        return lock

    def __getstate__(self):
        """The plan's fields only: its index (built on first use) stays in the process that built it."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_index_cache", "_lock_")}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def homes(self) -> list[tuple]:
        """Every shard key, then ``INVALID``."""
        return [(s, i, n) for s, n in sorted(self.shard_counts().items()) for i in range(n)] + [INVALID]

    def info(self) -> list[dict]:
        """Per metadata file: path, sha256, rows (for the manifest)."""
        return [
            {"source": i, "path": u, "sha256": h, "rows": n}
            for i, (u, h, n) in enumerate(zip(self.sources, self.sha256, self.rows, strict=True))
        ]

    def rows_of(self, home) -> list[dict]:
        """The metadata rows (dicts tagged with _source/_row) whose home is ``home``."""
        return _index(self).rows_of(home)

    def check(self, home) -> tuple[Counter, list[dict], list[dict]]:
        """``check_rows`` of a home's rows."""
        return check_rows(self.rows_of(home), self.root, self.splits, self.frac)

    def records(self, home) -> list[dict]:
        """The clean records of a shard, sorted by patch id."""
        return self.check(home)[2]


class _Index:
    """Home of every row of every metadata file, as sorted integer arrays."""

    def __init__(self, plan: RowPlan):
        self.tables = []
        for url, sha in zip(plan.sources, plan.sha256, strict=True):
            table, got = md.read_table(url, plan.storage)
            if got != sha:
                raise md.MetadataError(
                    f"metadata file {url} changed while the conversion ran (sha256 {sha[:12]}… "
                    f"when planned, {got[:12]}… now); run the conversion again"
                )
            # Only the columns records use, in one chunk each: taking a shard's rows from a
            # many-chunk table costs ~18 ms at 480,000 rows, from one chunk well under 1 ms.
            self.tables.append(table.select(md.record_columns(table)).combine_chunks())
        homes = plan.homes()
        self.home_id = {h: i for i, h in enumerate(homes)}
        n_shards = plan.shard_counts()
        ids = [np.full(t.num_rows, -1, dtype=np.int32) for t in self.tables]
        first: dict[str, list] = {}  # patch id -> [(source, row, split)], selectable rows only
        for src, table in enumerate(self.tables):
            pids = table.column("patch_id").to_pylist()
            splits = table.column("split").to_pylist()
            for i, (pid, split) in enumerate(zip(pids, splits, strict=True)):
                s = md.selected_split(pid, split, plan.splits, plan.frac)
                if s is None:
                    continue
                if isinstance(pid, str) and s in n_shards:
                    first.setdefault(pid, []).append((src, i, s))
                else:
                    ids[src][i] = self.home_id[INVALID]
        for pid, occ in first.items():
            # The same id in several splits: the group lives where its kept row belongs.
            s = group_split([o[2] for o in occ], lambda k, occ=occ: self._clean(occ[k][0], occ[k][1], plan.root))
            h = self.home_id[(s, md.shard_index(pid, n_shards[s]), n_shards[s])]
            for src, i, _ in occ:
                ids[src][i] = h
        self.order = [np.argsort(a, kind="stable") for a in ids]
        self.sorted_ids = [a[o] for a, o in zip(ids, self.order, strict=True)]

    def _clean(self, src: int, i: int, root) -> bool:
        return is_clean(md.table_rows(self.tables[src], src, [i])[0], root)

    def rows_of(self, home) -> list[dict]:
        h = self.home_id.get(tuple(home))
        if h is None:
            raise KeyError(f"{home!r} is not a shard of this plan")
        rows = []
        for src, (table, order, sid) in enumerate(zip(self.tables, self.order, self.sorted_ids, strict=True)):
            lo, hi = np.searchsorted(sid, np.array([h, h + 1], dtype=sid.dtype))
            if hi > lo:
                rows.extend(md.table_rows(table, src, np.sort(order[lo:hi]).tolist()))
        return rows


def _index(plan: RowPlan) -> _Index:
    """The plan's index, built once per plan value and held by that value (not by the module):
    each unpickled copy (one per DoFn instance on a worker) builds its own on first use."""
    with plan._lock:
        idx = plan.__dict__.get("_index_cache")
        if idx is None:
            idx = _Index(plan)
            object.__setattr__(plan, "_index_cache", idx)
        return idx
