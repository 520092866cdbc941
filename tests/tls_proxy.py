"""An HTTPS-intercepting proxy for the tests: lets a client that only talks to Google's hosts
(TensorFlow's GCS file system) reach a fake-gcs-server on 127.0.0.1.

The client is pointed at the proxy with ``https_proxy`` and made to trust a self-signed
certificate for the intercepted host names with ``CURL_CA_BUNDLE``; each ``CONNECT`` is answered,
its TLS terminated with that certificate, and the plain bytes relayed to the target.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import select
import shutil
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass, field

HOST = "127.0.0.1"


def self_signed(names: list[str], folder: str) -> tuple[str, str]:
    """A self-signed certificate (its own CA) for ``names``; returns (cert.pem, key.pem) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


def _relay(a: socket.socket, b: socket.socket) -> None:
    socks = [a, b]
    try:
        while True:
            ready, _, _ = select.select(socks, [], [], 30)
            if not ready:
                return
            for s in ready:
                data = s.recv(1 << 16)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        return
    finally:
        a.close()
        b.close()


@dataclass
class Proxy:
    url: str  # for https_proxy
    ca_bundle: str  # for CURL_CA_BUNDLE
    connects: list = field(default_factory=list)  # host names of the CONNECTs served


@contextlib.contextmanager
def intercepting_proxy(target: tuple[str, int], names: list[str]):
    """Yields a ``Proxy``; every CONNECT to one of ``names`` reaches ``target`` (plain TCP)."""
    folder = tempfile.mkdtemp(prefix="benbeam-tls-proxy-")
    cert, key = self_signed(names, folder)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(64)
    stop = threading.Event()
    proxy = Proxy(f"http://{HOST}:{srv.getsockname()[1]}", cert)

    def handle(conn: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    conn.close()
                    return
                head += chunk
            host = head.split(b" ", 2)[1].decode().rsplit(":", 1)[0]
            if not head.startswith(b"CONNECT ") or host not in names:
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                conn.close()
                return
            proxy.connects.append(host)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            tls = ctx.wrap_socket(conn, server_side=True)
            up = socket.create_connection(target)
            _relay(tls, up)
        except (OSError, ssl.SSLError):
            conn.close()

    def serve() -> None:
        srv.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(None)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield proxy
    finally:
        stop.set()
        t.join()
        srv.close()
        shutil.rmtree(folder, ignore_errors=True)
