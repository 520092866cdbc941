"""The fault matrix of docs/troubleshooting.md, produced by running every fault, not written by hand.

Each row injects one fault (file, object store, process, disk, input, output folder) into a
small synthetic replica, runs the real command line (``python -m bigearthnet_beam``) and
records what the user sees (the last line on stderr), the exit code and what is on disk
afterwards. ``--readme docs/troubleshooting.md`` replaces the table between the markers
``<!-- fault-matrix:start -->`` and ``<!-- fault-matrix:end -->``.

    PYTHONPATH=. python benchmarks/fault_matrix.py --readme docs/troubleshooting.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

START, END = "<!-- fault-matrix:start -->", "<!-- fault-matrix:end -->"
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=_HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))


def benbeam(*args, timeout=600, interrupt_when: str | None = None) -> tuple[int, str, float]:
    """(exit code, last stderr line, seconds) of one command; ``interrupt_when``: send Ctrl-C
    (SIGINT to its process group) once this file exists (the run has begun writing) — or never."""
    cmd = [sys.executable, "-m", "bigearthnet_beam", *map(str, args)]
    t0 = time.monotonic()
    p = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True
    )
    if interrupt_when is not None:
        while p.poll() is None and not os.path.exists(interrupt_when):
            time.sleep(0.05)
        time.sleep(1.0)  # the pipeline is starting its workers
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    _, err = p.communicate(timeout=timeout)
    lines = [x for x in err.strip().splitlines() if x.strip()]
    return p.returncode, (lines[-1] if lines else ""), time.monotonic() - t0


def on_disk(path: str) -> str:
    """A short description of what ``path`` holds."""
    if not os.path.exists(path):
        return "nothing (no folder)"
    if os.path.isfile(path):
        return f"{os.path.basename(path)} ({os.path.getsize(path)} bytes)"
    names = sorted(n for n in os.listdir(path))
    if not names:
        return "an empty folder"
    shown = [n for n in names if n not in ("report",)]
    return ", ".join(shown[:8]) + (" …" if len(shown) > 8 else "")


def scenarios(d: str):
    """Yield (kind, fault, command shown, callable returning (rc, line, seconds, disk))."""
    ok, bad = os.path.join(d, "ok"), os.path.join(d, "bad")
    meta = os.path.join(ok, "metadata.parquet")

    def conv(out, *extra, meta=meta, **kw):
        rc, line, s = benbeam("convert", "--meta", meta, "--out", out, "--workers", "1", "--no_report", *extra, **kw)
        return rc, line, s, on_disk(out)

    def o(name):
        return os.path.join(d, "runs", name)

    yield (
        "input",
        "abbreviated flag `--met`",
        "convert --met M --ou OUT",
        lambda: (*benbeam("convert", "--met", meta, "--ou", o("abbrev")), on_disk(o("abbrev"))),
    )
    notpq = os.path.join(d, "not.parquet")
    yield "input", "metadata is not parquet", "convert --meta not.parquet", lambda: conv(o("notpq"), meta=notpq)
    empty = os.path.join(d, "empty.parquet")
    yield "input", "0-row metadata", "convert --meta empty.parquet", lambda: conv(o("empty"), "--root", ok, meta=empty)
    hostile = os.path.join(d, "hostile.parquet")
    yield (
        "input",
        "index points outside the root, at http://, /dev/zero",
        "convert --meta hostile.parquet --root ok",
        lambda: conv(o("hostile"), "--root", ok, meta=hostile),
    )
    yield (
        "file",
        "every patch corrupt (`synth --corrupt 1.0`)",
        "convert",
        lambda: conv(o("corrupt"), meta=os.path.join(bad, "metadata.parquet")),
    )
    gone = os.path.join(d, "nos1")
    yield (
        "file",
        "no training patch readable (S1 folder missing)",
        "convert",
        lambda: conv(o("nos1"), meta=os.path.join(gone, "metadata.parquet")),
    )
    yield "output", "--out holds files of someone else", "convert --out FOLDER", lambda: conv(o("theirs"))
    yield (
        "output",
        "validate --out is a folder",
        "validate --out FOLDER",
        lambda: (*benbeam("validate", "--meta", meta, "--out", o("vdir"), "--workers", "1"), on_disk(o("vdir"))),
    )
    yield "process", "another run holds --out", "convert (second, concurrent)", lambda: conv(o("busy"))
    yield (
        "process",
        "Ctrl-C during convert",
        "convert, SIGINT 1 s after it marked --out",
        lambda: conv(o("sigint"), interrupt_when=os.path.join(o("sigint"), ".benbeam-run.json")),
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield (
        "object store",
        "endpoint unreachable (nothing listens)",
        "convert --meta s3://… --s3_endpoint_url …",
        lambda: (
            *benbeam(
                "convert",
                "--meta",
                "s3://b/m.parquet",
                "--out",
                "s3://b/out",
                "--s3_endpoint_url",
                f"http://127.0.0.1:{port}",
            ),
            "nothing",
        ),
    )
    yield "disk", "disk fills up half way", "convert onto a small tmpfs", lambda: full_disk(d, meta)


def full_disk(d: str, meta: str):
    """convert onto a tmpfs of 1 MB (unshare: a private mount namespace), as tests/test_interruption.py does."""
    if shutil.which("unshare") is None:
        return None, "not run: util-linux's unshare is missing", 0.0, "-"
    mnt = os.path.join(d, "mnt")
    os.makedirs(mnt, exist_ok=True)
    script = (
        "import os, subprocess, sys, json\n"
        "mnt = sys.argv[1]\n"
        "subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1200k', 'tmpfs', mnt], check=True)\n"
        "r = subprocess.run(json.loads(sys.argv[2]), capture_output=True, text=True)\n"
        "lines = [x for x in r.stderr.strip().splitlines() if x.strip()]\n"
        "out = os.path.join(mnt, 'ds')\n"
        "disk = sorted(os.listdir(out)) if os.path.isdir(out) else []\n"
        "print(json.dumps([r.returncode, lines[-1] if lines else '', disk]))\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "bigearthnet_beam",
        "convert",
        "--meta",
        meta,
        "--out",
        os.path.join(mnt, "ds"),
        "--workers",
        "1",
        "--no_report",
        "--shard_size",
        "2",
    ]
    t0 = time.monotonic()
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", script, mnt, json.dumps(cmd)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    if r.returncode != 0:
        return None, f"not run: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'unshare failed'}", 0.0, "-"
    rc, line, disk = json.loads(r.stdout.strip().splitlines()[-1])
    return rc, line, time.monotonic() - t0, ", ".join(disk) or "an empty folder"


def prepare(d: str) -> None:
    """The replicas and files the scenarios need."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def run(*args):
        subprocess.run(
            [sys.executable, "-m", "bigearthnet_beam", *args],
            check=True,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    run("synth", "--out", os.path.join(d, "ok"), "--n", "8", "--seed", "1", "--workers", "1")
    run("synth", "--out", os.path.join(d, "bad"), "--n", "8", "--seed", "1", "--corrupt", "1.0", "--workers", "1")
    shutil.copytree(os.path.join(d, "ok"), os.path.join(d, "nos1"))
    shutil.rmtree(os.path.join(d, "nos1", "BigEarthNet-S1"))
    with open(os.path.join(d, "not.parquet"), "w") as fh:
        fh.write("patch_id,split\n")
    table = pq.read_table(os.path.join(d, "ok", "metadata.parquet"))
    pq.write_table(table.slice(0, 0), os.path.join(d, "empty.parquet"))
    run("index", "--meta", os.path.join(d, "ok", "metadata.parquet"), "--out", os.path.join(d, "index.parquet"))
    idx = pq.read_table(os.path.join(d, "index.parquet"))
    cols = {c: idx.column(c).to_pylist() for c in idx.column_names}
    for i, evil in enumerate(["/etc/passwd", "http://169.254.169.254/latest/meta-data/", "/dev/zero"]):
        cols["url_B02"][i] = evil
    pq.write_table(pa.table(cols, schema=idx.schema), os.path.join(d, "hostile.parquet"))
    runs = os.path.join(d, "runs")
    os.makedirs(os.path.join(runs, "theirs", "train"))
    for rel in ("train/train-00000-of-00001.tfrecord", "stats.json", ".tmp-x", "notes.txt"):
        with open(os.path.join(runs, "theirs", rel), "w") as fh:
            fh.write("not benbeam's\n")
    os.makedirs(os.path.join(runs, "vdir"))
    os.makedirs(os.path.join(runs, "busy"))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    with open(os.path.join(runs, "busy", ".benbeam-lock.json"), "w") as fh:
        json.dump(
            {
                "pid": holder.pid,
                "host": socket.gethostname(),
                "command": "benbeam convert",
                "since": "(the matrix's stand-in)",
            },
            fh,
        )
    return holder


def table(rows, workdir: str = "") -> str:
    """The Markdown table of the rows (the work folder shown as ``D``)."""
    out = [
        "| kind | fault | what the user sees (last line) | exit | on disk afterwards |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, fault, _, rc, line, secs, disk in rows:
        line = (line.replace(workdir, "D") if workdir else line).replace("|", "\\|").replace("`", "'")
        line = (line[:230] + " …") if len(line) > 230 else line
        out.append(f"| {kind} | {fault} | `{line}` ({secs:.0f} s) | {rc if rc is not None else '-'} | {disk} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--readme", default=None, help="rewrite the table in this README")
    ap.add_argument("--keep", default=None, help="work in this folder (kept) instead of a temporary one")
    args = ap.parse_args(argv)
    d = args.keep or tempfile.mkdtemp(prefix="benbeam-fault-matrix-")
    holder = prepare(d)
    rows = []
    try:
        for kind, fault, shown, fn in scenarios(d):
            rc, line, secs, disk = fn()
            rows.append((kind, fault, shown, rc, line, secs, disk))
            print(f"{kind:<12} {fault:<55} exit {rc}  {line[:120]}", file=sys.stderr)
    finally:
        holder.kill()
        holder.wait()
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    text = table(rows, d)
    print(text)
    if args.readme:
        doc = open(args.readme).read()
        a, b = doc.index(START) + len(START), doc.index(END)
        open(args.readme, "w").write(doc[:a] + "\n" + text + "\n" + doc[b:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
