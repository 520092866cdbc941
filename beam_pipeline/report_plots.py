"""The images of ``report.html``: SVG plots (histograms, class frequencies, failures) drawn
directly, and PNG renderings of sample patches (RGB beside the label map)."""

from __future__ import annotations

import html
import io
from collections import Counter

import numpy as np

from bigearthnet_beam.schemas import manifest

# Plots are small SVG documents built here: drawing them costs milliseconds, where
# matplotlib's layout of 14 histogram panels took over a second at the end of every run.

_FONT = "font-family:DejaVu Sans,Arial,sans-serif"


def _svg(width: int, height: int, body: list[str]) -> bytes:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" style="{_FONT};font-size:10px">'
        f'<rect width="{width}" height="{height}" fill="white"/>' + "".join(body) + "</svg>\n"
    ).encode()


def _txt(x, y, text, anchor="start", size=10, extra="") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}"{extra}>'
        f"{html.escape(str(text))}</text>"
    )


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    first = np.ceil(lo / step) * step
    return [float(v) for v in np.arange(first, hi + step * 1e-9, step)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 or v == int(v) else f"{v:g}"


def plot_histograms(man: dict, npz: bytes) -> bytes:
    """One panel per band: the training histogram (log counts), the clipping percentiles
    (dashed red) and the mean (green)."""
    z = np.load(io.BytesIO(npz))
    names = [str(b) for b in z["bands"]]
    counts, edges = z["counts"], z["bin_edges"]
    stats = man["statistics"]["bands"]
    cols, pw, ph, gap_x, gap_y, top = 4, 240, 110, 20, 46, 30
    rows = -(-len(names) // cols)
    width, height = cols * (pw + gap_x) + gap_x, top + rows * (ph + gap_y)
    pl = man["statistics"].get("clip_percentiles") or [None, None]
    title = (
        f"training-split histograms (log counts); dashed: p{pl[0]:g} / p{pl[1]:g} clipping, solid: mean"
        if pl[0] is not None
        else "training-split histograms (log counts); solid: mean"
    )
    body = [_txt(width / 2, 18, title, "middle", 12)]
    for i, name in enumerate(names):
        x0 = gap_x + (i % cols) * (pw + gap_x)
        y0 = top + (i // cols) * (ph + gap_y) + 14
        body.append(_txt(x0 + pw / 2, y0 - 4, name, "middle", 11, ' font-weight="bold"'))
        body.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        edges_i = edges[i] if np.ndim(edges) == 2 else edges
        body += _histogram_panel(x0, y0, pw, ph, counts[i], edges_i, stats.get(name, {}))
    return _svg(width, height, body)


def _histogram_panel(x0: float, y0: float, pw: int, ph: int, counts, edges, st: dict) -> list[str]:
    """The bars, percentile / mean lines and ticks of one band's panel."""
    body: list[str] = []
    c = np.asarray(counts, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    nz = np.nonzero(c)[0]
    if not nz.size:
        return body
    lo_i, hi_i = max(nz[0] - 2, 0), min(nz[-1] + 3, c.size)
    lo, hi = e[lo_i], e[hi_i]
    # at most one bar per horizontal pixel: merge bins, keeping their sum
    k = max(1, -(-(hi_i - lo_i) // pw))
    cc = np.add.reduceat(c[lo_i:hi_i], np.arange(0, hi_i - lo_i, k))
    ee = e[lo_i : hi_i + 1 : k]
    ee = np.append(ee, hi) if ee.size == cc.size else ee[: cc.size + 1]
    logc = np.log10(np.maximum(cc, 1.0))
    top_v = max(float(logc.max()), 1.0)

    def sx(v):
        return x0 + (v - lo) / (hi - lo) * pw

    def sy(v):
        return y0 + ph - v / top_v * (ph - 4)

    pts = [f"{sx(ee[0]):.1f},{y0 + ph}"]
    for j in range(cc.size):
        y = sy(logc[j]) if cc[j] > 0 else y0 + ph
        pts.append(f"{sx(ee[j]):.1f},{y:.1f} {sx(ee[j + 1]):.1f},{y:.1f}")
    pts.append(f"{sx(ee[-1]):.1f},{y0 + ph}")
    body.append(f'<polygon points="{" ".join(pts)}" fill="#4a78a8" stroke="none"/>')
    for key, dash, color in (("p_low", "4,3", "#c0392b"), ("p_high", "4,3", "#c0392b"), ("mean", "", "#27ae60")):
        v = st.get(key)
        if v is not None and lo <= v <= hi:
            da = f' stroke-dasharray="{dash}"' if dash else ""
            body.append(
                f'<line x1="{sx(v):.1f}" y1="{y0}" x2="{sx(v):.1f}" y2="{y0 + ph}" stroke="{color}"'
                f' stroke-width="1.2"{da}/>'
            )
    for t in _nice_ticks(lo, hi):
        body.append(f'<line x1="{sx(t):.1f}" y1="{y0 + ph}" x2="{sx(t):.1f}" y2="{y0 + ph + 3}" stroke="#333"/>')
        body.append(_txt(sx(t), y0 + ph + 13, _fmt(t), "middle", 9))
    return body


def _hbars(
    labels: list[str],
    series: list[tuple[str, list[float], list[str]]],
    *,
    label_w: int,
    bar_w: int,
    unit: str,
    integer: bool = False,
    stacked: bool = False,
) -> bytes:
    """Horizontal bars: one panel per series (side by side), or one stacked panel."""
    row_h, top, bottom = 15, 22, 28
    panels = [series] if stacked else [[s] for s in series]
    width = label_w + len(panels) * (bar_w + 20) + 10
    height = top + len(labels) * row_h + bottom
    body = []
    for i, lab in enumerate(labels):
        body.append(_txt(label_w - 6, top + i * row_h + row_h * 0.72, lab, "end", 9))
    if stacked:
        vmax = max((sum(vals[i] for _, vals, _ in series) for i in range(len(labels))), default=0.0)
    else:
        vmax = max((max(vals, default=0.0) for _, vals, _ in series), default=0.0)
    vmax = vmax or 1.0
    for p, group in enumerate(panels):
        x0 = label_w + p * (bar_w + 20)
        if stacked:  # a legend: one swatch per series
            lx = x0
            for name, _, colors in group:
                body.append(f'<rect x="{lx}" y="5" width="10" height="10" fill="{colors[0]}"/>')
                body.append(_txt(lx + 14, 14, name, "start", 10))
                lx += 24 + 7 * len(name)
        else:
            body.append(_txt(x0 + bar_w / 2, 14, group[0][0], "middle", 10, ' font-weight="bold"'))
        body.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{top + len(labels) * row_h}" stroke="#333"/>')
        left = np.zeros(len(labels))
        for name, vals, colors in group:
            for i, v in enumerate(vals):
                w = v / vmax * bar_w
                if w > 0:
                    body.append(
                        f'<rect x="{x0 + left[i] / vmax * bar_w:.1f}" y="{top + i * row_h + 2}" '
                        f'width="{w:.1f}" height="{row_h - 4}" fill="{colors[i]}" stroke="#333" '
                        f'stroke-width="0.3"><title>{html.escape(name)}: {v:g}</title></rect>'
                    )
                left[i] += v
        for t in _nice_ticks(0, vmax):
            if integer and t != int(t):
                continue
            x = x0 + t / vmax * bar_w
            y = top + len(labels) * row_h
            body.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 3}" stroke="#333"/>')
            body.append(_txt(x, y + 13, _fmt(t), "middle", 9))
        body.append(_txt(x0 + bar_w / 2, height - 3, unit, "middle", 9))
    return _svg(int(width), int(height), body)


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb[:3])


def plot_classes(man: dict) -> bytes:
    """Class pixel frequencies per split, in the classes' own colours."""
    names = man["classes"]
    colors = [_hex(c) for c in man["class_colors"][: len(names)]]
    series = []
    for split in (s for s in manifest.SPLITS if s in man["splits"]):
        f = man["splits"][split].get("class_pixel_frequencies") or [0.0] * len(names)
        series.append((f"{split} ({man['splits'][split]['written']:,} patches)", [100 * v for v in f], colors))
    labels = [f"{i} {n if len(n) <= 44 else n[:42] + '…'}" for i, n in enumerate(names)]
    return _hbars(labels, series, label_w=250, bar_w=170, unit="% of labelled pixels")


_SPLIT_COLORS = {"train": "#4a78a8", "validation": "#f28e2b", "test": "#59a14f"}


def plot_failures(man: dict, failures: list[dict]) -> bytes | None:
    """Failed patches per reason, stacked by split (``None`` when nothing failed)."""
    if not failures:
        return None
    by = Counter((d["reason"], d.get("split") or "?") for d in failures)
    reasons = sorted({r for r, _ in by}, key=lambda r: (-sum(v for (rr, _), v in by.items() if rr == r), r))
    splits = sorted({s for _, s in by})
    series = [
        (s, [float(by.get((r, s), 0)) for r in reasons], [_SPLIT_COLORS.get(s, "#999")] * len(reasons)) for s in splits
    ]
    return _hbars(reasons, series, label_w=140, bar_w=320, unit="failed patches", integer=True, stacked=True)


def sample_params(man: dict):
    """The normalisation of the S2 bands, as ``convert`` applied it (to undo it for display)."""
    from bigearthnet_beam.transforms.normalize import NormParams

    st = man["statistics"]
    return NormParams.from_stats(st["bands"], clip=st.get("clip", True), channels=tuple(man["bands"]["s2"]))


def render_sample(ex: dict, man: dict, params) -> tuple[bytes, bytes]:
    """(RGB PNG, label-map PNG) of one example, 240×240 each; ``params``: the dataset's S2
    ``NormParams`` (``sample_params``), to undo the normalisation."""
    from PIL import Image

    from bigearthnet_beam.schemas import tfrecord

    s2 = np.asarray(ex[tfrecord.S2], dtype=np.float32)
    st = man["statistics"]
    raw = s2 * params.scale + params.offset  # back to DN (clipped at the percentiles)
    rgb = []
    for band in ("B04", "B03", "B02"):
        i = man["bands"]["s2"].index(band)
        b = st["bands"][band]
        lo, hi = b.get("p_low", b["min"]), b.get("p_high", b["max"])
        rgb.append(np.clip((raw[..., i] - lo) / max(hi - lo, 1e-6), 0, 1) ** (1 / 1.4))
    img = (np.stack(rgb, -1) * 255 + 0.5).astype(np.uint8)
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(man["class_colors"])] = np.asarray(man["class_colors"], dtype=np.uint8)
    table[man["ignore_index"]] = (40, 40, 40)
    lab = table[np.asarray(ex[tfrecord.LABEL], dtype=np.uint8)]

    def enc(a):
        a = np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)
        buf = io.BytesIO()
        Image.fromarray(a, "RGB").save(buf, format="PNG")
        return buf.getvalue()

    return enc(img), enc(lab)
