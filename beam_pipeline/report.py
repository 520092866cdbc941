"""``report.html``: what a conversion did, for a person to read.

``benbeam convert`` writes it after ``dataset.json``; ``benbeam report DATASET`` writes it
again from the dataset alone. One self-contained HTML file (plots embedded as PNG data
URIs, no scripts, no network) plus the same plots as files under ``report/``:

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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "figure.dpi": 100,
                         "svg.hashsalt": "benbeam", "path.simplify": True})
    return plt


def _png(fig, tight: bool = True) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight" if tight else None, metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def plot_histograms(man: dict, npz: bytes) -> bytes:
    """One panel per band: the training histogram (log counts), the clipping percentiles
    (dashed) and the mean (solid)."""
    plt = _plt()
    from matplotlib import ticker

    z = np.load(io.BytesIO(npz))
    names = [str(b) for b in z["bands"]]
    counts, edges = z["counts"], z["bin_edges"]
    stats = man["statistics"]["bands"]
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 1.8))
    for ax in np.ravel(axes)[len(names):]:
        ax.axis("off")
    for i, (name, ax) in enumerate(zip(names, np.ravel(axes))):
        c = np.asarray(counts[i], dtype=np.float64)
        e = np.asarray(edges[i] if np.ndim(edges) == 2 else edges, dtype=np.float64)
        nz = np.nonzero(c)[0]
        s = stats.get(name, {})
        if nz.size:
            lo, hi = max(nz[0] - 2, 0), min(nz[-1] + 3, c.size)
            # one filled step outline (thousands of bars would take seconds to draw)
            ax.stairs(np.maximum(c[lo:hi], 0.8), e[lo:hi + 1], fill=True, color="#4a78a8", baseline=0.8)
            ax.set_yscale("log")
        # few, fixed ticks: matplotlib's automatic log ticks cost seconds for 14 panels
        ax.yaxis.set_major_locator(ticker.NullLocator())
        ax.yaxis.set_minor_locator(ticker.NullLocator())
        ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
        for key, style in (("p_low", "--"), ("p_high", "--")):
            if s.get(key) is not None:
                ax.axvline(s[key], color="#c0392b", linestyle=style, linewidth=1)
        if s.get("mean") is not None:
            ax.axvline(s["mean"], color="#27ae60", linewidth=1)
        ax.set_title(name)
        ax.tick_params(labelsize=6)
    pl = man["statistics"].get("clip_percentiles") or [None, None]
    fig.suptitle(f"training-split histograms; dashed: p{pl[0]:g}/p{pl[1]:g} clipping, solid: mean"
                 if pl[0] is not None else "training-split histograms; solid: mean", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.06, top=0.9, wspace=0.08, hspace=0.45)
    return _png(fig, tight=False)


def plot_classes(man: dict) -> bytes:
    plt = _plt()
    names = man["classes"]
    colors = np.asarray(man["class_colors"], dtype=np.float64) / 255.0
    splits = [s for s in M.SPLITS if s in man["splits"]]
    fig, axes = plt.subplots(1, len(splits), figsize=(3.6 * len(splits), 4.6), sharey=True, squeeze=False)
    y = np.arange(len(names))
    for ax, split in zip(axes[0], splits):
        f = np.asarray(man["splits"][split].get("class_pixel_frequencies") or [0.0] * len(names))
        ax.barh(y, f * 100, color=colors, edgecolor="#333", linewidth=0.3)
        ax.set_title(f"{split} ({man['splits'][split]['written']} patches)")
        ax.set_xlabel("% of labelled pixels")
        ax.invert_yaxis()
    axes[0][0].set_yticks(y, [f"{i} {n}" for i, n in enumerate(names)], fontsize=7)
    fig.tight_layout()
    return _png(fig)


def plot_failures(man: dict, failures: list[dict]) -> bytes | None:
    if not failures:
        return None
    plt = _plt()
    by = Counter((d["reason"], d.get("split") or "?") for d in failures)
    reasons = sorted({r for r, _ in by}, key=lambda r: -sum(v for (rr, _), v in by.items() if rr == r))
    splits = sorted({s for _, s in by})
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(reasons) + 1.0))
    left = np.zeros(len(reasons))
    palette = {"train": "#4a78a8", "validation": "#f28e2b", "test": "#59a14f"}
    for s in splits:
        v = np.array([by.get((r, s), 0) for r in reasons], dtype=float)
        ax.barh(reasons, v, left=left, label=s, color=palette.get(s, "#999"))
        left += v
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(__import__("matplotlib.ticker", fromlist=["MaxNLocator"]).MaxNLocator(integer=True))
    ax.set_xlabel("failed patches")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def render_sample(ex: dict, man: dict) -> tuple[bytes, bytes]:
    """(RGB PNG, label-map PNG) of one example, 240×240 each."""
    from PIL import Image

    from schemas import tfrecord as T
    from transforms.normalize import NormParams

    s2 = np.asarray(ex[T.S2], dtype=np.float32)
    st = man["statistics"]
    params = NormParams.from_stats(st["bands"], clip=st.get("clip", True), channels=tuple(man["bands"]["s2"]))
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
text-align:right;overflow-wrap:anywhere}th{background:#f4f4f4}td.l,th.l{text-align:left}.ok{color:#1e7b34}.bad{color:#b00020}
img.plot{max-width:100%;border:1px solid #eee}.samples{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;font-size:.75rem}figure img{display:inline-block;margin-right:2px;image-rendering:pixelated}
.muted{color:#777}code{background:#f6f6f6;padding:0 .2rem}
"""


def _img(png: bytes, alt: str, cls: str = "plot", ident: str = "") -> str:
    b64 = base64.b64encode(png).decode("ascii")
    idattr = f' id="{html.escape(ident)}"' if ident else ""
    return f'<img class="{cls}"{idattr} alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    def cell(tag, i, v):
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{v}</{tag}>"

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
                            esc(str(d.get("detail", ""))[:300])] for d in listed], left=5))
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
    samples = [(ex, *render_sample(ex, man)) for ex in _samples(dataset, man)]
    page = build_html(dataset, man, failures=failures, plots=plots, samples=samples, run=run)
    target = out or storage.join(dataset, REPORT_HTML)
    plot_dir = storage.join(storage.parent(target), REPORT_DIR)
    for name, png in plots.items():
        if png:
            storage.write_bytes_atomic(storage.join(plot_dir, f"{name}.png"), png)
    for i, (_, rgb, lab) in enumerate(samples):
        storage.write_bytes_atomic(storage.join(plot_dir, f"sample-{i}-rgb.png"), rgb)
        storage.write_bytes_atomic(storage.join(plot_dir, f"sample-{i}-label.png"), lab)
    storage.write_bytes_atomic(target, page.encode("utf-8"))
    return target


def run(argv: list[str] | None = None) -> int:
    from beam_pipeline.options import add_storage_args

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="benbeam report",
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
