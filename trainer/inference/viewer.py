"""``viewer.html``: one self-contained page over the tiles of a ``benbeam predict`` run.

A table (tile, pixels, seconds, pixels/s, peak memory, device) and one card per tile with
its preview embedded as a ``data:`` URI (the page works when copied alone) and links to
the tile's outputs relative to the page (they work beside the outputs). No script. The
page's folder may be local or in ``s3://`` / ``gs://``.
"""

from __future__ import annotations

import base64
import html

from bigearthnet_beam.trainer.inference.settings import PREVIEW
from bigearthnet_beam.transforms import storage

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:12px 0 24px}
th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
section.tile{border:1px solid #ddd;border-radius:6px;padding:12px 16px;margin:16px 0}
section.tile img{max-width:100%;height:auto;border:1px solid #eee}
section.failed{border-color:#d33;background:#fff5f5}
ul.files{columns:3;font-size:90%}
.warn{color:#a60}
"""


def _esc(v) -> str:
    return html.escape(str(v), quote=True)


def _anchor(name: str) -> str:
    return "tile-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _data_uri(path: str, st=None) -> str | None:
    try:
        data = (st if st is not None else storage.Storage()).read_bytes(path)
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    except OSError:
        return None


def render_viewer(
    page_dir: str, summaries: list[dict], failures: list[dict] = (), *, title: str = "benbeam predict", st=None
) -> str:
    """The page's HTML. Each summary is a ``predict_tile`` summary plus ``dir``: its output
    folder relative to ``page_dir``."""
    rows, cards = [], []
    for s in summaries:
        d = s.get("dir", "")
        mib = s["peak_rss_bytes"] / 2**20
        pps = f"{s['pixels_per_s']:,.0f}" if s.get("pixels_per_s") else ""
        rows.append(
            f'<tr><td><a href="#{_anchor(s["tile"])}">{_esc(s["tile"])}</a></td><td>{s["pixels"]:,}</td>'
            f"<td>{s['seconds']:.2f}</td><td>{pps}</td><td>{mib:,.0f} MiB</td>"
            f"<td>{_esc(s['device'])}</td></tr>"
        )
        uri = _data_uri(storage.join(page_dir, *(p for p in (d, PREVIEW) if p)), st)
        img = (
            f'<img id="preview-{_esc(_anchor(s["tile"]))}" src="{uri}" alt="class map of {_esc(s["tile"])}">'
            if uri
            else '<p class="warn">no preview</p>'
        )
        files = "".join(
            f'<li><a href="{_esc("/".join(p for p in (d, f) if p))}">{_esc(f)}</a></li>' for f in s.get("outputs", [])
        )
        total = max(1, s["pixels"])
        top = sorted(s.get("class_pixels", {}).items(), key=lambda kv: -kv[1])[:6]
        classes = ", ".join(f"{_esc(n)} {100.0 * c / total:.1f}%" for n, c in top)
        warns = "".join(f'<p class="warn">warning: {_esc(w)}</p>' for w in s.get("warnings", []))
        cards.append(
            f'<section class="tile" id="{_anchor(s["tile"])}"><h2>{_esc(s["tile"])}</h2>'
            f"<p>{s['width']}×{s['height']} px, {s['seconds']:.1f} s, {pps} px/s, peak memory {mib:,.0f} MiB, "
            f"{_esc(s['device'])}; CRS {_esc(s.get('crs', ''))}</p>{warns}"
            f'<p>largest classes: {classes or "none"}</p>{img}<ul class="files">{files}</ul></section>'
        )
    for f in failures:
        rows.append(f'<tr><td>{_esc(f["tile"])}</td><td colspan="5">failed: {_esc(f["reason"])}</td></tr>')
        cards.append(
            f'<section class="tile failed" id="{_anchor(f["tile"])}"><h2>{_esc(f["tile"])}</h2>'
            f"<p>failed: {_esc(f['reason'])}</p><p>{_esc(f.get('path', ''))}</p></section>"
        )
    n_px = sum(s["pixels"] for s in summaries)
    n_s = sum(s["seconds"] for s in summaries)
    head = "<tr><th>tile</th><th>pixels</th><th>seconds</th><th>pixels/s</th><th>peak memory</th><th>device</th></tr>"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>"
        f"<p>{len(summaries)} tiles mapped ({n_px:,} px in {n_s:.1f} s), {len(failures)} failed.</p>"
        f'<table id="report">{head}{"".join(rows)}</table>{"".join(cards)}</body></html>\n'
    )


def write_viewer(
    path: str, summaries: list[dict], failures: list[dict] = (), *, title: str = "benbeam predict", st=None
):
    """Write the page to ``path`` (local or a URL, under the ``Storage`` ``st``), its previews read from beside it."""
    st = st if st is not None else storage.Storage()
    text = render_viewer(storage.parent(path), summaries, failures, title=title, st=st)
    st.write_bytes_atomic(path, text.encode("utf-8"))
