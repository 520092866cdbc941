"""The typed manifest: ``build`` from shard records, ``load`` validating the contract with an
error that names the file, and a round trip that keeps the JSON bytes."""

from __future__ import annotations

import json

import pytest

from bigearthnet_beam.schemas import manifest

SHA = "0" * 64


def _record(split, index, count, records, pixels=(), ignored=0, disagreements=0):
    values = [0] * 256
    for c, n in pixels:
        values[c] = n
    values[255] = ignored
    return manifest.ShardRecord.build(
        (split, index, count), "none", {"records": records, "bytes": 10 * records, "sha256": SHA}, values, disagreements
    )


def _manifest(shards=None, selected=None, dead=None) -> manifest.Manifest:
    shards = (
        shards
        if shards is not None
        else [
            _record("train", 1, 2, 1, [(3, 5)], 2),
            _record("train", 0, 2, 2, [(0, 4), (3, 1)], 0, 1),
            _record("test", 0, 1, 0),
        ]
    )
    selected = selected if selected is not None else {"train": 4, "test": 1}
    dead = (
        dead
        if dead is not None
        else [
            {"patch_id": "a", "stage": "fetch", "reason": "missing_object", "detail": "x", "split": "train"},
            {"patch_id": "b", "stage": "check", "reason": "s1_nan", "detail": "y", "split": "test"},
        ]
    )
    splits = manifest.split_entries(selected, shards, dead)
    return manifest.build(
        package_version="9.9",
        options={"out": "/o"},
        meta_info=[{"source": 0, "path": "m", "sha256": SHA, "rows": 5}],
        selected=selected,
        splits=splits,
        dead=dead,
        statistics={"bands": {}},
        files={},
        image_dtype="float32",
        compression="none",
    )


def test_build_sums_the_shard_records_per_split():
    man = _manifest()
    train = man.splits["train"]
    assert (train.input, train.written, train.failed) == (4, 3, 1)
    assert [s.path for s in train.shards] == [manifest.shard_path("train", 0, 2), manifest.shard_path("train", 1, 2)]
    assert train.class_pixel_counts[0] == 4 and train.class_pixel_counts[3] == 6 and train.ignored_pixels == 2
    assert train.class_pixel_frequencies[3] == pytest.approx(6 / 12) and train.label_disagreements == 1
    assert man.splits["test"].class_pixel_frequencies == (0.0,) * len(train.class_pixel_frequencies)
    assert man.failures == {
        "total": 2,
        "by_stage": {"check": 1, "fetch": 1},
        "by_reason": {"missing_object": 1, "s1_nan": 1},
        "file": manifest.FAILURES_JSONL,
    }
    assert man.input == {"metadata": [{"source": 0, "path": "m", "sha256": SHA, "rows": 5}], "rows_selected": 5}


def test_build_refuses_broken_accounting():
    with pytest.raises(RuntimeError, match="accounting broken for split 'train'"):
        _manifest(selected={"train": 9, "test": 1})


def test_load_round_trips_the_json_bytes(tmp_path):
    text = _manifest().dumps()
    (tmp_path / manifest.MANIFEST).write_text(text)
    man, raw = manifest.load(str(tmp_path), lambda url: open(url, "rb").read())
    assert raw == text.encode() and man.dumps() == text and man == _manifest()
    assert man.to_dict() == json.loads(text)


def _broken(tmp_path, change) -> str:
    d = json.loads(_manifest().dumps())
    change(d)
    (tmp_path / manifest.MANIFEST).write_text(json.dumps(d))
    with pytest.raises(manifest.ManifestError) as e:
        manifest.load(str(tmp_path), lambda url: open(url, "rb").read())
    assert str(tmp_path / manifest.MANIFEST) in str(e.value)  # the error names the file
    return str(e.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(schema_version=2), "schema_version 2"),
        (lambda d: d.pop("splits"), "missing splits"),
        (lambda d: d.update(image_dtype=32), "image_dtype is int, not a string"),
        (lambda d: d["splits"]["train"].update(written="3"), "split 'train': written is str, not an integer"),
        (lambda d: d["splits"]["train"]["shards"][0].pop("sha256"), "split 'train' shard 0 lacks one of"),
        (lambda d: d["splits"]["train"]["shards"][0].update(records=True), "records is bool, not an integer"),
        (lambda d: d["splits"]["test"].pop("failed"), "split 'test' lacks failed"),
        (lambda d: d["splits"]["train"].update(failed=0), "breaks written + failed = input"),
        (lambda d: d["splits"]["train"]["shards"][0].update(records=1), "shard record counts do not add up"),
        (lambda d: d.update(classes=list(reversed(d["classes"]))), "classes differ"),
        (lambda d: d.update(compression="zstd"), "compression 'zstd' is not one of"),
        (lambda d: d.update(ignore_index=0), "ignore_index 0 is not 255"),
    ],
)
def test_load_names_what_is_wrong(tmp_path, change, message):
    assert message in _broken(tmp_path, change)


def test_load_of_a_missing_or_unreadable_manifest(tmp_path):
    def read(url):
        return open(url, "rb").read()

    with pytest.raises(manifest.ManifestError, match="has no dataset.json, so it is not a complete dataset.*; do this"):
        manifest.load(str(tmp_path), read, hint="do this")
    (tmp_path / manifest.MANIFEST).write_bytes(b"{not json")
    with pytest.raises(manifest.ManifestError, match="is not valid JSON"):
        manifest.load(str(tmp_path), read)
    (tmp_path / manifest.MANIFEST).write_text("[]")
    with pytest.raises(manifest.ManifestError, match="is not a JSON object"):
        manifest.load(str(tmp_path) + "/", read)
