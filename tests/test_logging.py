"""Logs: JSON lines from a real `jmvae serve`, request ids end to end, and the API key never written."""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from service_support import free_port, running_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from jmvae.service.logs import RequestContext, resolve_log_format
from jmvae.service.settings import Settings

KEY = "k3y-that-must-never-be-logged"


def _serve(checkpoint: Path, log: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "jmvae.cli", "serve", "--port", str(port)],
        env={**os.environ, "JMVAE_CHECKPOINT": str(checkpoint), **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "server did not get ready"
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def test_serve_writes_json_lines_with_request_ids_and_never_the_key(tiny_checkpoint: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    process, url = _serve(tiny_checkpoint, log, JMVAE_API_KEY=KEY, JMVAE_LOG_LEVEL="info")
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            ok = client.get("/model", headers={"Authorization": f"Bearer {KEY}", "X-Request-ID": "trace-42"})
            wrong = client.get("/model", headers={"Authorization": f"Bearer {KEY}x", "X-Request-ID": "trace-43"})
            forged = client.get(
                "/model", headers={"Authorization": f"Bearer {KEY}", "X-Request-ID": 'a b"} {"level": "forged'}
            )
            fresh = client.post(
                "/generate", json={"attributes": {}, "n": 1}, headers={"Authorization": f"Bearer {KEY}"}
            )
    finally:
        process.terminate()
        # uvicorn re-raises the signal once it has shut down cleanly, as a shell expects.
        assert process.wait(timeout=60) == -signal.SIGTERM
    assert (ok.status_code, wrong.status_code, forged.status_code, fresh.status_code) == (200, 401, 200, 200)
    assert ok.headers["x-request-id"] == "trace-42" and wrong.headers["x-request-id"] == "trace-43"
    # A malformed id is replaced, not echoed into headers or logs.
    assert forged.headers["x-request-id"] != 'a b"} {"level": "forged'
    assert len(fresh.headers["x-request-id"]) == 32

    text = log.read_text()
    assert KEY not in text and "forged" not in text
    entries = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    access = {e["request_id"]: e["http"] for e in entries if e["logger"] == "jmvae.service.access"}
    assert access["trace-42"] | {"duration_ms": 0} == {
        "method": "GET",
        "path": "/model",
        "status": 200,
        "duration_ms": 0,
        "client": "127.0.0.1",
    }
    assert access["trace-43"]["status"] == 401
    assert access[forged.headers["x-request-id"]]["status"] == 200
    assert access[fresh.headers["x-request-id"]]["path"] == "/generate"
    assert any(e["message"].startswith(f"loaded {tiny_checkpoint.name}") for e in entries)
    assert any(e["logger"] == "uvicorn.error" and "Application startup complete" in e["message"] for e in entries)


def test_text_format_and_a_bad_setting_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jmvae.cli", "serve"],
        capture_output=True,
        text=True,
        env={**os.environ, "JMVAE_LOG_FORMAT": "xml"},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "jmvae serve: JMVAE_LOG_FORMAT: Input should be 'auto', 'json' or 'text'"
    ]


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        super().isatty()  # raises ValueError once closed, as a real stream's does
        return self.tty


@pytest.mark.unit
def test_auto_log_format_is_text_at_a_terminal_and_json_elsewhere_unless_set() -> None:
    assert resolve_log_format("auto", _Stream(tty=True)) == "text"
    assert resolve_log_format("auto", _Stream(tty=False)) == "json"
    closed = _Stream(tty=True)
    closed.close()  # isatty() on a closed stream raises ValueError: nobody reads it
    assert resolve_log_format("auto", closed) == "json"
    for explicit in ("json", "text"):
        for tty in (True, False):
            assert resolve_log_format(explicit, _Stream(tty)) == explicit  # the setting wins
    assert Settings().log_format == "auto"


def test_logs_at_a_real_terminal_are_text_and_json_through_a_pipe() -> None:
    """The resolution as a process sees it: stderr a pseudo-terminal, then a pipe, with the default setting."""
    script = (
        "import logging.config; from jmvae.service.logs import log_config; "
        "logging.config.dictConfig(log_config()); logging.getLogger('jmvae.service').warning('hello')"
    )
    env = {k: v for k, v in os.environ.items() if k != "JMVAE_LOG_FORMAT"}
    leader, follower = pty.openpty()
    try:
        subprocess.run([sys.executable, "-c", script], stderr=follower, env=env, timeout=60, check=True)
        os.close(follower)
        at_terminal = b""
        while select.select([leader], [], [], 0.1)[0]:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            at_terminal += chunk
    finally:
        os.close(leader)
    line = at_terminal.decode().strip()
    assert line.endswith("WARNING jmvae.service [None] hello") and not line.startswith("{"), line
    piped = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    entry = json.loads(piped.stderr)
    assert (entry["level"], entry["message"]) == ("warning", "hello")


@pytest.mark.unit
def test_an_unhandled_error_is_logged_once_with_its_request_id(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: Request) -> PlainTextResponse:
        raise RuntimeError("boom")

    async def fine(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = RequestContext(Starlette(routes=[Route("/broken", broken), Route("/fine", fine)]))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (
                await client.get("/broken", headers={"X-Request-ID": "r-1"}),
                await client.get("/fine", headers={"X-Request-ID": "r-2"}),
            )

    with caplog.at_level("INFO", logger="jmvae"):
        broken_response, fine_response = asyncio.run(run())
    assert broken_response.status_code == 500 and fine_response.status_code == 200
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is not None and "boom" in str(errors[0].exc_info[1])
    access = {r.http["path"]: r.http["status"] for r in caplog.records if hasattr(r, "http")}
    assert access == {"/broken": 500, "/fine": 200}


def test_the_key_is_compared_through_compare_digest(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with running_server(Settings(checkpoint=tiny_checkpoint, api_key=KEY)) as url:
        short = httpx.get(f"{url}/model", headers={"Authorization": "Bearer x"})
        right = httpx.get(f"{url}/model", headers={"Authorization": f"Bearer {KEY}"})
    assert (short.status_code, right.status_code) == (401, 200)
    # Fixed-length digests: a short guess takes as long to refuse as a nearly right one.
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)
