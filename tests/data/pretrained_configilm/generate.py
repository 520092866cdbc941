"""Writes this folder's checkpoint and expected.json with the reBEN authors' OWN code (configilm 0.7.1).

Not run by the tests (configilm needs numpy < 2 and transformers < 5, which need
huggingface_hub < 1: it cannot share the project's environment). Recreate with a side venv:

    python -m venv /tmp/cfg
    cp <project venv>/lib/python3.11/site-packages/*.pth /tmp/cfg/lib/python3.11/site-packages/
    /tmp/cfg/bin/pip install --no-deps configilm==0.7.1 timm==1.0.31 torchvision==0.28.0 \
        transformers==4.57.6 tokenizers==0.22.1 huggingface_hub==0.36.0 lmdb appdirs
    /tmp/cfg/bin/python tests/data/pretrained_configilm/generate.py

The checkpoint: ``ILMConfiguration`` + ``ConfigILM`` wrapped, as in the authors' training code,
in a module whose ``model`` attribute is the ConfigILM, saved by ``PyTorchModelHubMixin``
(``save_pretrained`` with the dataclass config). The logits: their evaluation preprocessing
(``stack_and_interpolate(..., upsample_mode="nearest")`` per patch, then ``default_transform``'s
``Resize`` + ``Normalize`` with ``band_combi_to_mean_std(12)``) and ``ConfigILM.forward``.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

from bigearthnet_beam.trainer.pretrained.timm_import import import_timm

import_timm()  # the CUDA torchvision beside a CPU torch: see that module

import huggingface_hub  # noqa: E402
from configilm.ConfigILM import ConfigILM, ILMConfiguration  # noqa: E402
from configilm.extra import BENv2_utils  # noqa: E402
from configilm.extra._defaults import default_transform  # noqa: E402

from tests.pretrained_fixtures import patch_bands, randomise  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
N = 3


class Classifier(torch.nn.Module, huggingface_hub.PyTorchModelHubMixin):
    """The authors' Lightning module minus Lightning: ``self.model = ConfigILM(config)``."""

    def __init__(self, config: ILMConfiguration):
        super().__init__()
        self.model = ConfigILM(config)


def main():
    cfg = ILMConfiguration(timm_model_name="test_efficientnet", channels=12, classes=19, image_size=120)
    net = Classifier(cfg)
    randomise(net, seed=7)
    net.eval()
    net.save_pretrained(HERE)
    os.remove(os.path.join(HERE, "README.md"))  # the mixin's model card
    order = BENv2_utils.STANDARD_BANDS[12]
    mean, std = BENv2_utils.band_combi_to_mean_std(12)
    tf = default_transform(img_size=(120, 120), mean=mean, std=std)
    raw = patch_bands(N, order)
    x = torch.stack(
        [tf(BENv2_utils.stack_and_interpolate({b: raw[b][i] for b in order}, order, 120, "nearest")) for i in range(N)]
    )
    with torch.no_grad():
        logits = net.model(x)
    out = {
        "configilm": "0.7.1",
        "bands": list(order),
        "labels": list(BENv2_utils.NEW_LABELS),
        "patches": N,
        "input_sum_per_channel": x.double().sum(dim=(0, 2, 3)).tolist(),
        "logits": logits.double().tolist(),
    }
    with open(os.path.join(HERE, "expected.json"), "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
