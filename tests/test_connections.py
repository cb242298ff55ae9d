"""Slow clients against `jmvae serve`: half-sent requests are closed after the header or body timeout, the service
answers others meanwhile, and connections beyond the cap get a clean 503."""

from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit

import httpx
import pytest

from bench.processes import serve_subprocess

SLOW = 2000
TIMEOUTS = {"JMVAE_HEADER_TIMEOUT_S": "2", "JMVAE_BODY_TIMEOUT_S": "2", "JMVAE_WARMUP_BATCHES": "1"}


@pytest.fixture(scope="module", autouse=True)
def enough_file_descriptors() -> Iterator[None]:
    # The test's sockets and the server's (a child, which inherits the limit) with room to spare.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * SLOW + 1024
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


@contextmanager
def _half_sent(url: str, count: int, data: bytes) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            s = stack.enter_context(socket.create_connection(_address(url), timeout=10))
            s.sendall(data)
            sockets.append(s)
        yield sockets


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _closed_by_server(s: socket.socket, within_s: float) -> bytes:
    """What the server sent before closing (b"" if nothing); fails if it kept the connection open."""
    s.settimeout(within_s)
    received = b""
    while chunk := s.recv(4096):
        received += chunk
    return received


@pytest.mark.slow
def test_half_sent_requests_are_closed_and_the_service_answers_meanwhile() -> None:
    env = TIMEOUTS | {"JMVAE_HEADER_TIMEOUT_S": "4"}
    with serve_subprocess(None, env) as served, httpx.Client(base_url=served.url, timeout=30) as client:
        baseline = _open_fds(served.process.pid)
        started = time.monotonic()
        with _half_sent(served.url, SLOW, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ") as sockets:
            held = baseline
            while time.monotonic() - started < 3 and held < baseline + SLOW:  # the server accepts them all
                held = max(held, _open_fds(served.process.pid))
                time.sleep(0.05)
            assert held >= baseline + SLOW * 0.9, held
            # Meanwhile, other clients are answered, and promptly.
            for path in ("/healthz", "/generate"):
                asked = time.monotonic()
                answer = client.get(path) if path == "/healthz" else client.post(path, json={"n": 1})
                assert answer.status_code == 200 and time.monotonic() - asked < 1.5, path
            # Each half-sent request is answered 408 and closed once its headers are 4 s late, not before.
            answers = {_closed_by_server(s, within_s=20) for s in sockets}
            assert time.monotonic() - started >= 4
        assert answers == {b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"}
        deadline = time.monotonic() + 10
        while _open_fds(served.process.pid) > baseline + 10:
            assert time.monotonic() < deadline, "the server kept the connections' file descriptors"
            time.sleep(0.1)
        assert client.get("/healthz").status_code == 200


@pytest.mark.slow
def test_a_stalled_body_is_closed_and_a_complete_slow_one_is_not() -> None:
    head = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n"
    with serve_subprocess(None, TIMEOUTS) as served:
        with _half_sent(served.url, 1, head + b'{"n"') as (stalled,), _half_sent(served.url, 1, head) as (slow,):
            for part in (b'{"n"', b": 1", b"}"):  # each pause shorter than the body timeout
                time.sleep(1)
                slow.sendall(part)
            assert _closed_by_server(stalled, within_s=20) == b""  # the app never answered it: nothing to say
            slow.settimeout(20)
            assert slow.recv(12) == b"HTTP/1.1 200"


@pytest.mark.slow
def test_connections_beyond_the_cap_get_a_clean_503() -> None:
    env = TIMEOUTS | {"JMVAE_MAX_CONNECTIONS": "20", "JMVAE_HEADER_TIMEOUT_S": "30"}
    with serve_subprocess(None, env) as served:
        with _half_sent(served.url, 25, b"GET /healthz HTTP/1.1\r\n"):
            refused = httpx.get(f"{served.url}/healthz", timeout=10)
            assert refused.status_code == 503
        deadline = time.monotonic() + 10
        while httpx.get(f"{served.url}/healthz", timeout=10).status_code != 200:  # the cap frees with them
            assert time.monotonic() < deadline
            time.sleep(0.1)


@pytest.mark.unit
def test_the_protocol_is_named_by_an_import_string_worker_processes_can_load() -> None:
    from uvicorn.importer import import_from_string

    from jmvae.service import connections
    from jmvae.service.connections import TimedH11Protocol, protocol

    assert import_from_string(protocol("h11")) is TimedH11Protocol
    assert import_from_string(protocol("httptools")) is connections.TimedHttpToolsProtocol
    assert import_from_string(protocol("auto")) is connections.TimedHttpToolsProtocol  # httptools is installed
