"""The HTML page of ``report.html``: one section per entry of ``SECTIONS``, the images
embedded as data URIs (no scripts, no network)."""

from __future__ import annotations

import base64
import html
import json
from collections import Counter

import numpy as np

from bigearthnet_beam.schemas import manifest

MAX_FAILURES_LISTED = 50
SECTIONS = ("summary", "accounting", "failures", "throughput", "histograms", "classes", "samples")

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


def build_html(
    dataset: str,
    man: dict,
    *,
    failures: list[dict],
    plots: dict[str, bytes | None],
    samples: list[tuple[dict, bytes, bytes]],
    run: dict | None,
) -> str:
    """The whole page: a header, then one section per entry of ``SECTIONS``."""
    esc = html.escape
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>benbeam convert report: "
        f"{esc(dataset)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Conversion report</h1><p><code>{esc(dataset)}</code> · {esc(man.get('created_by', ''))} "
        f"{esc(str(man.get('package_version', '')))} · schema {man['schema_version']}</p>",
    ]
    parts += [
        _summary_section(man),
        _accounting_section(man),
        _failures_section(man, failures, plots),
        _throughput_section(man, run),
        _histograms_section(man, plots),
        _classes_section(man, plots),
        _samples_section(man, samples),
    ]
    parts.append("</body></html>\n")
    return "".join(parts)


def _summary_section(man: dict) -> str:
    """The inputs, totals and options."""
    esc = html.escape
    splits = man["splits"]
    tot_in = sum(s["input"] for s in splits.values())
    tot_w = sum(s["written"] for s in splits.values())
    tot_f = sum(s["failed"] for s in splits.values())
    opts = man.get("options", {})
    opt_rows = [[esc(k), esc(json.dumps(v))] for k, v in sorted(opts.items())]
    meta_rows = [
        [esc(str(m.get("path", m.get("source", "")))), _n(m.get("rows", "")), esc(str(m.get("sha256", ""))[:16])]
        for m in man["input"].get("metadata", [])
    ]
    return (
        '<section id="summary"><h2>Summary</h2>'
        f"<p><b>{tot_in:,}</b> input patches → <b>{tot_w:,}</b> written, <b>{tot_f:,}</b> failed "
        f"({(tot_f / tot_in if tot_in else 0):.2%}). Images {esc(man['image_dtype'])}, "
        f"compression {esc(man['compression'])}.</p>"
        + (_table(["metadata", "rows", "sha256"], meta_rows) if meta_rows else "")
        + "<details><summary>options</summary>"
        + _table(["option", "value"], opt_rows)
        + "</details>"
        + "</section>"
    )


def _accounting_section(man: dict) -> str:
    """Input, written and failed patches per split, and the invariant."""
    esc = html.escape
    splits = man["splits"]
    rows, ok_all = [], True
    for name, s in splits.items():
        ok = s["written"] + s["failed"] == s["input"]
        ok_all &= ok
        size = sum(sh["bytes"] for sh in s["shards"])
        rows.append(
            [
                esc(name),
                _n(s["input"]),
                _n(s["written"]),
                _n(s["failed"]),
                _n(len(s["shards"])),
                f"{size / 2**20:,.1f}",
                _n(s.get("label_disagreements", 0)),
                f'<span class="{"ok" if ok else "bad"}">{"✓" if ok else "✗"}</span>',
            ]
        )
    return (
        '<section id="accounting"><h2>Inputs and outputs per split</h2>'
        + _table(
            [
                "split",
                "input",
                "written",
                "failed",
                "shards",
                "MiB",
                "label/map disagreements",
                "written + failed = input",
            ],
            rows,
        )
        + f'<p class="{"ok" if ok_all else "bad"}">'
        + ("Every input row is accounted for." if ok_all else "Accounting is broken!")
        + "</p></section>"
    )


def _failures_section(man: dict, failures: list[dict], plots: dict) -> str:
    """Failures per split and reason, and the first failing patches."""
    esc = html.escape
    sec = ['<section id="failures"><h2>Failures</h2>']
    if not failures:
        sec.append("<p>No patch failed.</p>")
    else:
        by = Counter((d.get("split") or "?", d["stage"], d["reason"]) for d in failures)
        split_names = sorted({k[0] for k in by})
        reasons = sorted({(k[1], k[2]) for k in by})
        rows = [
            [esc(st), esc(r)]
            + [_n(by.get((sp, st, r), 0)) for sp in split_names]
            + [_n(sum(by.get((sp, st, r), 0) for sp in split_names))]
            for st, r in reasons
        ]
        sec.append(_table(["stage", "reason"] + split_names + ["total"], rows, left=2))
        if plots.get("failures"):
            sec.append(_img(plots["failures"], "failures per reason and split", ident="plot-failures"))
        listed = failures[:MAX_FAILURES_LISTED]
        sec.append(
            f"<p>The first {len(listed)} of {len(failures):,} failing patches (all of them are in "
            f"<code>{esc(man['failures'].get('file', manifest.FAILURES_JSONL))}</code>):</p>"
        )
        sec.append(
            _table(
                ["patch", "split", "stage", "reason", "detail"],
                [
                    [
                        esc(str(d["patch_id"])[:120]),
                        esc(str(d.get("split") or "?")),
                        esc(d["stage"]),
                        esc(d["reason"]),
                        esc(str(d.get("detail", ""))[:300]),
                    ]
                    for d in listed
                ],
                left=5,
                wrap=(4,),
            )
        )
    sec.append("</section>")
    return "".join(sec)


