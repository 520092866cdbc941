"""Several "hosts" on one machine: network namespaces, each with its own address on a veth
pair attached to one Linux bridge (the root namespace gets ``.1`` on the bridge). Needs
root (``ip`` from iproute2). Used by the multi-host Dask test and the runner benchmark;
everything is deleted when the context ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no ``ip``, no permission)."""


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {r.stderr.strip()}")


@contextlib.contextmanager
def hosts(names: list[str]):
    """``{name: (namespace, address)}`` of one namespace per name on a fresh /24."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise NetnsUnavailable("network namespaces need root and iproute2's `ip`")
    tag = f"bb{os.getpid() % 100000}{random.randrange(100)}"[:9]
    net = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
    bridge = f"{tag}br"
    made: list[str] = []
    links: list[str] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        links.append(bridge)
        _ip("addr", "add", f"{net}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        out = {}
        for i, name in enumerate(names):
            ns, veth = f"{tag}-{name}", f"{tag}v{i}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
            links.append(veth)
            _ip("link", "set", f"{veth}p", "netns", ns)
            _ip("link", "set", veth, "master", bridge)
            _ip("link", "set", veth, "up")
            addr = f"{net}.{10 + i}"
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", f"{veth}p")
            _ip("-n", ns, "link", "set", f"{veth}p", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            out[name] = (ns, addr)
        yield out
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)


def exec_prefix(ns: str) -> list[str]:
    """The command prefix that runs a program inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns]


@contextlib.contextmanager
def dask_cluster(
    scheduler: tuple[str, str], workers: list[tuple[str, str]], env: dict, log_dir: str, python: str, threads: int = 1
):
    """A dask.distributed scheduler and one worker process per entry (no nanny: a killed
    worker stays dead), each in its (namespace, address). Yields (scheduler address,
    {address: worker Popen})."""
    import socket
    import time

    procs = []
    sched_ns, sched_addr = scheduler
    address = f"{sched_addr}:8786"

    def start(cmd, name):
        log = open(os.path.join(log_dir, f"{name}.log"), "wb")
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        start(
            exec_prefix(sched_ns)
            + [
                python,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                sched_addr,
                "--port",
                "8786",
                "--dashboard-address",
                ":0",
            ],
            "scheduler",
        )
        t0 = time.monotonic()
        while True:
            try:
                socket.create_connection((sched_addr, 8786), timeout=1).close()
                break
            except OSError:
                if time.monotonic() - t0 > 60 or procs[0].poll() is not None:
                    raise RuntimeError("the Dask scheduler did not start") from None
                time.sleep(0.3)
        ws = {}
        for ns, addr in workers:
            ws[addr] = start(
                exec_prefix(ns)
                + [
                    python,
                    "-m",
                    "distributed.cli.dask_worker",
                    f"tcp://{address}",
                    "--host",
                    addr,
                    "--nthreads",
                    str(threads),
                    "--no-nanny",
                    "--dashboard-address",
                    ":0",
                    "--name",
                    addr,
                ],
                f"worker-{addr}",
            )
        from distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(len(workers), timeout=90)
        yield address, ws
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
