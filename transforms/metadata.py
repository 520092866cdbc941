"""Metadata rows: reading, validation, deterministic sampling and shard keys (no Beam).

A row that cannot be used becomes a dead letter whose detail says how to fix it. Sampling
(``--frac``) and shard assignment hash the patch id with BLAKE2b, so they are stable
across runs, processes and machines, and the 0.001 sample is a subset of the 0.01 one.
"""

from __future__ import annotations

import hashlib
import io
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq

from bigearthnet_beam.schemas import errors, failures
from bigearthnet_beam.schemas.classes import CLASS_INDEX
from bigearthnet_beam.schemas.manifest import SPLIT_ALIASES, SPLITS
from bigearthnet_beam.schemas.naming import OBJECT_KEYS, PATCH_ID_RE, S1_NAME_RE, object_urls
from bigearthnet_beam.transforms import storage

REQUIRED_COLUMNS = ("patch_id", "s1_name", "split", "labels")
OPTIONAL_COLUMNS = ("country", "s2v1_name", "contains_seasonal_snow", "contains_cloud_or_shadow")
URL_COLUMNS = tuple(f"url_{k}" for k in OBJECT_KEYS)  # written by `benbeam index`


class MetadataError(errors.InputError):
    """The metadata file as a whole is unusable (not a row-level problem)."""


