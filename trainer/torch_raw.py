"""PyTorch decoding of raw-encoded records (``benbeam convert --encoding raw``) for
``trainer.torch_data.BenDataset``: per sample, ``W @ X @ W.T`` with the conversion-time
resampler's matrices (``transforms.raw_decode``), then clipping and normalisation, in torch.
"""

from __future__ import annotations

import numpy as np
import torch

from bigearthnet_beam.schemas import bands, tfrecord


def read_spec(manifest: dict, channels, *, band_subset=None, resampling=None, statistics=None):
    """The ``transforms.raw_decode.RawSpec`` of a raw dataset's reader; None for a normalised dataset,
    which takes no read-time options (ValueError if any is given)."""
    from bigearthnet_beam.transforms import raw_decode

    if manifest.get("encoding") != tfrecord.RAW:
        if (resampling, statistics) != (None, None) or (
            band_subset is not None and tuple(band_subset) != tuple(channels)
        ):
            raise ValueError(
                "this dataset holds normalised records: read-time resampling, statistics and band subsets "
                "need a raw-encoded dataset (`benbeam convert --encoding raw`)"
            )
        return None
    channels = tuple(band_subset) if band_subset is not None else channels
    return raw_decode.make_spec(manifest, channels, resampling, statistics)


def raw_tensors(spec) -> dict:
    """A ``RawSpec``'s weight matrices (by feature), each group's output channel positions and the
    normalisation columns (C, 1, 1), as tensors."""
    out: dict = {g.feature: torch.from_numpy(g.weights.copy()) for g in spec.groups if g.weights is not None}
    where = {p: i for i, p in enumerate(spec.order)}  # position in the groups' concatenation -> channel
    start, positions = 0, []
    for g in spec.groups:
        pos = [where[start + j] for j in range(len(g.index))]
        contiguous = pos == list(range(pos[0], pos[0] + len(pos)))
        positions.append(slice(pos[0], pos[-1] + 1) if contiguous else torch.tensor(pos))
        start += len(g.index)
    out["positions"] = positions
    if spec.norm is not None:
        for k in ("lo", "hi", "offset", "scale"):
            out[k] = torch.from_numpy(np.asarray(getattr(spec.norm, k), dtype=np.float32).reshape(-1, 1, 1))
    return out


def raw_image(ex: dict, spec, tensors: dict) -> torch.Tensor:
    """float32[C, H, W] of one decoded raw example: per resolution group ``W @ X @ W.T`` written into
    its channels of the output, then clipping and normalisation in place (``tensors``: ``raw_tensors``).

    Runs on one intra-op thread (as in a DataLoader worker): one patch is too small to share, and
    on a busy machine the thread hand-offs cost ~10x the work (measured: 0.6 ms vs 6-9 ms)."""
    threads = torch.get_num_threads()
    if threads == 1:
        return _raw_image(ex, spec, tensors)
    torch.set_num_threads(1)
    try:
        return _raw_image(ex, spec, tensors)
    finally:
        torch.set_num_threads(threads)


def _raw_image(ex: dict, spec, tensors: dict) -> torch.Tensor:
    size = bands.PATCH_SIZE
    image = torch.empty((len(spec.channels), size, size), dtype=torch.float32)
    for g, pos in zip(spec.groups, tensors["positions"], strict=True):
        a = np.asarray(ex[g.feature])
        if len(g.index) != a.shape[0]:
            a = a[list(g.index)]
        x = torch.from_numpy(a.astype(np.float32))
        w = tensors.get(g.feature)
        if w is not None:
            x = torch.matmul(torch.matmul(w, x), w.T)
        image[pos] = x
    if spec.norm is not None:
        if spec.norm.clip:  # as transforms.normalize: maximum with lo, then minimum with hi
            torch.maximum(image, tensors["lo"], out=image)
            torch.minimum(image, tensors["hi"], out=image)
        image.sub_(tensors["offset"]).div_(tensors["scale"])
    return image
