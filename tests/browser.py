"""Render a local HTML page in a real headless Chromium and report what a person would see.

Uses Debian's ``chromium`` (``/usr/bin/chromium``; ``.ci/run`` installs it) driven by
Playwright's Python client, which talks to that browser and downloads none of its own.
``render`` returns the page's headings, sections, images (with whether each one actually
decoded: ``complete`` and a non-zero natural size), links, and any console or page errors.

Without Chromium a test calling ``require_chromium`` is skipped on a developer machine
with the reason, and fails under CI (``CI`` set), so CI never hides a skipped browser test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Flags the machine needs: headless as root, and no background calls to Google's hosts
# on a closed network (each one refused makes the start slow and noisy).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

_COLLECT = """() => ({
  title: document.title,
  headings: Array.from(document.querySelectorAll('h1,h2,h3')).map(h => h.textContent.trim()),
  sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
  images: Array.from(document.images).map(i => ({
    src: (i.getAttribute('src') || '').slice(0, 80), alt: i.alt, id: i.id,
    complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
    loaded: i.complete && i.naturalWidth > 0 && i.naturalHeight > 0})),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
  text: document.body ? document.body.innerText : '',
  scroll_width: document.documentElement.scrollWidth,
})"""


def chromium_path() -> str | None:
    for cand in (
        os.environ.get("BENBEAM_CHROMIUM"),
        shutil.which("chromium"),
        "/usr/bin/chromium",
        shutil.which("chromium-browser"),
    ):
        if cand and os.path.exists(cand):
            return cand
    return None


def require_chromium() -> str:
    path = chromium_path()
    if path is None:
        msg = "Debian's chromium is not installed (apt-get install chromium; .ci/run does this)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]'")
    return path


def render(page_path: str | os.PathLike, *, screenshot: str | None = None, timeout_ms: int = 30_000) -> dict:
    """Open ``page_path`` (a local HTML file) in headless Chromium, wait for it to load, and
    return what it shows (see ``_COLLECT``) plus ``errors``: console errors and page errors."""
    from playwright.sync_api import sync_playwright

    exe = require_chromium()
    url = Path(page_path).resolve().as_uri()
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.goto(url, wait_until="load", timeout=timeout_ms)
            # Every <img> either decoded or failed by now; lazy images are forced to load.
            page.evaluate("""async () => { for (const i of document.images) { i.loading = 'eager';
                if (!i.complete) await new Promise(r => { i.onload = r; i.onerror = r; }); } }""")
            out = page.evaluate(_COLLECT)
            if screenshot:
                page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()
    out["errors"] = errors
    return out