def _throughput_section(man: dict, run: dict | None) -> str:
    """Time and speed of the run (from run.json)."""
    esc = html.escape
    tot_in = sum(s["input"] for s in man["splits"].values())
    sec = ['<section id="throughput"><h2>Throughput</h2>']
    if run:
        rows = [
            ["wall time", f"{run['seconds']:.1f} s"],
            ["patches (input)", _n(run.get("patches", tot_in))],
            ["patches per second", f"{run.get('patches_per_s', 0):.1f}"],
            ["runner", esc(str(run.get("runner")))],
            ["workers", esc(str(run.get("workers")))],
            ["finished (UTC)", esc(str(run.get("finished_utc", "")))],
        ]
        if run.get("peak_rss_mib"):
            rows.append(["peak memory of the driver process", f"{run['peak_rss_mib']:.0f} MiB"])
        sec.append(_table(["", ""], rows))
        sec.append(
            '<p class="muted">From <code>run.json</code>: the one part of the report that differs '
            "between two runs of the same conversion.</p>"
        )
    else:
        sec.append('<p class="muted">Not recorded: this dataset has no <code>run.json</code>.</p>')
    sec.append("</section>")
    return "".join(sec)


def _histograms_section(man: dict, plots: dict) -> str:
    """Band statistics and their histograms."""
    esc = html.escape
    sec = ['<section id="histograms"><h2>Band statistics and histograms</h2>']
    st = man["statistics"]
    sec.append(
        f"<p>Source: {esc(str(st.get('source', '')))}; split {esc(str(st.get('split', 'train')))}; "
        f"clipping {'on' if st.get('clip', True) else 'off'} at percentiles "
        f"{esc(str(st.get('clip_percentiles')))}.</p>"
    )
    if plots.get("histograms"):
        sec.append(_img(plots["histograms"], "per-band histograms with clipping percentiles", ident="plot-histograms"))
    else:
        sec.append('<p class="muted">No histograms: the statistics were given with <code>--stats</code>.</p>')
    rows = [
        [
            esc(b),
            _n(int(s.get("count", 0))),
            _f(s.get("mean")),
            _f(s.get("std")),
            _f(s.get("min")),
            _f(s.get("max")),
            _f(s.get("p_low")),
            _f(s.get("p_high")),
            _f(s.get("clipped_mean")),
            _f(s.get("clipped_std")),
        ]
        for b, s in st["bands"].items()
    ]
    sec.append(
        _table(["band", "pixels", "mean", "std", "min", "max", "p low", "p high", "clipped mean", "clipped std"], rows)
    )
    sec.append("</section>")
    return "".join(sec)


def _classes_section(man: dict, plots: dict) -> str:
    """Class pixel frequencies per split."""
    esc = html.escape
    splits = man["splits"]
    sec = [
        '<section id="classes"><h2>Class pixel frequencies</h2>',
        _img(plots["classes"], "class pixel frequencies", ident="plot-classes"),
    ]
    names = man["classes"]
    sp = [s for s in manifest.SPLITS if s in splits]
    rows = []
    for i, n in enumerate(names):
        c = man["class_colors"][i]
        sw = f'<span style="display:inline-block;width:.8em;height:.8em;background:rgb({c[0]},{c[1]},{c[2]})"></span>'
        rows.append(
            [f"{sw} {i} {esc(n)}"]
            + [f"{100 * (splits[s].get('class_pixel_frequencies') or [0] * 19)[i]:.2f}%" for s in sp]
        )
    sec.append(_table(["class"] + sp, rows))
    sec.append("</section>")
    return "".join(sec)


def _samples_section(man: dict, samples: list) -> str:
    """Sample patches: RGB beside the label map."""
    esc = html.escape
    names = man["classes"]
    sec = ['<section id="samples"><h2>Sample patches</h2>']
    if samples:
        sec.append(
            '<p class="muted">RGB = B04, B03, B02 stretched between the clipping percentiles; right: the '
            "label map in the class colours (dark grey: ignored pixels).</p><div class=samples>"
        )
        for ex, rgb, lab in samples:
            present = sorted(set(np.unique(np.asarray(ex["label"]))) - {man["ignore_index"]})
            cap = ", ".join(names[int(c)] for c in present[:4]) + (" …" if len(present) > 4 else "")
            sec.append(
                f"<figure>{_img(rgb, 'RGB of ' + ex['patch_id'], 'sample')}"
                f"{_img(lab, 'label map of ' + ex['patch_id'], 'sample')}"
                f"<figcaption><code>{esc(ex['patch_id'])}</code> ({esc(ex['split'])})<br>{esc(cap)}"
                "</figcaption></figure>"
            )
        sec.append("</div>")
    else:
        sec.append("<p>No patch was written.</p>")
    sec.append("</section>")
    return "".join(sec)
