"""``bigearthnet_beam.pretrained``: the reBEN authors' models loaded from a folder and from the
Hugging Face cache (offline), against a checkpoint and logits written by configilm itself,
against a direct timm forward, and the preprocessing and class order checked value for value."""

import json
import os

import numpy as np
import pytest

from bigearthnet_beam import pretrained
from bigearthnet_beam.schemas import errors
from bigearthnet_beam.schemas.classes import CLASS_INDEX, CLASS_NAMES
from bigearthnet_beam.trainer.pretrained import authors
from tests.pretrained_fixtures import hub_cache, patch_bands, save_authors_model, timm_reference, torch

CONFIGILM_DIR = os.path.join(os.path.dirname(__file__), "data", "pretrained_configilm")
FAMILIES = [("test_resnet", 10), ("test_convnext", 12), ("test_efficientnet", 2)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One tiny model per timm family, saved in the authors' layout."""
    root = tmp_path_factory.mktemp("models")
    return {name: save_authors_model(str(root / name), name, ch, seed=i) for i, (name, ch) in enumerate(FAMILIES)}


def independent_input(raw: dict, order) -> np.ndarray:
    """The authors' preprocessing computed with torch: F.interpolate(mode="nearest") of every band
    that is not 120 px, then (x - mean) / std in float32 (torchvision's Normalize)."""
    f = torch.nn.functional
    chans = []
    for b in order:
        t = torch.from_numpy(np.asarray(raw[b], dtype=np.float32))[:, None]
        if t.shape[-1] != 120:
            t = f.interpolate(t, size=(120, 120), mode="nearest")
        chans.append(t[:, 0])
    x = torch.stack(chans, dim=1)
    mean = torch.tensor([authors.MEAN_120_NEAREST[b] for b in order], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor([authors.STD_120_NEAREST[b] for b in order], dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - mean) / std).numpy()


# --------------------------------------------------------------------------- pinned by the authors' own code


def test_configilm_checkpoint_gives_configilms_input_and_logits():
    """A checkpoint saved by configilm 0.7.1's ILMConfiguration + ConfigILM (through the hub mixin)
    and the logits configilm's own preprocessing and forward gave (tests/data/pretrained_configilm)."""
    with open(os.path.join(CONFIGILM_DIR, "expected.json")) as fh:
        want = json.load(fh)
    m = pretrained.load(CONFIGILM_DIR)
    assert list(m.bands) == want["bands"]  # their STANDARD_BANDS[12]
    assert list(authors.AUTHORS_CLASS_ORDER) == want["labels"]  # their NEW_LABELS
    x = m.preprocess(patch_bands(want["patches"], m.bands))
    np.testing.assert_allclose(x.astype(np.float64).sum(axis=(0, 2, 3)), want["input_sum_per_channel"], rtol=1e-9)
    np.testing.assert_allclose(m.logits(x), np.array(want["logits"]), rtol=0, atol=2e-5)
    probs = m.predict_proba(patch_bands(want["patches"], m.bands))
    expect = 1 / (1 + np.exp(-np.array(want["logits"])))
    for k, name in enumerate(want["labels"]):
        np.testing.assert_allclose(probs[:, CLASS_INDEX[name]], expect[:, k], atol=2e-6)


# --------------------------------------------------------------------------- two timm families, folder + hub cache


@pytest.mark.parametrize("name,channels", FAMILIES)
def test_module_and_probabilities_match_a_direct_timm_forward(folders, name, channels):
    m = pretrained.load(folders[name])
    assert m.architecture == name and len(m.bands) == channels
    assert m.bands == authors.BANDS_FOR_CHANNELS[channels]
    assert not m.module.training
    ref = timm_reference(folders[name])
    raw = patch_bands(4, m.bands)
    x = independent_input(raw, m.bands)
    with torch.no_grad():
        want_logits = ref(torch.from_numpy(x)).numpy()
        got_logits = m.module(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got_logits, want_logits)
    want = torch.sigmoid(torch.from_numpy(want_logits)).numpy()
    got = m.predict_proba(raw, batch_size=3)
    assert got.shape == (4, 19) and got.dtype == np.float32
    for a, label in enumerate(sorted(CLASS_NAMES)):  # authors' column a = canonical column CLASS_INDEX[label]
        np.testing.assert_allclose(got[:, CLASS_INDEX[label]], want[:, a], rtol=1e-6, atol=1e-7)
    assert np.ptp(got) > 0.05  # the random weights give varied outputs: the comparison means something


def test_hub_cache_offline_with_revisions(folders, tmp_path, monkeypatch):
    """An id resolves through a filled hub cache with HF_HUB_OFFLINE=1; an uncached id is exit 3."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hub"
    commit = hub_cache(str(cache), "BIFOLD-Test/tiny-resnet-s2", folders["test_resnet"])
    hub_cache(str(cache), "BIFOLD-Test/tiny-resnet-s2", folders["test_convnext"], revision="v2")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = patch_bands(2, authors.BANDS_FOR_CHANNELS[10])
    direct = pretrained.load(folders["test_resnet"]).predict_proba(raw)
    for ref, kw in [
        ("BIFOLD-Test/tiny-resnet-s2", {}),
        ("BIFOLD-Test/tiny-resnet-s2@main", {}),
        (f"BIFOLD-Test/tiny-resnet-s2@{commit}", {}),
        ("BIFOLD-Test/tiny-resnet-s2", {"revision": "main"}),
    ]:
        m = pretrained.load(ref, **kw)
        assert str(cache) in m.weights_path and m.architecture == "test_resnet"
        np.testing.assert_array_equal(m.predict_proba(raw), direct)
    assert pretrained.load("BIFOLD-Test/tiny-resnet-s2@v2").architecture == "test_convnext"
    with pytest.raises(pretrained.ModelNotAvailableError) as e:
        pretrained.load("BIFOLD-Test/not-cached")
    assert errors.exit_code(e.value) == 3 and "hf download BIFOLD-Test/not-cached config.json" in str(e.value)
    with pytest.raises(pretrained.PretrainedModelError, match="revision"):
        pretrained.load("BIFOLD-Test/tiny-resnet-s2@main", revision="v2")


# --------------------------------------------------------------------------- preprocessing and class order


def test_preprocessing_value_for_value():
    order = authors.BANDS_FOR_CHANNELS[12]
    raw = patch_bands(3, order)
    assert raw["B05"].shape == (3, 60, 60) and raw["B02"].shape == (3, 120, 120)
    got = authors.preprocess(raw, order)
    np.testing.assert_array_equal(got, independent_input(raw, order))
    # nearest: a 20 m pixel (r, c) fills the 10 m pixels (2r..2r+1, 2c..2c+1)
    up = authors.stack_bands(raw, order)[:, order.index("B05")]
    for r, c in [(0, 0), (0, 59), (37, 12), (59, 59)]:
        assert (up[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] == raw["B05"][:, r, c][:, None, None]).all()
    # a 60 m band (B01) repeats 6 x 6, and 120-px bands pass unchanged
    b01 = patch_bands(1, ["B01"])["B01"]
    np.testing.assert_array_equal(authors.upsample_nearest(b01)[0, 6:12, 12:18], np.full((6, 6), b01[0, 1, 2]))
    pre = {b: authors.upsample_nearest(raw[b]) for b in order}
    np.testing.assert_array_equal(authors.preprocess(pre, order), got)


def test_statistics_are_configilms_120_nearest():
    # a few values as printed in configilm 0.7.1 BENv2_utils.means/stds["120_nearest"] (float32 exact)
    assert authors.MEAN_120_NEAREST["B02"] == 438.3720703125 and authors.STD_120_NEAREST["B02"] == 607.02685546875
    assert authors.MEAN_120_NEAREST["VV"] == -12.643863677978516 and authors.STD_120_NEAREST["VH"] == 5.590505599975586
    # 120_nearest differs from 60_nearest for the 10 m bands: the right table was typed
    assert authors.MEAN_120_NEAREST["B08"] == 2193.2919921875
    mean, std = authors.mean_std(("B05", "VH"))
    assert mean.dtype == np.float32 and mean.shape == (2, 1, 1) and std[1, 0, 0] == np.float32(5.590505599975586)


def test_class_order_mapping():
    lex = sorted(CLASS_NAMES)
    assert lex[0] == "Agro-forestry areas" and CLASS_NAMES[0] == "Urban fabric"
    eye = np.eye(19, dtype=np.float32)  # row a: a logit vector with only the authors' column a set
    mapped = authors.to_canonical(eye)
    for a, name in enumerate(lex):
        assert mapped[a].argmax() == CLASS_INDEX[name] and mapped[a].sum() == 1
    assert sorted(authors.TO_CANONICAL.tolist()) == list(range(19))


# --------------------------------------------------------------------------- errors: one clear line each


def test_errors(folders, tmp_path):
    def cfg_copy(name, **changes):
        d = tmp_path / f"m{len(os.listdir(tmp_path))}"
        d.mkdir()
        with open(os.path.join(folders["test_resnet"], "config.json")) as fh:
            cfg = json.load(fh)
        cfg.update(changes)
        (d / "config.json").write_text(json.dumps(cfg))
        (d / "model.safetensors").write_bytes(open(os.path.join(folders[name], "model.safetensors"), "rb").read())
        return str(d)

    cases = [
        (cfg_copy("test_resnet", timm_model_name="no_such_net"), pretrained.UnknownArchitectureError, "no_such_net"),
        (cfg_copy("test_resnet", network_type=1), pretrained.UnknownArchitectureError, "network_type"),
        (cfg_copy("test_resnet", channels=7), pretrained.ChannelCountError, "7 input channels"),
        (cfg_copy("test_resnet", channels=12), pretrained.WeightsMismatchError, "do not fit"),
        (cfg_copy("test_convnext", timm_model_name="test_resnet"), pretrained.WeightsMismatchError, "do not fit"),
        (cfg_copy("test_resnet", classes=10), pretrained.PretrainedModelError, "19"),
        (str(tmp_path), pretrained.PretrainedModelError, "config.json"),
        ("not a model", pretrained.PretrainedModelError, "hub id"),
    ]
    for ref, exc, words in cases:
        with pytest.raises(exc, match=words) as e:
            pretrained.load(ref)
        assert isinstance(e.value, errors.InputError) and errors.exit_code(e.value) == 2, ref
        assert "\n" not in str(e.value)
    m = pretrained.load(folders["test_resnet"])
    raw = patch_bands(2, m.bands)
    del raw["B8A"]
    with pytest.raises(pretrained.MissingBandError, match="missing: \\['B8A'\\]") as e:
        m.predict_proba(raw)
    assert errors.exit_code(e.value) == 2
    raw = patch_bands(2, m.bands)
    raw["B05"] = raw["B05"][:, :50, :50]
    with pytest.raises(pretrained.MissingBandError, match="B05"):
        m.predict_proba(raw)


def test_cuda_device(folders):
    if torch.cuda.is_available():
        m = pretrained.load(folders["test_resnet"], device="cuda")
        raw = patch_bands(2, m.bands)
        np.testing.assert_allclose(
            m.predict_proba(raw), pretrained.load(folders["test_resnet"]).predict_proba(raw), atol=1e-4
        )
        return
    with pytest.raises(pretrained.DeviceUnavailableError, match="no CUDA GPU") as e:
        pretrained.load(folders["test_resnet"], device="cuda")
    assert errors.exit_code(e.value) == 3


def test_ref_detection(folders, tmp_path):
    assert pretrained.is_pretrained_ref(folders["test_resnet"])
    assert pretrained.is_pretrained_ref("BIFOLD-BigEarthNetv2-0/resnet50-s2-v0.2.0")
    assert pretrained.is_pretrained_ref("BIFOLD-BigEarthNetv2-0/resnet50-s2-v0.2.0@main")
    assert not pretrained.is_pretrained_ref("runs/model.keras")
    assert not pretrained.is_pretrained_ref("gs://bucket/model.keras")
    assert not pretrained.is_pretrained_ref(str(tmp_path))  # a folder without config.json


def test_timm_import_stands_in_only_for_missing_torchvision_operators():
    """timm imports; torchvision's fake-kernel registrations are replaced only when its compiled
    operators cannot load (a CUDA torchvision beside a CPU torch), and its Python parts work."""
    import importlib.util
    import sys

    from bigearthnet_beam.trainer.pretrained import timm_import

    timm = timm_import.import_timm()
    assert timm.is_model("resnet50")
    loads = timm_import._extension_loads(importlib.util.find_spec("torchvision"))
    meta = sys.modules["torchvision._meta_registrations"]
    assert (getattr(meta, "__file__", None) is None) == (not loads)
    from torchvision.ops.misc import FrozenBatchNorm2d  # what timm imports from torchvision

    assert FrozenBatchNorm2d(4)(torch.ones(1, 4, 2, 2)).shape == (1, 4, 2, 2)
