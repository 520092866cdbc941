"""Spectral signatures of the 19 classes and the renderer of synthetic patch content.

Each class's S2 spectrum (12 bands, DN = reflectance × 10,000) is a mixture of five
endmembers (water, vegetation, soil, urban, sand) plus a fixed per-class fingerprint that
keeps similar classes apart; each class has its own S1 VV/VH backscatter in dB. Values
land in the ranges of the published reBEN band statistics. ``render`` turns a class-index
map into the 10 m signal and derives the 20 m / 60 m bands as block means of it, exactly
as a coarser sensor pixel integrates the ground.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from bigearthnet_beam.schemas.bands import BAND_BY_NAME, PATCH_SIZE, S2_NAMES
from bigearthnet_beam.schemas.classes import NUM_CLASSES

# Endmember spectra, B01 … B12 (S2_NAMES order), DN.
_ENDMEMBERS = {
    "water": [420, 480, 420, 320, 260, 210, 190, 160, 150, 110, 70, 45],
    "veg": [260, 320, 600, 330, 950, 2600, 3300, 3600, 3700, 3650, 1850, 900],
    "soil": [820, 1020, 1350, 1650, 1850, 2050, 2250, 2350, 2450, 2450, 3050, 2550],
    "urban": [1150, 1250, 1350, 1450, 1550, 1750, 1850, 1950, 2000, 1950, 2250, 2050],
    "sand": [1850, 2250, 2650, 3050, 3250, 3450, 3550, 3650, 3750, 3650, 4050, 3550],
}
# Per class: endmember fractions, brightness, (VV, VH) dB.
_CLASSES = [
    ({"urban": 0.7, "veg": 0.2, "soil": 0.1}, 1.0, (-6.0, -13.0)),  # 0 Urban fabric
    ({"urban": 0.9, "soil": 0.1}, 1.35, (-3.5, -11.0)),  # 1 Industrial or commercial units
    ({"soil": 0.6, "veg": 0.4}, 1.0, (-11.0, -18.5)),  # 2 Arable land
    ({"veg": 0.55, "soil": 0.45}, 0.9, (-8.5, -16.0)),  # 3 Permanent crops
    ({"veg": 0.85, "soil": 0.15}, 1.05, (-12.5, -20.0)),  # 4 Pastures
    ({"veg": 0.6, "soil": 0.3, "urban": 0.1}, 1.1, (-10.0, -17.0)),  # 5 Complex cultivation patterns
    ({"veg": 0.7, "soil": 0.2, "water": 0.1}, 0.85, (-9.5, -15.0)),  # 6 Agriculture with natural vegetation
    ({"veg": 0.65, "soil": 0.35}, 1.2, (-8.0, -14.5)),  # 7 Agro-forestry areas
    ({"veg": 1.0}, 1.1, (-7.0, -12.5)),  # 8 Broad-leaved forest
    ({"veg": 0.8, "water": 0.2}, 0.65, (-7.5, -13.5)),  # 9 Coniferous forest
    ({"veg": 0.9, "water": 0.1}, 0.85, (-6.5, -12.0)),  # 10 Mixed forest
    ({"veg": 0.5, "soil": 0.3, "sand": 0.2}, 1.0, (-13.5, -21.5)),  # 11 Natural grassland, sparse vegetation
    ({"veg": 0.55, "soil": 0.2, "water": 0.25}, 0.8, (-12.0, -19.0)),  # 12 Moors, heathland
    ({"veg": 0.75, "soil": 0.25}, 0.95, (-9.0, -16.5)),  # 13 Transitional woodland, shrub
    ({"sand": 1.0}, 1.0, (-17.0, -26.0)),  # 14 Beaches, dunes, sands
    ({"veg": 0.45, "water": 0.55}, 1.0, (-15.0, -22.5)),  # 15 Inland wetlands
    ({"veg": 0.3, "water": 0.55, "sand": 0.15}, 1.0, (-16.5, -25.0)),  # 16 Coastal wetlands
    ({"water": 1.0}, 1.3, (-20.5, -27.5)),  # 17 Inland waters
    ({"water": 1.0}, 0.8, (-24.0, -31.0)),  # 18 Marine waters
]
# Pixels without a class (roads, bare rock, …): a grey spectrum.
_NO_CLASS = ({"urban": 0.5, "soil": 0.5}, 1.2, (-10.0, -18.0))

S2_NOISE = 0.035  # relative white noise per pixel
S2_TEXTURE = 0.05  # relative smooth texture
S1_NOISE_DB = 0.8  # speckle, dB
S1_TEXTURE_DB = 0.8


def _spectrum(mix: dict, brightness: float) -> np.ndarray:
    s = sum(np.asarray(_ENDMEMBERS[k], dtype=np.float64) * f for k, f in mix.items())
    return s * brightness


@lru_cache(maxsize=None)
def signatures() -> tuple[np.ndarray, np.ndarray]:
    """(s2 float32[20, 12], s1 float32[20, 2]): rows 0..18 the classes, row 19 no-class."""
    rng = np.random.default_rng(19)  # fixed fingerprint, independent of any user seed
    s2 = []
    s1 = []
    for mix, bright, (vv, vh) in _CLASSES + [_NO_CLASS]:
        spec = _spectrum(mix, bright)
        # fingerprint: +-12 % on three bands chosen per class, so near-identical mixtures separate
        fp = np.ones(len(S2_NAMES))
        bands = rng.choice(len(S2_NAMES), 3, replace=False)
        fp[bands] += rng.choice([-0.12, 0.12], 3)
        s2.append(spec * fp)
        s1.append([vv, vh])
    out2 = np.clip(np.asarray(s2, dtype=np.float32), 30, None)
    out1 = np.asarray(s1, dtype=np.float32)
    out2.setflags(write=False)
    out1.setflags(write=False)
    return out2, out1


NO_CLASS_ROW = NUM_CLASSES  # row of the signature table used for pixels without a class


def smooth_field(rng: np.random.Generator, shape=(PATCH_SIZE, PATCH_SIZE), cells: int = 8) -> np.ndarray:
    """A smooth random field in about [-1, 1] (bilinear upsampling of a coarse grid)."""
    from bigearthnet_beam.transforms.resample import upsample

    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    f = upsample(coarse, shape[0] // cells, "bilinear")
    return f / max(float(np.abs(f).max()), 1e-6)


def block_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over k×k blocks of an (H, W, ...) array."""
    h, w = x.shape[:2]
    return x.reshape(h // k, k, w // k, k, *x.shape[2:]).mean(axis=(1, 3))


def render(rows: np.ndarray, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Render the signal of a signature-row map (H, W) with values 0..19 (19 = no class).

    Returns ({band: uint16 array at the band's native resolution}, vv float32, vh float32).
    H and W must be multiples of 6 (the 60 m factor).
    """
    s2sig, s1sig = signatures()
    h, w = rows.shape
    gain = 1.0 + S2_TEXTURE * smooth_field(rng, (h, w))[..., None] + 0.03 * rng.standard_normal()
    sig10 = s2sig[rows] * gain
    sig10 *= 1.0 + S2_NOISE * rng.standard_normal(sig10.shape).astype(np.float32)
    bands = {}
    for i, name in enumerate(S2_NAMES):
        k = BAND_BY_NAME[name].resolution_m // 10
        v = sig10[..., i] if k == 1 else block_mean(sig10[..., i], k)
        bands[name] = np.clip(np.rint(v), 1, 65535).astype(np.uint16)
    tex = S1_TEXTURE_DB * smooth_field(rng, (h, w))
    s1 = s1sig[rows] + tex[..., None] + S1_NOISE_DB * rng.standard_normal((h, w, 2)).astype(np.float32)
    return bands, s1[..., 0].astype(np.float32), s1[..., 1].astype(np.float32)
