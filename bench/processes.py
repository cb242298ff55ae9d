"""Servers in subprocesses for the benchmarks and the tests: started on a free loopback port, yielded once ready,
and ended with whatever they started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Served:
    """A running `jmvae serve`: its base URL and its process (the uvicorn parent when workers > 1)."""

    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def server_process(
    cmd: list[str],
    env: dict[str, str],
    ready_url: str,
    ready_in_a_row: int = 10,
    cwd: Path | None = None,
    timeout_s: float = 120,
    workers: int = 0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs `cmd` (any HTTP server) until `ready_url` has answered 200 `ready_in_a_row` times in a row, each on a
    fresh connection, and, with `workers`, until that many distinct `worker` ids have said so (a worker still
    warming up may leave every connection to a ready one); yields the process, and on exit terminates it and
    whatever it started."""
    # A file, not a pipe: the access log would fill an unread pipe and stall the server.
    log = tempfile.TemporaryFile()
    # Its own process group, so that worker processes a server leaves behind on exit can be ended too.
    proc = subprocess.Popen(
        cmd, env=os.environ | env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout_s
        ready = 0
        seen: set[object] = set()
        while ready < ready_in_a_row or len(seen) < workers:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{cmd[0]} exited: {log.read().decode(errors='replace')[-2000:]}")
            try:
                response = httpx.get(ready_url, timeout=1)
                ok = response.status_code == 200
                if ok and workers:
                    seen.add(response.json().get("worker"))
            except httpx.TransportError:
                ok = False
            ready = ready + 1 if ok else 0
            if time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(
                    f"{ready_url} not ready in {timeout_s:.0f} s: {log.read().decode(errors='replace')[-2000:]}"
                )
            if not ok:
                time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()


@contextmanager
def serve_subprocess(checkpoint: Path | None, env: dict[str, str], workers: int = 1) -> Iterator[Served]:
    """`jmvae serve` on a free loopback port, yielded once every worker is ready; terminated on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "jmvae.cli", "serve", "--port", str(port), "--workers", str(workers)]
    if checkpoint:
        cmd += ["--checkpoint", str(checkpoint)]
    url = f"http://127.0.0.1:{port}"
    # Workers share the listening socket and one still warming up answers 503, so a single 200 proves little
    # when there are several: wait for a run of them.
    with server_process(cmd, env, f"{url}/readyz", ready_in_a_row=10 * workers, workers=workers) as proc:
        yield Served(url, proc)
