"""``report.html``: what a conversion did, for a person to read.

``benbeam convert`` writes it after ``dataset.json``; ``benbeam report DATASET`` writes it
again from the dataset alone. One self-contained HTML file (SVG plots and PNG sample
images embedded as data URIs, no scripts, no network) plus the same images as files under
``report/``:

- accounting: input, written and failed patches per split, and the invariant;
- failures per split and reason, with the first failing patches and their reasons;
- throughput of the run (from ``run.json``, which convert writes beside the manifest);
- per-band histograms from ``histograms.npz`` with the clipping percentiles marked;
- class pixel frequencies per split, in the classes' own colours;
- sample patches as RGB (B04, B03, B02) beside their label maps.

Everything but the throughput section is a function of the dataset's files, so a report
regenerated from the same dataset has the same content.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import sys
from collections import Counter

import numpy as np

from schemas import manifest as M
from transforms import storage

LOG = logging.getLogger("benbeam")

REPORT_HTML, REPORT_DIR, RUN_JSON = M.REPORT_HTML, M.REPORT_DIR, M.RUN_JSON
SAMPLES = 6
MAX_FAILURES_LISTED = 50
SECTIONS = ("summary", "accounting", "failures", "throughput", "histograms", "classes", "samples")


# --------------------------------------------------------------------------- inputs


def _read(dataset: str, rel: str) -> bytes | None:
    try:
        return storage.read_bytes(storage.join(dataset, rel))
    except FileNotFoundError:
        return None


def _failures(dataset: str, man: dict) -> list[dict]:
    data = _read(dataset, man["failures"].get("file", M.FAILURES_JSONL))
    if not data:
        return []
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def _samples(dataset: str, man: dict, n: int = SAMPLES) -> list[dict]:
    """The first ``n`` records of the first non-empty shards (validation first, then train, test)."""
    from transforms.encode import decode_example, iter_records

    order = [s for s in ("validation", "train", "test") if s in man["splits"]]
    per_split: dict[str, list] = {}
    for split in order:  # up to n from each split's first non-empty shard
        sh = next((sh for sh in man["splits"][split]["shards"] if sh["records"]), None)
        if sh is None:
            continue
        got = per_split.setdefault(split, [])
        for rec in iter_records(storage.join(dataset, sh["path"]), man["compression"]):
            got.append(decode_example(rec, man["image_dtype"]))
            if len(got) >= n:
                break
    out: list[dict] = []
    while len(out) < n and any(per_split.values()):  # then take them in turn: several splits shown
        for split in order:
            if per_split.get(split) and len(out) < n:
                out.append(per_split[split].pop(0))
    return out


# --------------------------------------------------------------------------- plots


# Plots are small SVG documents built here: drawing them costs milliseconds, where
# matplotlib's layout of 14 histogram panels took over a second at the end of every run.

_FONT = "font-family:DejaVu Sans,Arial,sans-serif"


def _svg(width: int, height: int, body: list[str]) -> bytes:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" style="{_FONT};font-size:10px">'
            f'<rect width="{width}" height="{height}" fill="white"/>' + "".join(body) + "</svg>\n").encode()


def _txt(x, y, text, anchor="start", size=10, extra="") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}"{extra}>'
            f"{html.escape(str(text))}</text>")


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
    title = (f"training-split histograms (log counts); dashed: p{pl[0]:g} / p{pl[1]:g} clipping, solid: mean"
             if pl[0] is not None else "training-split histograms (log counts); solid: mean")
    body = [_txt(width / 2, 18, title, "middle", 12)]
    for i, name in enumerate(names):
        x0 = gap_x + (i % cols) * (pw + gap_x)
        y0 = top + (i // cols) * (ph + gap_y) + 14
        body.append(_txt(x0 + pw / 2, y0 - 4, name, "middle", 11, ' font-weight="bold"'))
        body.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        c = np.asarray(counts[i], dtype=np.float64)
        e = np.asarray(edges[i] if np.ndim(edges) == 2 else edges, dtype=np.float64)
        nz = np.nonzero(c)[0]
        if not nz.size:
            continue
        lo_i, hi_i = max(nz[0] - 2, 0), min(nz[-1] + 3, c.size)
        lo, hi = e[lo_i], e[hi_i]
        # at most one bar per horizontal pixel: merge bins, keeping their sum
        k = max(1, -(-(hi_i - lo_i) // pw))
        cc = np.add.reduceat(c[lo_i:hi_i], np.arange(0, hi_i - lo_i, k))
        ee = e[lo_i:hi_i + 1:k]
        ee = np.append(ee, hi) if ee.size == cc.size else ee[: cc.size + 1]
        logc = np.log10(np.maximum(cc, 1.0))
        top_v = max(float(logc.max()), 1.0)
        sx = lambda v: x0 + (v - lo) / (hi - lo) * pw  # noqa: E731
        sy = lambda v: y0 + ph - v / top_v * (ph - 4)  # noqa: E731
        pts = [f"{sx(ee[0]):.1f},{y0 + ph}"]
        for j in range(cc.size):
            y = sy(logc[j]) if cc[j] > 0 else y0 + ph
            pts.append(f"{sx(ee[j]):.1f},{y:.1f} {sx(ee[j + 1]):.1f},{y:.1f}")
        pts.append(f"{sx(ee[-1]):.1f},{y0 + ph}")
        body.append(f'<polygon points="{" ".join(pts)}" fill="#4a78a8" stroke="none"/>')
        st = stats.get(name, {})
        for key, dash, color in (("p_low", "4,3", "#c0392b"), ("p_high", "4,3", "#c0392b"), ("mean", "", "#27ae60")):
            v = st.get(key)
            if v is not None and lo <= v <= hi:
                da = f' stroke-dasharray="{dash}"' if dash else ""
                body.append(f'<line x1="{sx(v):.1f}" y1="{y0}" x2="{sx(v):.1f}" y2="{y0 + ph}" stroke="{color}"'
                            f' stroke-width="1.2"{da}/>')
        for t in _nice_ticks(lo, hi):
            body.append(f'<line x1="{sx(t):.1f}" y1="{y0 + ph}" x2="{sx(t):.1f}" y2="{y0 + ph + 3}" stroke="#333"/>')
            body.append(_txt(sx(t), y0 + ph + 13, _fmt(t), "middle", 9))
    return _svg(width, height, body)


def _hbars(labels: list[str], series: list[tuple[str, list[float], list[str]]], *, label_w: int, bar_w: int,
           unit: str, integer: bool = False, stacked: bool = False) -> bytes:
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
                    body.append(f'<rect x="{x0 + left[i] / vmax * bar_w:.1f}" y="{top + i * row_h + 2}" '
                                f'width="{w:.1f}" height="{row_h - 4}" fill="{colors[i]}" stroke="#333" '
                                f'stroke-width="0.3"><title>{html.escape(name)}: {v:g}</title></rect>')
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
    names = man["classes"]
    colors = [_hex(c) for c in man["class_colors"][: len(names)]]
    series = []
    for split in (s for s in M.SPLITS if s in man["splits"]):
        f = man["splits"][split].get("class_pixel_frequencies") or [0.0] * len(names)
        series.append((f"{split} ({man['splits'][split]['written']:,} patches)", [100 * v for v in f], colors))
    labels = [f"{i} {n if len(n) <= 44 else n[:42] + '…'}" for i, n in enumerate(names)]
    return _hbars(labels, series, label_w=250, bar_w=170, unit="% of labelled pixels")


_SPLIT_COLORS = {"train": "#4a78a8", "validation": "#f28e2b", "test": "#59a14f"}


def plot_failures(man: dict, failures: list[dict]) -> bytes | None:
    if not failures:
        return None
    by = Counter((d["reason"], d.get("split") or "?") for d in failures)
    reasons = sorted({r for r, _ in by}, key=lambda r: (-sum(v for (rr, _), v in by.items() if rr == r), r))
    splits = sorted({s for _, s in by})
    series = [(s, [float(by.get((r, s), 0)) for r in reasons], [_SPLIT_COLORS.get(s, "#999")] * len(reasons))
              for s in splits]
    return _hbars(reasons, series, label_w=140, bar_w=320, unit="failed patches", integer=True, stacked=True)


def sample_params(man: dict):
    """The normalisation of the S2 bands, as ``convert`` applied it (to undo it for display)."""
    from transforms.normalize import NormParams

    st = man["statistics"]
    return NormParams.from_stats(st["bands"], clip=st.get("clip", True), channels=tuple(man["bands"]["s2"]))


def render_sample(ex: dict, man: dict, params) -> tuple[bytes, bytes]:
    """(RGB PNG, label-map PNG) of one example, 240×240 each; ``params``: the dataset's S2
    ``NormParams`` (``sample_params``), to undo the normalisation."""
    from PIL import Image

    from schemas import tfrecord as T

    s2 = np.asarray(ex[T.S2], dtype=np.float32)
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
    lab = table[np.asarray(ex[T.LABEL], dtype=np.uint8)]

    def enc(a):
        a = np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)
        buf = io.BytesIO()
        Image.fromarray(a, "RGB").save(buf, format="PNG")
        return buf.getvalue()

    return enc(img), enc(lab)


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}td,th{border:1px solid #ddd;padding:.25rem .5rem;
text-align:right}th{background:#f4f4f4}td.w{overflow-wrap:anywhere;min-width:8rem}td.l,th.l{text-align:left}.ok{color:#1e7b34}.bad{color:#b00020}
img.plot{max-width:100%;border:1px solid #eee}.samples{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;font-size:.75rem}figure img{display:inline-block;margin-right:2px;image-rendering:pixelated}
.muted{color:#777}code{background:#f6f6f6;padding:0 .2rem}
"""