def hash_unit(text: str, salt: str) -> float:
    """A stable pseudo-random number in [0, 1) from ``text``."""
    d = hashlib.blake2b(f"{salt}\x00{text}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(d, "big") / 2.0**64


def sampled(patch_id, frac: float, salt: str = "frac") -> bool:
    """Deterministic hash sampling: nested across fractions (0.001 sample ⊂ 0.01 sample).

    Different ``salt`` values give independent samples (e.g. ``--stats_fraction``
    inside a ``--frac`` sample).
    """
    if frac >= 1.0:
        return True
    key = patch_id if isinstance(patch_id, str) else repr(patch_id)
    return hash_unit(key, salt) < frac


def shard_count(n_patches: int, shard_size: int) -> int:
    """Number of shards for ``n_patches`` (at least 1)."""
    return max(1, math.ceil(n_patches / max(1, shard_size)))


def shard_index(patch_id: str, n_shards: int) -> int:
    """Shard of a patch: a hash of its id, independent of the sampling hash."""
    return int(hash_unit(patch_id, "shard") * n_shards) % n_shards


def read_table(url: str, st: storage.Storage | None = None) -> tuple[pa.Table, str]:
    """Read a metadata parquet (local or URL, under ``st``: default ``Storage()``); returns
    (table, sha256 of the file bytes)."""
    try:
        data = (st or storage.Storage()).read_bytes(url)
    except FileNotFoundError:
        raise MetadataError(f"metadata file {url} does not exist") from None
    except Exception as e:
        if storage.is_transient(e) or isinstance(e, PermissionError) or type(e).__name__.endswith("CredentialsError"):
            raise  # the store, not the file: an environment failure (the CLI says so, exit 3)
        raise MetadataError(f"cannot read metadata file {url}: {e}") from None
    if not data:
        raise MetadataError(f"metadata file {url} is empty (0 bytes); expected a parquet file")
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise MetadataError(f"metadata file {url} is not a readable parquet file: {e}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise MetadataError(
            f"metadata file {url} lacks the column(s) {', '.join(missing)}; a reBEN metadata "
            f"parquet needs at least {', '.join(REQUIRED_COLUMNS)} (found: {', '.join(table.column_names)})"
        )
    return text_columns(table), storage.sha256_bytes(data)


def text_columns(table: pa.Table) -> pa.Table:
    """``table`` with its binary name columns as text: valid UTF-8 decoded, anything else
    with its bytes escaped (``S2A\\x80…``), so that such a row is a dead letter whose detail
    shows the id, and every stage keys and samples the same string."""
    for name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS + URL_COLUMNS:
        if name not in table.column_names:
            continue
        col = table.column(name)
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            values = [None if v is None else v.decode("utf-8", "backslashreplace") for v in col.to_pylist()]
            table = table.set_column(table.column_names.index(name), name, pa.array(values, pa.string()))
    return table


ROOT_KEY = b"benbeam.root"  # parquet schema metadata: the dataset root an index's url_* columns lie under


def declared_root(table: pa.Table) -> str | None:
    """The dataset root an index file (``benbeam index`` output) says it was made for, if any.
    Information only: objects are read from under the root the user names (``dataset_root``)."""
    meta = table.schema.metadata or {}
    v = meta.get(ROOT_KEY)
    return v.decode("utf-8", "replace") if v else None


def named_root(root: str | None, meta_url: str) -> str:
    """The root the user named: ``--root``, else the folder of ``--meta``; a local one resolved
    once (absolute, symlinks resolved), a URL as given without its trailing slash."""
    named = root or storage.parent(meta_url)
    if storage.is_remote(named):
        return named.rstrip("/")
    return os.path.realpath(named)


def dataset_root(root: str | None, meta_url: str, tables=None) -> str:
    """The root every object must lie under: the one the user named (``named_root``), never
    one a data file claims. An index whose declared root lies outside it (made with another
    ``--root``) is refused here with the flag to pass, instead of every row failing later."""
    named = named_root(root, meta_url)
    if root:
        return named
    for t in tables or ():
        declared = declared_root(t[0] if isinstance(t, tuple) else t)
        if declared is None:
            continue
        inside = (
            _under(os.path.realpath(declared), named)
            if not storage.is_remote(named) and not storage.is_remote(declared)
            else _under(declared.rstrip("/"), named)
        )
        if not inside:
            raise MetadataError(
                f"{meta_url} indexes objects under {declared[:200]}, outside the folder of --meta "
                f"({named}); pass --root with the dataset folder to read them (objects are read only "
                "from under the root you name, never one a file declares)"
            )
    return named


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_selection(
    root: str, root_given: bool, selected: int, rows, splits: str, frac: float, verb: str, st=None
) -> None:
    """The input checks every command that reads the patches makes before it starts (the
    same refusals, the same exit code 2): a named root that does not exist (under the
    ``Storage`` ``st``), nothing selected."""
    if root_given and not (st or storage.Storage()).exists(root):
        raise MetadataError(f"dataset root {root} does not exist")
    if not selected:
        raise MetadataError(
            f"the metadata selects no patch (rows: {', '.join(map(str, rows))}; --splits {splits}, "
            f"--frac {frac:g}): nothing to {verb}"
        )


def record_columns(table: pa.Table) -> list[str]:
    """The columns of ``table`` that rows and records use."""
    return [c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS + URL_COLUMNS if c in table.column_names]


def table_rows(table: pa.Table, source: int = 0, indices: list[int] | None = None) -> list[dict]:
    """Rows (all, or those at ``indices``) as plain dicts, each tagged with its (source file,
    row index) for tie-breaking."""
    table = table.select(record_columns(table))
    if indices is None:
        indices = range(table.num_rows)
    else:
        table = table.take(pa.array(indices, type=pa.int64()))
    rows = table.to_pylist()
    for i, r in zip(indices, rows, strict=True):
        r["_source"] = source
        r["_row"] = i
    return rows


def check_row(row: dict, root: str | None = None) -> dict:
    """Validate one row; returns a clean patch record or raises PatchError (stage metadata).

    The clean record holds patch_id, s1_name, split, labels (canonical order), country
    and either ``urls`` (the 15 object URLs of the ``url_*`` columns) or ``root`` (the URLs
    follow from it by the reBEN naming rules): ``record_urls`` gives them.
    """

    def bad(reason, detail):
        raise failures.PatchError(failures.METADATA, reason, detail)

    for col in REQUIRED_COLUMNS:
        if row.get(col) is None:
            bad("missing_field", f"column {col!r} is null; every row needs {', '.join(REQUIRED_COLUMNS)}")
    pid, s1, split, labels = row["patch_id"], row["s1_name"], row["split"], row["labels"]
    if not isinstance(pid, str) or not PATCH_ID_RE.match(pid):
        bad(
            "malformed_patch_id",
            f"patch_id {str(pid)[:80]!r} does not match the reBEN pattern "
            "S2[AB]_MSIL2A_<date>T<time>_N9999_R<orbit>_T<tile>_<x>_<y>; fix or drop the row",
        )
    if not isinstance(s1, str) or not S1_NAME_RE.match(s1):
        bad(
            "malformed_s1_name",
            f"s1_name {str(s1)[:80]!r} does not match the reBEN pattern "
            "S1[AB]_IW_GRDH_1SDV_<date>T<time>_<tile>_<x>_<y>; fix or drop the row",
        )
    if not isinstance(split, str):
        bad(
            "unknown_split",
            f"split {str(split)[:40]} is {type(split).__name__}, not a name; the split column holds "
            f"the names {', '.join(SPLITS)}",
        )
    if split not in SPLITS:
        hint = (
            f"; the metadata uses {SPLIT_ALIASES[split]!r}" if isinstance(split, str) and split in SPLIT_ALIASES else ""
        )
        bad("unknown_split", f"split {str(split)[:40]!r} is unknown{hint}; use one of {', '.join(SPLITS)}")
    if isinstance(labels, (str, bytes, dict)) or not hasattr(labels, "__iter__"):
        bad("unknown_label", f"labels must be a list of class names, got {type(labels).__name__}")
    labels = list(labels)
    if not labels:
        bad("empty_labels", "the row has no labels; every reBEN patch has 1-11 of the 19 classes")
    if not all(isinstance(lab, str) for lab in labels):
        kinds = sorted({type(lab).__name__ for lab in labels if not isinstance(lab, str)})
        bad(
            "unknown_label",
            f"labels must be a flat list of class names (text); this row's list holds {', '.join(kinds)} "
            "(a nested list?): give each patch a list of the 19 class names",
        )
    unknown = [lab for lab in labels if lab not in CLASS_INDEX]
    if unknown:
        bad(
            "unknown_label",
            f"label(s) {', '.join(repr(str(u)[:60]) for u in unknown[:3])} are not among the "
            "19 classes (schemas.classes.CLASS_NAMES); use the official 19-class names",
        )
    # A record carries a reference, not 15 URLs: the root when the URLs follow the reBEN
    # naming (workers derive them), the URLs only when the metadata lists them. Records are
    # buffered between stages, so this is most of their size (3.4 kB -> 0.5 kB).
    where: dict = {}
    if all(row.get(c) for c in URL_COLUMNS):
        where["urls"] = {k: row[f"url_{k}"] for k in OBJECT_KEYS}
        if root is not None:  # the listed objects must lie under it (transforms.containment, on fetch)
            where["root"] = root
    elif root is not None:
        object_urls(root, pid, s1)  # the names parse (checked here, once, not on the worker)
        where["root"] = root
    else:
        bad(
            "missing_field",
            "no dataset root given and the row has no url_* columns; pass --root or run `benbeam index` first",
        )
    country = row.get("country")
    return {
        "patch_id": pid,
        "s1_name": s1,
        "split": split,
        "labels": tuple(sorted(set(labels), key=CLASS_INDEX.__getitem__)),
        "country": country if isinstance(country, str) else "",
        **where,
    }


def record_urls(rec: dict) -> dict[str, str]:
    """The 15 object URLs of a clean record (listed, or derived from its root)."""
    urls = rec.get("urls")
    return urls if urls else object_urls(rec["root"], rec["patch_id"], rec["s1_name"])


def split_counts(tables, splits, frac: float) -> dict[str, int]:
    """Rows per split that a conversion selects (``--frac`` sample, ``--splits``), counted
    before row checks. Decides the shard count of each split up front, in the driver, so
    that no runner needs a side input for it."""
    from collections import Counter

    counts: Counter = Counter()
    for table in tables:
        if "patch_id" not in table.column_names or "split" not in table.column_names:
            continue
        for pid, split in zip(table.column("patch_id").to_pylist(), table.column("split").to_pylist(), strict=True):
            s = selected_split(pid, split, splits, frac)
            if s is not None:
                counts[s] += 1
    return dict(counts)


def selected_split(patch_id, split, splits, frac: float):
    """The split a row is accounted under if a conversion selects it (in the ``frac``
    sample, and its split among ``splits`` unless that split is invalid: such a row is
    selected, to become a dead letter), else None."""
    if not sampled(patch_id, frac):
        return None
    s = row_split({"split": split})
    if splits and s in SPLITS and s not in splits:
        return None
    return s


def row_split(row: dict) -> str:
    """The split a row is accounted under: its value, even when invalid (``failures.spelling``:
    a missing split is ``null``)."""
    return failures.spelling(row.get("split"))


def row_key(row: dict) -> str:
    """The key a row is grouped under: its patch id (``failures.spelling`` when not a string)."""
    return failures.spelling(row.get("patch_id"))
