"""One object check and one row check, shared by the commands that read patches.

``benbeam validate`` and ``benbeam convert`` give the same verdict for the same object (a
symlinked patch folder, a FIFO, a directory in place of a band file: W2) and the same exit
code for the same input (a 0-row parquet, a missing root: W10). A row whose labels are
nested lists (W5), whose patch id is not text (W6) or uses non-ASCII digits (W9) is a dead
letter with a reason, and every input row is accounted for.
"""

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigearthnet_beam.beam_pipeline.cli import main
from bigearthnet_beam.schemas import failures, manifest
from bigearthnet_beam.schemas.naming import PATCH_ID_RE, S1_NAME_RE, object_urls
from bigearthnet_beam.transforms import containment
from bigearthnet_beam.transforms import metadata as md
from bigearthnet_beam.transforms.patch import fetch_objects

IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    base = tmp_path_factory.mktemp("objects")
    root = base / "reben"
    assert main(["synth", "--out", str(root), "--n", "4", "--seed", "6", "--workers", "1"]) == 0
    return {"base": base, "root": root, "rows": pq.read_table(root / "metadata.parquet").to_pylist()}


def _break(root, row, how):
    """Replace one patch's objects the way ``how`` says; returns the reason both commands must give."""
    urls = object_urls(str(root), row["patch_id"], row["s1_name"])
    b02 = urls["B02"]
    if how == "fifo":
        os.remove(b02)
        os.mkfifo(b02)
        return "not_a_file"
    if how == "directory":
        os.remove(b02)
        os.mkdir(b02)
        return "not_a_file"
    if how == "empty":
        open(b02, "wb").close()
        return "empty_object"
    if how == "symlinked_folder":  # the patch folder is a symlink to a folder inside the root: fine
        folder = os.path.dirname(b02)
        moved = os.path.join(str(root), "moved-" + os.path.basename(folder))
        shutil.move(folder, moved)
        os.symlink(moved, folder)
        return None
    if how == "symlinked_folder_out":  # ... or outside it: refused
        folder = os.path.dirname(b02)
        moved = os.path.join(str(root) + "-elsewhere", os.path.basename(folder))
        os.makedirs(os.path.dirname(moved), exist_ok=True)
        shutil.move(folder, moved)
        os.symlink(moved, folder)
        return "outside_root"
    raise AssertionError(how)


# a validate and a convert each (~2 s): in the full suite
@pytest.mark.slow
@pytest.mark.parametrize("how", ["fifo", "directory", "empty", "symlinked_folder", "symlinked_folder_out"])
def test_validate_and_convert_give_one_verdict_per_object(replica, tmp_path, how):
    root = tmp_path / "reben"
    shutil.copytree(replica["root"], root, symlinks=True)
    row = replica["rows"][0]
    want = _break(root, row, how)
    urls = object_urls(str(root), row["patch_id"], row["s1_name"])
    # the one check, as each command makes it
    try:
        containment.check_local_object(urls["B02"], str(root), what="B02 object")
        checked = None
    except failures.PatchError as e:
        checked = e.reason
    try:
        fetch_objects(urls, root=str(root))
        read = None
    except failures.PatchError as e:
        read = e.reason
    assert checked == read == want
    # and through both commands
    out = tmp_path / "v.json"
    main(["validate", "--meta", str(root / "metadata.parquet"), "--out", str(out), *IN_PROCESS])
    rep = json.loads(out.read_text())
    by_validate = {f["patch_id"]: f["reasons"][0]["reason"] for f in rep["failures"]}
    ds = tmp_path / "ds"
    argv = ["convert", "--meta", str(root / "metadata.parquet"), "--out", str(ds), "--max_failure_fraction", "1"]
    assert main([*argv, *IN_PROCESS]) == 0
    dead = [json.loads(x) for x in (ds / manifest.FAILURES_JSONL).read_text().splitlines()]
    by_convert = {d["patch_id"]: d["reason"] for d in dead}
    assert by_validate == by_convert == ({row["patch_id"]: want} if want else {})


# --------------------------------------------------------------------------- rows


GOOD = {
    "patch_id": "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57",
    "s1_name": "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_26_57",
    "split": "train",
    "labels": ["Urban fabric"],
}