def _img(data: bytes, alt: str, cls: str = "plot", ident: str = "") -> str:
    mime = "image/svg+xml" if data.lstrip()[:4] == b"<svg" else "image/png"
    b64 = base64.b64encode(data).decode("ascii")
    idattr = f' id="{html.escape(ident)}"' if ident else ""
    return f'<img class="{cls}"{idattr} alt="{html.escape(alt)}" src="data:{mime};base64,{b64}">'


def _table(header: list[str], rows: list[list], left: int = 1, wrap: tuple[int, ...] = ()) -> str:
    """``left``: how many leading columns are left-aligned; ``wrap``: columns whose long
    values (paths, details) may break anywhere rather than widen the page."""
    def cell(tag, i, v):
        cls = ["l"] if i < left else []
        if tag == "td" and i in wrap:
            cls.append("w")
        attr = f' class="{" ".join(cls)}"' if cls else ""
        return f"<{tag}{attr}>{v}</{tag}>"

    head = "".join(cell("th", i, html.escape(str(h))) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _n(v) -> str:
    return f"{v:,}" if isinstance(v, int) else html.escape(str(v))


def _f(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}g}"


def build_html(dataset: str, man: dict, *, failures: list[dict], plots: dict[str, bytes | None],
               samples: list[tuple[dict, bytes, bytes]], run: dict | None) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>benbeam convert report: "
             f"{esc(dataset)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Conversion report</h1><p><code>{esc(dataset)}</code> · {esc(man.get('created_by', ''))} "
             f"{esc(str(man.get('package_version', '')))} · schema {man['schema_version']}</p>"]

    # summary
    splits = man["splits"]
    tot_in = sum(s["input"] for s in splits.values())
    tot_w = sum(s["written"] for s in splits.values())
    tot_f = sum(s["failed"] for s in splits.values())
    opts = man.get("options", {})
    opt_rows = [[esc(k), esc(json.dumps(v))] for k, v in sorted(opts.items())]
    meta_rows = [[esc(str(m.get("path", m.get("source", "")))), _n(m.get("rows", "")), esc(str(m.get("sha256", ""))[:16])]
                 for m in man["input"].get("metadata", [])]
    parts.append('<section id="summary"><h2>Summary</h2>'
                 f"<p><b>{tot_in:,}</b> input patches → <b>{tot_w:,}</b> written, <b>{tot_f:,}</b> failed "
                 f"({(tot_f / tot_in if tot_in else 0):.2%}). Images {esc(man['image_dtype'])}, "
                 f"compression {esc(man['compression'])}.</p>"
                 + (_table(["metadata", "rows", "sha256"], meta_rows) if meta_rows else "")
                 + "<details><summary>options</summary>" + _table(["option", "value"], opt_rows) + "</details>"
                 + "</section>")

    # accounting
    rows, ok_all = [], True
    for name, s in splits.items():
        ok = s["written"] + s["failed"] == s["input"]
        ok_all &= ok
        size = sum(sh["bytes"] for sh in s["shards"])
        rows.append([esc(name), _n(s["input"]), _n(s["written"]), _n(s["failed"]), _n(len(s["shards"])),
                     f"{size / 2**20:,.1f}", _n(s.get("label_disagreements", 0)),
                     f'<span class="{"ok" if ok else "bad"}">{"✓" if ok else "✗"}</span>'])
    parts.append('<section id="accounting"><h2>Inputs and outputs per split</h2>'
                 + _table(["split", "input", "written", "failed", "shards", "MiB", "label/map disagreements",
                           "written + failed = input"], rows)
                 + f'<p class="{"ok" if ok_all else "bad"}">'
                 + ("Every input row is accounted for." if ok_all else "Accounting is broken!") + "</p></section>")

    # failures
    sec = ['<section id="failures"><h2>Failures</h2>']
    if not failures:
        sec.append("<p>No patch failed.</p>")
    else:
        by = Counter((d.get("split") or "?", d["stage"], d["reason"]) for d in failures)
        split_names = sorted({k[0] for k in by})
        reasons = sorted({(k[1], k[2]) for k in by})
        rows = [[esc(st), esc(r)] + [_n(by.get((sp, st, r), 0)) for sp in split_names]
                + [_n(sum(by.get((sp, st, r), 0) for sp in split_names))] for st, r in reasons]
        sec.append(_table(["stage", "reason"] + split_names + ["total"], rows, left=2))
        if plots.get("failures"):
            sec.append(_img(plots["failures"], "failures per reason and split", ident="plot-failures"))
        listed = failures[:MAX_FAILURES_LISTED]
        sec.append(f"<p>The first {len(listed)} of {len(failures):,} failing patches (all of them are in "
                   f"<code>{esc(man['failures'].get('file', M.FAILURES_JSONL))}</code>):</p>")
        sec.append(_table(["patch", "split", "stage", "reason", "detail"],
                          [[esc(str(d["patch_id"])[:120]), esc(str(d.get("split"))), esc(d["stage"]), esc(d["reason"]),
                            esc(str(d.get("detail", ""))[:300])] for d in listed], left=5, wrap=(4,)))
    sec.append("</section>")
    parts.append("".join(sec))

    # throughput
    sec = ['<section id="throughput"><h2>Throughput</h2>']
    if run:
        rows = [["wall time", f"{run['seconds']:.1f} s"], ["patches (input)", _n(run.get("patches", tot_in))],
                ["patches per second", f"{run.get('patches_per_s', 0):.1f}"],
                ["runner", esc(str(run.get("runner")))], ["workers", esc(str(run.get("workers")))],
                ["finished (UTC)", esc(str(run.get("finished_utc", "")))]]
        if run.get("peak_rss_mib"):
            rows.append(["peak memory of the driver process", f"{run['peak_rss_mib']:.0f} MiB"])
        sec.append(_table(["", ""], rows))
        sec.append('<p class="muted">From <code>run.json</code>: the one part of the report that differs '
                   "between two runs of the same conversion.</p>")
    else:
        sec.append('<p class="muted">Not recorded: this dataset has no <code>run.json</code>.</p>')
    sec.append("</section>")
    parts.append("".join(sec))

    # histograms
    sec = ['<section id="histograms"><h2>Band statistics and histograms</h2>']
    st = man["statistics"]
    sec.append(f"<p>Source: {esc(str(st.get('source', '')))}; split {esc(str(st.get('split', 'train')))}; "
               f"clipping {'on' if st.get('clip', True) else 'off'} at percentiles "
               f"{esc(str(st.get('clip_percentiles')))}.</p>")
    if plots.get("histograms"):
        sec.append(_img(plots["histograms"], "per-band histograms with clipping percentiles", ident="plot-histograms"))
    else:
        sec.append('<p class="muted">No histograms: the statistics were given with <code>--stats</code>.</p>')
    rows = [[esc(b), _n(int(s.get("count", 0))), _f(s.get("mean")), _f(s.get("std")), _f(s.get("min")),
             _f(s.get("max")), _f(s.get("p_low")), _f(s.get("p_high")), _f(s.get("clipped_mean")),
             _f(s.get("clipped_std"))] for b, s in st["bands"].items()]
    sec.append(_table(["band", "pixels", "mean", "std", "min", "max", "p low", "p high", "clipped mean",
                       "clipped std"], rows))
    sec.append("</section>")
    parts.append("".join(sec))

    # classes
    sec = ['<section id="classes"><h2>Class pixel frequencies</h2>', _img(plots["classes"], "class pixel frequencies",
                                                                           ident="plot-classes")]
    names = man["classes"]
    sp = [s for s in M.SPLITS if s in splits]
    rows = []
    for i, n in enumerate(names):
        c = man["class_colors"][i]
        sw = f'<span style="display:inline-block;width:.8em;height:.8em;background:rgb({c[0]},{c[1]},{c[2]})"></span>'
        rows.append([f"{sw} {i} {esc(n)}"] + [f"{100 * (splits[s].get('class_pixel_frequencies') or [0] * 19)[i]:.2f}%"
                                             for s in sp])
    sec.append(_table(["class"] + sp, rows))
    sec.append("</section>")
    parts.append("".join(sec))

    # samples
    sec = ['<section id="samples"><h2>Sample patches</h2>']
    if samples:
        sec.append('<p class="muted">RGB = B04, B03, B02 stretched between the clipping percentiles; right: the '
                   "label map in the class colours (dark grey: ignored pixels).</p><div class=samples>")
        for ex, rgb, lab in samples:
            present = sorted(set(np.unique(np.asarray(ex["label"]))) - {man["ignore_index"]})
            cap = ", ".join(names[int(c)] for c in present[:4]) + (" …" if len(present) > 4 else "")
            sec.append(f"<figure>{_img(rgb, 'RGB of ' + ex['patch_id'], 'sample')}"
                       f"{_img(lab, 'label map of ' + ex['patch_id'], 'sample')}"
                       f"<figcaption><code>{esc(ex['patch_id'])}</code> ({esc(ex['split'])})<br>{esc(cap)}"
                       "</figcaption></figure>")
        sec.append("</div>")
    else:
        sec.append("<p>No patch was written.</p>")
    sec.append("</section>")
    parts.append("".join(sec))
    parts.append("</body></html>\n")
    return "".join(parts)


