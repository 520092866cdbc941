"""``benbeam index``: add, per patch, the URL of each of its 15 objects to the metadata.

URLs are derived from the names by the reBEN rules (schemas.naming). A row whose
patch_id or s1_name is malformed keeps null URLs and gets an ``index_error`` saying
why: it is reported, never guessed. The output keeps every input column and row.
"""

from __future__ import annotations

import io
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from bigearthnet_beam.beam_pipeline.options import add_storage_args
from bigearthnet_beam.schemas import failures
from bigearthnet_beam.schemas.naming import OBJECT_KEYS, object_urls
from bigearthnet_beam.transforms import flagtypes, outdir
from bigearthnet_beam.transforms import metadata as md
from bigearthnet_beam.transforms.cli_args import storage_from_args


def index_table(table: pa.Table, root: str) -> tuple[pa.Table, list[dict]]:
    """Return the table with ``url_<KEY>`` columns and ``index_error``, plus the errors."""
    pids = table.column("patch_id").to_pylist()
    s1s = table.column("s1_name").to_pylist()
    cols: dict[str, list] = {f"url_{k}": [] for k in OBJECT_KEYS}
    errors_col: list = []
    errors: list[dict] = []
    for i, (pid, s1) in enumerate(zip(pids, s1s, strict=True)):
        try:
            urls = object_urls(root, pid, s1)
        except ValueError as e:
            urls = None
            errors.append({"row": i, "patch_id": failures.spelling(pid), "error": str(e)})
            errors_col.append(str(e))
        else:
            errors_col.append(None)
        for k in OBJECT_KEYS:
            cols[f"url_{k}"].append(urls[k] if urls else None)
    drop = [c for c in table.column_names if c in cols or c == "index_error"]
    out = table.drop_columns(drop) if drop else table
    for name, values in cols.items():
        out = out.append_column(name, pa.array(values, pa.string()))
    out = out.append_column("index_error", pa.array(errors_col, pa.string()))
    meta = dict(out.schema.metadata or {})
    meta[md.ROOT_KEY] = str(root).encode("utf-8")  # objects are read only from under this root
    return out.replace_schema_metadata(meta), errors


def run(argv: list[str] | None = None) -> int:
    """``benbeam index``: write the metadata with each patch's object URLs as a parquet; the exit code."""
    ap = flagtypes.Parser(prog="benbeam index", allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("--meta", required=True, help="metadata.parquet (local, s3:// or gs://)")
    ap.add_argument("--root", default=None, help="dataset root (default: the folder of --meta)")
    ap.add_argument("--out", type=flagtypes.output, required=True, help="output parquet (local, s3:// or gs://)")
    ap.add_argument(
        "--include_snow_cloud",
        default=None,
        metavar="PARQUET",
        help="append the rows of this metadata parquet (same schema)",
    )
    add_storage_args(ap)
    args = ap.parse_args(argv)
    st = storage_from_args(args)
    outdir.check_writable(args.out)  # before the metadata is read: exit 3, one line
    root = md.named_root(args.root, args.meta)  # absolute: the index works from any folder
    try:
        tables = [md.read_table(args.meta, st)[0]]
        if args.include_snow_cloud:
            tables.append(md.read_table(args.include_snow_cloud, st)[0])
        table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    except (md.MetadataError, pa.ArrowInvalid) as e:
        print(f"benbeam index: error: {e}", file=sys.stderr)
        return 2
    out, errors = index_table(table, root)
    buf = io.BytesIO()
    pq.write_table(out, buf)
    st.write_bytes_atomic(args.out, buf.getvalue())
    print(f"indexed {out.num_rows} patches under {root} -> {args.out}")
    if errors:
        print(f"{len(errors)} row(s) with malformed names (url_* left null, see column index_error):", file=sys.stderr)
        for e in errors[:10]:
            print(f"  row {e['row']}: {e['error']}", file=sys.stderr)
        if len(errors) > 10:
            print(f"  ... and {len(errors) - 10} more", file=sys.stderr)
    return 0
