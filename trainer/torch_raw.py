"""PyTorch decoding of raw-encoded records (``benbeam convert --encoding raw``) for
``trainer.torch_data.BenDataset``: ``W @ X @ W.T`` with the conversion-time resampler's
matrices (``transforms.raw_decode``), then clipping and normalisation, in torch; per sample in
the DataLoader workers (``raw_image``), or per batch on the training device
(``raw_sample`` + ``RawBatchDecoder``).
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
    xs = {g.feature: torch.from_numpy(_group_array(ex, g).astype(np.float32)) for g in spec.groups}
    return _decode(xs, spec, tensors)


def _group_array(ex: dict, g) -> np.ndarray:
    """The bands ``g`` takes of its feature of a decoded example (native resolution, as stored)."""
    a = np.asarray(ex[g.feature])
    return a[list(g.index)] if len(g.index) != a.shape[0] else a


def _decode(xs: dict, spec, tensors: dict) -> torch.Tensor:
    """float32[..., C, H, W] from the groups' float32[..., c, h, w] tensors (one sample or a batch,
    on the tensors' device): ``W @ X @ W.T`` per group into its channels, then clipping and
    normalisation in place."""
    size = bands.PATCH_SIZE
    lead = next(iter(xs.values())).shape[:-3]
    device = next(iter(xs.values())).device
    image = torch.empty((*lead, len(spec.channels), size, size), dtype=torch.float32, device=device)
    for g, pos in zip(spec.groups, tensors["positions"], strict=True):
        x = xs[g.feature]
        w = tensors.get(g.feature)
        if w is not None:
            x = torch.matmul(torch.matmul(w, x), w.T)
        image[..., pos, :, :] = x
    if spec.norm is not None:
        if spec.norm.clip:  # as transforms.normalize: maximum with lo, then minimum with hi
            torch.maximum(image, tensors["lo"], out=image)
            torch.minimum(image, tensors["hi"], out=image)
        image.sub_(tensors["offset"]).div_(tensors["scale"])
    return image


# --------------------------------------------------------------------------- decoding whole batches


def raw_sample(ex: dict, spec) -> dict:
    """The raw bands one sample carries to the batch (``BenDataset(decode_on="batch")``): each group's
    bands at native resolution, as stored. S2 digital numbers travel as int16 with the uint16's bits
    (the default collate stacks int16, not uint16; ``RawBatchDecoder`` reads them back exactly):
    ~0.3 MB a patch instead of ~0.8 MB of float32 image."""
    out = {}
    for g in spec.groups:
        a = _group_array(ex, g)
        a = a.astype(a.dtype.newbyteorder("="), copy=False)  # stored little-endian: native order
        if a.dtype == np.uint16:
            a = a.view(np.int16)
        if not a.flags.writeable:  # a view of the record's bytes: torch wants its own
            a = a.copy()
        out[g.feature] = torch.from_numpy(np.ascontiguousarray(a))
    return out


class RawBatchDecoder:
    """Upsampling, clipping and normalisation of a collated batch of raw samples, where the batch is:
    ``decoder(batch, device)`` moves ``batch["raw"]`` (``raw_sample``'s arrays, stacked) to
    ``device`` (default: where they are) and replaces it by ``batch["image"]``, float32[B, C, 120, 120]
    on that device, the same tensors as ``BenDataset``'s per-sample decoding (to float32
    rounding). The other entries of the batch are left where they are."""

    def __init__(self, spec):
        self.spec = spec
        self._tensors: dict = {}  # device -> raw_tensors(spec) there

    def __getstate__(self):
        return {"spec": self.spec}

    def __setstate__(self, state):
        self.__init__(state["spec"])

    def _on(self, device: torch.device) -> dict:
        key = str(device)
        if key not in self._tensors:
            t = raw_tensors(self.spec)
            positions = [p if isinstance(p, slice) else p.to(device) for p in t.pop("positions")]
            self._tensors[key] = {**{k: v.to(device) for k, v in t.items()}, "positions": positions}
        return self._tensors[key]

    def __call__(self, batch: dict, device=None) -> dict:
        if "raw" not in batch:
            raise ValueError('the batch holds no "raw" entry: read it with BenDataset(..., decode_on="batch")')
        raw = batch.pop("raw")
        device = torch.device(device) if device is not None else next(iter(raw.values())).device
        xs = {}
        for g in self.spec.groups:
            x = raw[g.feature].to(device, non_blocking=True)
            if x.dtype == torch.int16:  # the uint16's bits (raw_sample): back to 0..65535, exactly
                x = x.to(torch.int32).bitwise_and_(0xFFFF)
            xs[g.feature] = x.to(torch.float32)
        batch["image"] = _decode(xs, self.spec, self._on(device))
        return batch
