"""Failures by type, across a runner's process boundary (``transforms.carried``), and every input
row accounted for when a conversion stops for want of statistics (issue 24, W13)."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import bigearthnet_beam as bb
from bigearthnet_beam.transforms.carried import DISK_FULL, WorkerFailure, carried, exit_code_of, message_of


def _disk_full(_):
    with carried():
        raise OSError(errno.ENOSPC, "No space left on device")


def _ours(_):
    with carried():
        raise bb.NoStatisticsError(["B02"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fn", "code", "kind"), [(_disk_full, 3, DISK_FULL), (_ours, 1, "NoStatisticsError")], ids=["disk", "ours"]
)
def test_an_exit_code_survives_the_worker_processes(fn, code, kind):
    """In multi-process mode the driver gets a RuntimeError holding the worker's traceback as text:
    the tag ``carried`` puts in the message still gives the code, never the message's words."""
    opts = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=1"])
    with pytest.raises(Exception) as info:
        with beam.Pipeline(options=opts) as p:
            _ = p | beam.Create([0]) | beam.Map(fn)
    assert exit_code_of(info.value) == (code, kind)
    assert not isinstance(info.value, WorkerFailure)  # the type itself did not survive: the tag did


def test_in_process_the_type_itself_decides():
    with pytest.raises(WorkerFailure) as info:
        _disk_full(None)
    assert exit_code_of(info.value) == (3, DISK_FULL) and "No space left" in message_of(info.value)
    assert exit_code_of(bb.StorageError("refused")) == (3, "StorageError")
    assert exit_code_of(ValueError("No space left on device")) is None  # words decide nothing
    with pytest.raises(KeyError):
        with carried():
            raise KeyError("not ours: unchanged")


@pytest.mark.slow
def test_when_no_statistics_can_be_computed_every_input_row_gets_a_line(tmp_path):
    """``synth --corrupt 1.0`` then ``convert``: exit 1, one line, and failures.jsonl holds a line
    per selected row (the training rows' reasons, ``not_processed`` for the rest)."""

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "bigearthnet_beam", *args], capture_output=True, text=True)

    made = cli("synth", "--out", str(tmp_path / "reben"), "--n", "32", "--seed", "1", "--corrupt", "1.0")
    assert made.returncode == 0, made.stderr[-2000:]
    meta = tmp_path / "reben" / "metadata.parquet"
    r = cli("convert", "--meta", str(meta), "--out", str(tmp_path / "ds"), "--workers", "2")
    assert r.returncode == 1, r.stderr[-2000:]
    said = [line for line in r.stderr.splitlines() if line.startswith("benbeam convert:")]
    assert len(said) == 1 and "no statistics" in said[0], said
    lines = [json.loads(x) for x in (tmp_path / "ds" / "failures.jsonl").read_text().splitlines()]
    splits = pq.read_table(meta).column("split").to_pylist()
    assert len(lines) == len(splits)  # written (0) + failed = input
    assert sorted(d["split"] for d in lines) == sorted(splits)
    assert {d["reason"] for d in lines if d["split"] != "train"} == {"not_processed"}
    assert "not_processed" not in {d["reason"] for d in lines if d["split"] == "train"}
    assert not (tmp_path / "ds" / "dataset.json").exists()
