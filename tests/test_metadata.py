"""Metadata rows: validation reasons, deterministic nested sampling, shard keys, index."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigearthnet_beam.beam_pipeline.index import index_table
from bigearthnet_beam.schemas import failures, manifest
from bigearthnet_beam.schemas.naming import OBJECT_KEYS, relative_paths
from bigearthnet_beam.transforms import metadata as md

PID = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"
S1 = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_75_43"


def row(**kw):
    r = {
        "patch_id": PID,
        "s1_name": S1,
        "split": "train",
        "labels": ["Pastures", "Arable land"],
        "country": "Austria",
        "_source": 0,
        "_row": 0,
    }
    r.update(kw)
    return r


def test_clean_row_gives_canonical_labels_and_15_urls(tmp_path):
    import pickle

    rec = md.check_row(row(), str(tmp_path))
    assert rec["labels"] == ("Arable land", "Pastures")  # canonical order: 2 before 4
    assert "urls" not in rec and rec["root"] == str(tmp_path)  # a reference, not 15 URLs
    assert len(pickle.dumps(rec)) < 700
    urls = md.record_urls(rec)
    assert set(urls) == set(OBJECT_KEYS) and len(urls) == 15
    rel = relative_paths(PID, S1)
    assert urls["VV"] == f"{tmp_path}/{rel['VV']}"
    assert urls["reference_map"].endswith(f"Reference_Maps/{PID.rsplit('_', 2)[0]}/{PID}/{PID}_reference_map.tif")


@pytest.mark.parametrize(
    "change,reason,needle",
    [
        ({"patch_id": None}, "missing_field", "patch_id"),
        ({"patch_id": "S2A_bad"}, "malformed_patch_id", "S2A_bad"),
        ({"patch_id": "../../etc/passwd"}, "malformed_patch_id", "passwd"),
        ({"s1_name": "S1A_nope"}, "malformed_s1_name", "S1A_nope"),
        ({"split": "val"}, "unknown_split", "'validation'"),
        ({"split": "holdout"}, "unknown_split", "train, validation, test"),
        ({"labels": ["Arable land", "Lava"]}, "unknown_label", "Lava"),
        ({"labels": []}, "empty_labels", "no labels"),
        ({"labels": "Arable land"}, "unknown_label", "list"),
    ],
)
def test_bad_rows_are_dead_lettered_with_actionable_reasons(tmp_path, change, reason, needle):
    with pytest.raises(failures.PatchError) as e:
        md.check_row(row(**change), str(tmp_path))
    assert e.value.stage == failures.METADATA and e.value.reason == reason
    assert needle in e.value.detail


def test_a_value_that_is_no_string_is_accounted_under_its_json_spelling():
    """The accounting key of an invalid split or patch id is what the manifest's and dead letters'
    JSON would show (a missing split is "null", not Python's "None")."""
    values = ("train", "bogus", None, 3, 1.5, True)
    want = ["train", "bogus", "null", "3", "1.5", "true"]
    assert [md.row_split({"split": v}) for v in values] == want
    assert [md.row_key({"patch_id": v}) for v in values] == want
    assert md.row_split({}) == "null" and md.row_split({"split": b"x"}) == "b'x'"
    dead = failures.dead_letter(None, failures.METADATA, "missing_field", "x", split=None)
    assert dead["patch_id"] == "null" and dead["split"] is None  # no split known: null in the JSON


def test_sampling_is_deterministic_and_nested():
    ids = [f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{x:02d}_{y:02d}" for x in range(60) for y in range(60)]
    s001 = {i for i in ids if md.sampled(i, 0.01)}
    s01 = {i for i in ids if md.sampled(i, 0.1)}
    assert s001 <= s01
    assert 0.05 < len(s01) / len(ids) < 0.15
    assert s01 == {i for i in ids if md.sampled(i, 0.1)}
    # an independent salt gives a different sample of the same size
    other = {i for i in ids if md.sampled(i, 0.1, salt="stats")}
    assert other != s01 and 0.05 < len(other) / len(ids) < 0.15


def test_shard_keys_are_stable_and_spread():
    ids = [f"S2B_MSIL2A_20180525T94031_N9999_R036_T35VLH_{i:02d}_{j:02d}" for i in range(30) for j in range(30)]
    n = md.shard_count(len(ids), 100)
    assert n == 9
    idx = [md.shard_index(i, n) for i in ids]
    assert idx == [md.shard_index(i, n) for i in ids]
    counts = [idx.count(k) for k in range(n)]
    assert min(counts) > 50 and max(counts) < 150
    assert md.hash_unit("abc", "shard") == pytest.approx(md.hash_unit("abc", "shard"))
    assert md.shard_count(0, 100) == 1


def _parquet(path, table):
    pq.write_table(table, path)
    return str(path)


def test_read_table_errors_are_clear(tmp_path):
    with pytest.raises(md.MetadataError, match="does not exist"):
        md.read_table(str(tmp_path / "nope.parquet"))
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(md.MetadataError, match="empty"):
        md.read_table(str(tmp_path / "empty.parquet"))
    (tmp_path / "text.parquet").write_text("patch_id,split\n")
    with pytest.raises(md.MetadataError, match="not a readable parquet"):
        md.read_table(str(tmp_path / "text.parquet"))
    p = _parquet(tmp_path / "cols.parquet", pa.table({"patch_id": [PID], "split": ["train"]}))
    with pytest.raises(md.MetadataError, match="s1_name, labels"):
        md.read_table(p)
    good = _parquet(
        tmp_path / "good.parquet",
        pa.table({"patch_id": [PID], "s1_name": [S1], "split": ["train"], "labels": [["Pastures"]]}),
    )
    table, sha = md.read_table(good)
    assert table.num_rows == 1 and len(sha) == 64
    rows = md.table_rows(table, source=3)
    assert rows[0]["_source"] == 3 and rows[0]["_row"] == 0


def test_index_adds_urls_and_reports_malformed_names(tmp_path):
    t = pa.table(
        {
            "patch_id": [PID, "garbage"],
            "s1_name": [S1, S1],
            "split": ["train", "test"],
            "labels": [["Pastures"], ["Pastures"]],
        }
    )
    out, errors = index_table(t, "s3://bucket/reben")
    assert out.num_rows == 2 and [e["row"] for e in errors] == [1]
    r0, r1 = out.to_pylist()
    assert r0["url_B8A"] == f"s3://bucket/reben/{relative_paths(PID, S1)['B8A']}"
    assert r0["index_error"] is None
    assert r1["url_B02"] is None and "malformed patch_id" in r1["index_error"]
    # the indexed rows are used as given (no root needed)
    rec = md.check_row({**r0, "_source": 0, "_row": 0}, root=None)
    assert md.record_urls(rec)["VH"] == r0["url_VH"]
    buf = io.BytesIO()
    pq.write_table(out, buf)
    assert pq.read_table(io.BytesIO(buf.getvalue())).column_names[-1] == "index_error"


def test_split_check_names_the_fix():
    assert manifest.check_split("validation") == "validation"
    with pytest.raises(ValueError, match="the metadata uses 'validation'"):
        manifest.check_split("val")