@pytest.mark.parametrize(
    "change,reason,words",
    [
        ({"labels": [["Urban fabric"], ["Arable land"]]}, "unknown_label", "nested list"),
        ({"labels": [1, 2]}, "unknown_label", "flat list of class names"),
        ({"labels": b"Urban fabric"}, "unknown_label", "list of class names"),
        ({"split": 1}, "unknown_split", "int, not a name"),
        ({"patch_id": b"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"}, "malformed_patch_id", "S2A"),
        ({"patch_id": GOOD["patch_id"].replace("26_57", "２６_５７")}, "malformed_patch_id", "２６"),
        ({"s1_name": GOOD["s1_name"].replace("_26_57", "_２６_５７")}, "malformed_s1_name", "２６"),
    ],
)
def test_a_bad_row_is_a_dead_letter_with_a_reason_a_person_can_act_on(change, reason, words):
    with pytest.raises(failures.PatchError) as e:
        md.check_row({**GOOD, **change}, "/data/reben")
    assert e.value.reason == reason and words in e.value.detail, e.value.detail


def test_ids_and_tile_names_are_ascii():
    assert PATCH_ID_RE.match(GOOD["patch_id"]) and S1_NAME_RE.match(GOOD["s1_name"])
    for pattern, text in [(PATCH_ID_RE, GOOD["patch_id"]), (S1_NAME_RE, GOOD["s1_name"])]:
        assert not pattern.match(text.replace("2017", "２０１７"))
    from bigearthnet_beam.synth.tiles import check_args

    with pytest.raises(ValueError):
        check_args(120, "geotiff", "L2A", "３３UUP", "20240715T101031", 0)


@pytest.mark.slow
def test_binary_patch_ids_are_dead_letters_and_every_row_is_accounted_for(replica, tmp_path, capsys):
    table = pq.read_table(replica["root"] / "metadata.parquet")
    ids = [p.encode() for p in table.column("patch_id").to_pylist()]
    ids[0] = b"\xff\xfe" + ids[0][2:]  # not UTF-8
    ids[1] = ids[1][:5] + b"\x80" + ids[1][6:]
    table = table.set_column(table.column_names.index("patch_id"), "patch_id", pa.array(ids, pa.binary()))
    meta = replica["root"] / "binary.parquet"
    pq.write_table(table, meta)
    stats = tmp_path / "clean"
    assert main(["convert", "--meta", str(replica["root"] / "metadata.parquet"), "--out", str(stats), *IN_PROCESS]) == 0
    out = tmp_path / "ds"
    argv = ["convert", "--meta", str(meta), "--out", str(out), "--stats", str(stats / manifest.STATS_JSON)]
    assert main([*argv, "--max_failure_fraction", "1", *IN_PROCESS]) == 0
    man = json.loads((out / manifest.MANIFEST).read_text())
    dead = [json.loads(x) for x in (out / manifest.FAILURES_JSONL).read_text().splitlines()]
    assert sorted(d["reason"] for d in dead) == ["malformed_patch_id", "malformed_patch_id"]
    assert any("\\xff\\xfe" in d["patch_id"] for d in dead)
    splits = man["splits"].values()
    assert sum(s["input"] for s in splits) == table.num_rows == sum(s["written"] + s["failed"] for s in splits)


# --------------------------------------------------------------------------- the same codes


@pytest.mark.parametrize("case", ["zero_rows", "missing_root", "missing_meta", "crafted_root"])
def test_validate_and_convert_exit_with_the_same_code_for_the_same_input(replica, tmp_path, case, capsys):
    meta, extra = str(replica["root"] / "metadata.parquet"), []
    if case == "zero_rows":
        meta = str(tmp_path / "empty.parquet")
        pq.write_table(pq.read_table(replica["root"] / "metadata.parquet").slice(0, 0), meta)
    elif case == "missing_root":
        extra = ["--root", str(tmp_path / "no-such-root")]
    elif case == "missing_meta":
        meta = str(tmp_path / "no-such.parquet")
    else:
        t = pq.read_table(replica["root"] / "metadata.parquet")
        meta = str(tmp_path / "crafted.parquet")
        pq.write_table(t.replace_schema_metadata({md.ROOT_KEY: b"/"}), meta)
    codes, lines = [], []
    for cmd, out in [("validate", tmp_path / "v.json"), ("convert", tmp_path / "out")]:
        codes.append(main([cmd, "--meta", meta, *extra, "--out", str(out), *IN_PROCESS]))
        err = capsys.readouterr().err
        lines.append([x for x in err.splitlines() if x.startswith("benbeam")])
    assert codes == [2, 2], (codes, lines)
    assert all(len(x) == 1 for x in lines), lines
