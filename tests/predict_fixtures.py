"""Stand-ins shared by the predict tests: an in-memory tile, a valid inference contract, a
narrow untrained U-Net, raster reading, and the ``--extra`` plug-ins the tests name."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
rasterio = pytest.importorskip("rasterio")
from affine import Affine  # noqa: E402
from rasterio.crs import CRS  # noqa: E402

from bigearthnet_beam.schemas import bands as band_table  # noqa: E402
from bigearthnet_beam.schemas import classes  # noqa: E402
from bigearthnet_beam.trainer.inference.tile import predict_tile  # noqa: E402
from bigearthnet_beam.trainer.model import INFO_FORMAT, INFO_VERSION, build_unet, save_model  # noqa: E402

K = classes.NUM_CLASSES


def save_tiny_model(path: str, **kw) -> str:
    """``tiny_model(**kw)`` saved as .keras at ``path``."""
    model, _ = tiny_model(**kw)
    save_model(model, path)
    return path


# --------------------------------------------------------------------------- stand-ins


class ArrayTile:
    """A TileSource over in-memory arrays (the interface of ``trainer.tiles.TileSource``);
    counts reads and the largest read so tests can check what predict asks for."""

    def __init__(self, pixels, valid, channels, name="T32TQR_20240715T101031"):
        self.pixels, self.valid = pixels.astype(np.float32), valid.astype(bool)
        self.channels = tuple(channels)
        self.name = name
        self.height, self.width = pixels.shape[:2]
        self.crs = CRS.from_epsg(32632)
        self.transform = Affine(10.0, 0.0, 699960.0, 0.0, -10.0, 5000040.0)
        self.warnings = []
        self.reads, self.max_read = 0, 0

    @classmethod
    def random(cls, h, w, channels, rng, **kw):
        """Smooth blobs of a few raw-unit levels plus noise (so the model's output varies)."""
        yy, xx = np.mgrid[0:h, 0:w]
        field = np.sin(yy / 37.0) + np.cos(xx / 23.0) + 0.5 * np.sin((xx + yy) / 11.0)
        base = np.stack([(1000 + 400 * c) * (1.2 + 0.5 * field) for c in range(len(channels))], -1)
        pix = base + rng.normal(0, 50, base.shape)
        return cls(pix, np.ones((h, w), bool), channels, **kw)

    def read(self, window):
        """The window's (pixels, valid), counting the read."""
        r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        assert r0 >= 0 and c0 >= 0 and r0 + h <= self.height and c0 + w <= self.width, window
        self.reads += 1
        self.max_read = max(self.max_read, h * w)
        return self.pixels[r0 : r0 + h, c0 : c0 + w].copy(), self.valid[r0 : r0 + h, c0 : c0 + w].copy()

    def close(self):
        """Nothing to close."""
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def fake_info(channels=band_table.S2_NAMES) -> dict:
    """A valid inference contract for ``channels`` (no trained model behind it)."""
    stats = {}
    for c in band_table.ALL_NAMES:
        i = band_table.ALL_NAMES.index(c)
        mean = 1000.0 + 400 * i
        stats[c] = {
            "count": 100,
            "mean": mean,
            "std": 500.0,
            "p_low": mean - 1500,
            "p_high": mean + 1500,
            "clipped_mean": mean,
            "clipped_std": 450.0,
        }
    return {
        "format": INFO_FORMAT,
        "version": INFO_VERSION,
        "modalities": "s2",
        "channels": list(channels),
        "input_shape": [band_table.PATCH_SIZE, band_table.PATCH_SIZE, len(channels)],
        "task": "seg",
        "classes": list(classes.CLASS_NAMES),
        "class_colors": [list(c) for c in classes.class_colors()],
        "ignore_index": classes.IGNORE_INDEX,
        "statistics": {"clip": True, "bands": stats},
        "image_dtype": "float32",
    }


def tiny_model(width=4, channels=band_table.S2_NAMES, seed=0):
    """An untrained narrow U-Net carrying a valid inference contract."""
    import keras

    keras.utils.set_random_seed(seed)
    info = fake_info(channels)
    return build_unet(len(channels), width=width, depth=2, info=info), info


def read_band(path, *bands):
    """The bands of a raster (all by default)."""
    with rasterio.open(path) as ds:
        return ds.read(*bands) if bands else ds.read()


def run_tile(predictor, src, out, **kw):
    """predict_tile without progress lines."""
    kw.setdefault("progress", None)
    return predict_tile(predictor, src, str(out), **kw)


def extra_layers(probs):
    return {"p_water": probs[..., 17] + probs[..., 18], "top_class_x2": np.argmax(probs, -1) * 2}


def bad_extra(probs):
    return probs[..., :2]


def predict_cli(argv) -> int:
    """``benbeam predict ARGV`` in-process; its exit code (argparse's 2 for a refused flag too)."""
    from bigearthnet_beam.trainer.inference.cli import run

    try:
        return run([str(a) for a in argv])
    except SystemExit as e:  # a flag refused by its type (transforms.flagtypes): argparse's exit 2
        return e.code


def last_err_line(capsys) -> str:
    """The last line the command wrote to stderr ("" when none)."""
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""
