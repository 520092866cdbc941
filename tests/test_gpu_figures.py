"""``benchmarks/gpu_figures.py`` runs end to end on a CPU machine (``--smoke``): the figures a GPU
machine prints come from the same code."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu_figures.py")


@pytest.mark.slow
def test_gpu_figures_script_runs_end_to_end_on_cpu(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="torch")
    res = subprocess.run(
        [sys.executable, SCRIPT, "--smoke", "--workdir", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    patterns = (
        r"raw: 2\d\d,\d{3} bytes per patch",  # at most 320 KB
        r"float16: 4\d\d,\d{3} bytes per patch",
        r"batch +2, +2 workers: raw +[\d,]+ +float16 +[\d,]+ +raw/float16 [\d.]+ +raw, decoded on the device +[\d,]+ "
        r"\([\d.]+x float16\)",
        r"batch +4: compute only +[\d.]+ steps/s = +[\d,]+ patches/s \| fed by raw .*\| fed by raw, decoded on the "
        r"device +[\d.]+ steps/s",
        r"U-Net \(width 4\) forward, batch 4, cpu \(\d+ threads\): [\d,]+ windows/s",
        r"authors' resnet18 \(10 ch\), batch 4, cpu",
    )
    for pattern in patterns:
        assert re.search(pattern, out), (pattern, out)
    assert "every figure below is a CPU figure" in out
