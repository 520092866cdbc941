"""``preview.png``: a tile's class map, decimated to a small size, with a legend of its classes."""

from __future__ import annotations

import math
import os

import numpy as np

from bigearthnet_beam.trainer.inference.layers import NODATA_COLOR, palette


def render_preview(
    class_tif: str, info: dict, counts: np.ndarray, path: str, *, max_size: int, title: str = ""
) -> tuple[int, int]:
    """A colour-coded class map read back from ``class_tif`` at ≤ ``max_size`` px (nearest,
    a decimated read: memory stays small) with a legend of the classes present."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.patches import Patch
    from rasterio.enums import Resampling

    with rasterio.open(class_tif) as ds:
        f = max(1, math.ceil(max(ds.height, ds.width) / max_size))
        shape = (math.ceil(ds.height / f), math.ceil(ds.width / f))
        small = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
    pal = palette(info)
    rgb = pal[small]
    total = int(counts.sum())
    handles = []
    for i in np.flatnonzero(counts[: len(info["classes"])]):
        name = info["classes"][i]
        name = name if len(name) <= 40 else name[:39] + "…"
        handles.append(
            Patch(facecolor=pal[i] / 255.0, edgecolor="0.3", label=f"{i:2d} {name} ({100.0 * counts[i] / total:.1f}%)")
        )
    if counts[-1]:
        handles.append(
            Patch(
                facecolor=np.asarray(NODATA_COLOR) / 255.0,
                edgecolor="0.3",
                label=f"no data ({100.0 * counts[-1] / total:.1f}%)",
            )
        )
    legend_w, line_h = 330, 17
    h_px, w_px = shape
    fig_h = max(h_px, 40 + line_h * (len(handles) + 2))
    fig = plt.figure(figsize=((w_px + legend_w) / 100.0, fig_h / 100.0), dpi=100)
    ax = fig.add_axes([0.0, 1.0 - h_px / fig_h, w_px / (w_px + legend_w), h_px / fig_h])
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    fig.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(w_px / (w_px + legend_w) + 0.01, 0.99),
        fontsize=7,
        frameon=False,
        title=title or None,
        title_fontsize=8,
        alignment="left",
    )
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=100, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)
    return shape
