"""``benbeam evaluate --model <authors' classifier>``: scene-level multi-label metrics on a converted
split, checked against an independent computation (de-normalisation, the authors' preprocessing,
a direct timm forward, average precision and F1 written out here)."""

import json

import numpy as np
import pytest

from tests.pretrained_fixtures import save_authors_model, timm_reference, torch

pytest.importorskip("tensorflow")  # the fixture dataset is written with TensorFlow's TFRecord writer

from bigearthnet_beam.schemas import bands as band_table
from bigearthnet_beam.schemas.classes import CLASS_NAMES
from bigearthnet_beam.trainer.pretrained import authors
from tests.trainer_fixtures import make_tiny_dataset

LEX = sorted(CLASS_NAMES)


def ap_one(t, s):
    """Average precision of one column: over the distinct scores from high to low, the recall gained
    times the precision of everything scored at least that high (equal scores form one step)."""
    t = t.astype(bool)
    if not t.any():
        return np.nan
    ap, prev_recall = 0.0, 0.0
    for v in np.unique(s)[::-1]:
        sel = s >= v
        recall = (t & sel).sum() / t.sum()
        ap += (recall - prev_recall) * (t & sel).sum() / sel.sum()
        prev_recall = recall
    return float(ap)


def independent_metrics(y, p, thr=0.5):
    pred = p >= thr
    tp, fp, fn = (y & pred).sum(0), (~y & pred).sum(0), (y & ~pred).sum(0)
    d = 2 * tp + fp + fn
    per_f1 = np.where(d > 0, 2 * tp / np.maximum(d, 1), np.nan)
    return {
        "map_macro": np.nanmean([ap_one(y[:, k], p[:, k]) for k in range(19)]),
        "map_micro": ap_one(y.ravel(), p.ravel()),
        "macro_f1": np.nanmean(per_f1),
        "micro_f1": 2 * tp.sum() / d.sum(),
    }


def test_evaluate_matches_an_independent_computation(tmp_path, capsys):
    from bigearthnet_beam.trainer.evaluate import evaluate_cli

    ds = make_tiny_dataset(tmp_path / "data", n_train=12, n_val=2, n_test=24, shards=2)
    folder = save_authors_model(str(tmp_path / "m"), "test_resnet", 12, seed=3)
    assert evaluate_cli(["--model", folder, "--data", ds.path, "--split", "test", "--out", str(tmp_path / "ev")]) == 0
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    out = capsys.readouterr().out
    assert "macro AP" in out and "micro F1" in out

    # independently: records in the shards' read order (shard 0 then 1), de-normalised, preprocessed, run
    bands = authors.BANDS_FOR_CHANNELS[12]
    ids, img, _, mh = ds.split_arrays("test")
    order = [k for s in range(2) for k in range(len(ids)) if k % 2 == s]
    stats = ds.manifest["statistics"]["bands"]
    raw = {
        b: img[order][..., band_table.ALL_NAMES.index(b)] * np.float32(stats[b]["std"]) + np.float32(stats[b]["mean"])
        for b in bands
    }
    mean = np.array([authors.MEAN_120_NEAREST[b] for b in bands], np.float32).reshape(1, -1, 1, 1)
    std = np.array([authors.STD_120_NEAREST[b] for b in bands], np.float32).reshape(1, -1, 1, 1)
    x = (np.stack([raw[b] for b in bands], 1) - mean) / std
    with torch.no_grad():
        p = torch.sigmoid(timm_reference(folder)(torch.from_numpy(x.astype(np.float32)))).numpy()
    p = p[:, [LEX.index(n) for n in CLASS_NAMES]]
    want = independent_metrics(mh[order].astype(bool), p)
    m = got["metrics"]
    for k, v in want.items():
        assert m[k] == pytest.approx(v, abs=2e-4), k
    assert got["patches"] == 24 and got["split"] == "test" and got["bands"] == list(bands)
    assert got["metrics"]["threshold"] == 0.5 and len(got["metrics"]["per_class_ap"]) == 19
    # the fixture has no recorded resampling: convert's default (bilinear) is assumed and reported
    assert got["fidelity"]["resampling"] == "bilinear" and not got["fidelity"]["exact"]
    assert any("nearest" in n for n in got["fidelity"]["notes"])


def test_evaluate_errors(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as c

    from bigearthnet_beam.trainer.evaluate import evaluate_cli

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)  # nothing leaves the machine

    ds = make_tiny_dataset(tmp_path / "data", n_train=4, n_val=0, n_test=2, shards=1)
    folder = save_authors_model(str(tmp_path / "m"), "test_resnet", 10, seed=3)
    assert (
        evaluate_cli(["--model", folder, "--data", ds.path, "--split", "validation", "--out", str(tmp_path / "e")]) == 2
    )
    assert "validation" in capsys.readouterr().err
    assert evaluate_cli(["--model", "BIFOLD-Test/absent", "--data", ds.path, "--out", str(tmp_path / "e")]) == 3
    assert "BIFOLD-Test/absent" in capsys.readouterr().err