# --------------------------------------------------------------------------- entry points


def write_report(dataset: str, out: str | None = None) -> str:
    """Write ``report.html`` (and the plots under ``report/``) for a complete dataset;
    returns the report's URL. ``out``: another place for the HTML file."""
    from beam_pipeline.verify import load_manifest

    man = load_manifest(dataset)
    failures = _failures(dataset, man)
    run_raw = _read(dataset, RUN_JSON)
    run = json.loads(run_raw) if run_raw else None
    npz = _read(dataset, man["files"]["histograms"]) if man["files"].get("histograms") else None
    plots = {"classes": plot_classes(man), "failures": plot_failures(man, failures),
             "histograms": plot_histograms(man, npz) if npz else None}
    examples = _samples(dataset, man)
    params = sample_params(man) if examples else None
    samples = [(ex, *render_sample(ex, man, params)) for ex in examples]
    page = build_html(dataset, man, failures=failures, plots=plots, samples=samples, run=run)
    target = out or storage.join(dataset, REPORT_HTML)
    plot_dir = storage.join(storage.parent(target), REPORT_DIR)
    for name, svg in plots.items():
        if svg:
            storage.write_bytes_atomic(storage.join(plot_dir, f"{name}.svg"), svg)
    for i, (_, rgb, lab) in enumerate(samples):
        storage.write_bytes_atomic(storage.join(plot_dir, f"sample-{i}-rgb.png"), rgb)
        storage.write_bytes_atomic(storage.join(plot_dir, f"sample-{i}-label.png"), lab)
    storage.write_bytes_atomic(target, page.encode("utf-8"))
    return target


def run(argv: list[str] | None = None) -> int:
    from beam_pipeline.options import add_storage_args

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="benbeam report", allow_abbrev=False,
                                 description="(Re)write a converted dataset's report.html and its plots.")
    ap.add_argument("dataset", help="dataset directory or URL (holding dataset.json)")
    ap.add_argument("--out", default=None, help="where to write the HTML (default: DATASET/report.html)")
    add_storage_args(ap)
    args = ap.parse_args(argv)
    storage.configure(args.s3_endpoint_url, args.anon, args.gcs_endpoint_url)
    try:
        url = write_report(args.dataset, args.out)
    except M.ManifestError as e:
        print(f"benbeam report: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {url}")
    return 0
