"""Request deadlines over real HTTP (an in-process uvicorn): a request that waits in the queue past
JMVAE_REQUEST_TIMEOUT_MS, or past the less its X-Request-Timeout-Ms asks for, is answered 503 deadline_exceeded
with Retry-After as soon as it passes and never runs; a client that disconnects leaves the queue; bad header
values are 422s naming the header. The model path is held by one request (a gate around Engine.generate_batch),
so what waits behind it does not depend on how busy the machine is."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_support import image_bytes, running_server

from jmvae.service.deadlines import deadline_for
from jmvae.service.engine import Engine, Generated, GenerateJob
from jmvae.service.settings import Settings

HOLD = 7  # the seed of the request that holds the model thread
HEADER = "X-Request-Timeout-Ms"
WAIT_S = 30.0  # the most anything may take before the test fails; never waited out on success


class Gate:
    """Wraps Engine.generate_batch: records every seed that reaches the model, and holds the batch with seed HOLD
    until released."""

    def __init__(self) -> None:
        self.seeds: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate, original = Gate(), Engine.generate_batch

    def generate_batch(self: Engine, jobs: Sequence[GenerateJob]) -> list[Generated]:
        gate.seeds.extend(job.seed for job in jobs)
        if any(job.seed == HOLD for job in jobs):
            gate.entered.set()
            assert gate.release.wait(WAIT_S), "the test never released the model"
        return original(self, jobs)

    monkeypatch.setattr(Engine, "generate_batch", generate_batch)
    yield gate
    gate.release.set()


def _settings(checkpoint: Path, timeout_ms: float) -> Settings:
    return Settings(checkpoint=checkpoint, request_timeout_ms=timeout_ms, max_batch_size=1, warmup_batches=1)


def _generate(url: str, seed: int, headers: dict[str, str] | None = None, timeout: float = WAIT_S) -> httpx.Response:
    return httpx.post(f"{url}/generate", json={"n": 0, "seed": seed}, headers=headers, timeout=timeout)


def _metric(url: str, line: str) -> float:
    match = re.search(rf"^{re.escape(line)} (\S+)$", httpx.get(f"{url}/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_request_late_in_the_queue_gets_503_as_its_deadline_passes_and_never_runs(
    tiny_checkpoint: Path, gate: Gate
) -> None:
    with running_server(_settings(tiny_checkpoint, 300)) as url, ThreadPoolExecutor(4) as pool:
        holder = pool.submit(_generate, url, HOLD)
        assert gate.entered.wait(WAIT_S)
        late = {
            "setting": pool.submit(_generate, url, 2),
            "less": pool.submit(_generate, url, 3, {HEADER: "50"}),
            "more, clamped": pool.submit(_generate, url, 4, {HEADER: "100000"}),
        }
        started = time.monotonic()
        answers = {name: future.result(WAIT_S) for name, future in late.items()}
        waited = time.monotonic() - started
        # All answered while the model is still held: at their deadlines, not when the batch ahead finishes.
        assert not holder.done()
        assert waited >= 0.25  # the setting's 300 ms, measured from a little after the requests were sent
        for name, answer in answers.items():
            assert answer.status_code == 503, (name, answer.text)
            assert answer.json()["error"] == "deadline_exceeded" and answer.headers["retry-after"] == "1", name
        gate.release.set()
        assert holder.result(WAIT_S).status_code == 200
        assert _generate(url, 5).status_code == 200  # the path serves on
        assert _metric(url, 'jmvae_deadline_exceeded_total{path="attributes"}') == 3
    assert 2 not in gate.seeds and 3 not in gate.seeds and 4 not in gate.seeds  # never run
    assert HOLD in gate.seeds and 5 in gate.seeds


def test_a_client_that_disconnects_leaves_the_queue_and_never_runs(tiny_checkpoint: Path, gate: Gate) -> None:
    with running_server(_settings(tiny_checkpoint, 60_000)) as url, ThreadPoolExecutor(2) as pool:
        holder = pool.submit(_generate, url, HOLD)
        assert gate.entered.wait(WAIT_S)
        with pytest.raises(httpx.ReadTimeout):
            _generate(url, 2, timeout=0.5)  # gives up and closes its connection, still queued behind HOLD
        deadline = time.monotonic() + WAIT_S
        while _metric(url, 'jmvae_queue_depth{path="attributes"}') != 0:  # withdrawn though the model is held
            assert time.monotonic() < deadline, "the disconnected request stayed queued"
            time.sleep(0.05)
        assert not holder.done()
        gate.release.set()
        assert holder.result(WAIT_S).status_code == 200
        assert _metric(url, 'jmvae_requests_total{endpoint="/generate",method="POST",status="499"}') == 1
    assert 2 not in gate.seeds


def _headers_without_body(url: str, seed: int, timeout_ms: int | None = None) -> socket.socket:
    """A POST /generate whose headers are sent and whose body is not (yet): in flight, its body still to read."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"n": 0, "seed": seed}).encode()
    extra = f"{HEADER}: {timeout_ms}\r\n" if timeout_ms else ""
    conn = socket.create_connection((host, int(port)), timeout=WAIT_S)
    conn.sendall(
        f"POST /generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n".encode()
    )
    return conn


def _answer(conn: socket.socket) -> tuple[int, dict[str, str], dict[str, str]]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536) or b"\r\n\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        body += conn.recv(65536)
    return int(status_line.split()[1]), headers, json.loads(body)


def test_a_request_beyond_the_admission_limit_is_refused_before_its_body_is_read(tiny_checkpoint: Path) -> None:
    """max_queue 1 and batches of 1 admit 1 + 2 x 1 = 3 /generate requests at once (service/admission.py). Three
    whose bodies have not arrived hold those places; a fourth is answered 503 overloaded at once, before its own
    body is sent, and the other paths and health stay open. Once the three have their bodies, each is served."""
    settings = Settings(checkpoint=tiny_checkpoint, max_queue=1, max_batch_size=1, warmup_batches=1)
    with running_server(settings) as url:
        waiting = [_headers_without_body(url, seed) for seed in (1, 2, 3)]
        time.sleep(0.3)  # the server has read their headers
        started = time.monotonic()
        fourth = _headers_without_body(url, 4)
        status, headers, body = _answer(fourth)
        assert time.monotonic() - started < 5.0  # not after the body timeout
        assert (status, body["error"], headers["retry-after"]) == (503, "overloaded", "1"), body
        assert "3 requests" in body["detail"]
        photo = image_bytes(np.zeros((64, 64, 3), np.uint8))
        assert httpx.post(f"{url}/attributes", files={"image": ("f.png", photo, "image/png")}).status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200
        for seed, conn in zip((1, 2, 3), waiting, strict=True):  # one by one: a queue of 1 holds each in turn
            conn.sendall(json.dumps({"n": 0, "seed": seed}).encode())
            assert _answer(conn)[0] == 200
        assert _generate(url, 5).status_code == 200  # their places are free again
        assert _metric(url, 'jmvae_queue_rejections_total{path="attributes"}') == 1
        assert _metric(url, 'jmvae_requests_total{endpoint="/generate",method="POST",status="503"}') == 1
        for conn in [fourth, *waiting]:
            conn.close()


def test_a_request_that_would_wait_past_its_deadline_is_refused_at_once_and_never_runs(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the path has had a queue for a whole rate window (its answers then measure what the model can do), a
    request whose deadline is shorter than the expected wait (in flight / rate, Little's law) gets its 503
    deadline_exceeded straight away rather than at its deadline; one with time enough is admitted and served."""
    original, seeds = Engine.generate_batch, []

    def slow(self: Engine, jobs: Sequence[GenerateJob]) -> list[Generated]:
        seeds.extend(job.seed for job in jobs)
        time.sleep(0.1)  # ten answers a second at most, batches of one: four clients keep a queue
        return original(self, jobs)

    monkeypatch.setattr(Engine, "generate_batch", slow)
    stop = threading.Event()

    def client(url: str) -> None:
        while not stop.is_set():
            assert _generate(url, 1).status_code == 200

    with running_server(_settings(tiny_checkpoint, 60_000)) as url, ThreadPoolExecutor(5) as pool:
        clients = [pool.submit(client, url) for _ in range(4)]
        time.sleep(3.0)  # past the 2 s window with four in flight throughout
        started = time.monotonic()
        refused = _generate(url, 4, {HEADER: "100"})
        assert time.monotonic() - started < 0.5  # not after its 100 ms in the queue and a batch or two
        patient = pool.submit(_generate, url, 5, {HEADER: "50000"})
        assert patient.result(WAIT_S).status_code == 200
        stop.set()
        for future in clients:
            future.result(WAIT_S)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
        assert refused.json()["error"] == "deadline_exceeded" and "requests ahead" in refused.json()["detail"]
        assert _metric(url, 'jmvae_deadline_exceeded_total{path="attributes"}') == 1
    assert 4 not in seeds and 5 in seeds


def test_a_burst_after_a_quiet_spell_is_admitted(tiny_checkpoint: Path) -> None:
    """The rate of a quiet spell is not the path's capacity: two answers in the last two seconds and then eight
    requests at once (a wait of 8 s at that rate, over the 1 s deadline) are all admitted and served."""
    with running_server(_settings(tiny_checkpoint, 1000)) as url, ThreadPoolExecutor(8) as pool:
        for seed in (1, 2):
            assert _generate(url, seed).status_code == 200
            time.sleep(0.5)
        burst = [pool.submit(_generate, url, seed) for seed in range(10, 18)]
        assert [f.result(WAIT_S).status_code for f in burst] == [200] * 8


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    with running_server(Settings(checkpoint=tiny_checkpoint, request_timeout_ms=5000, warmup_batches=1)) as url:
        yield url


@pytest.mark.parametrize(
    "value", ["abc", "", "-5", "0", "nan", "NaN", "inf", "1.5", "1e3", "0x10", "3600001", "9" * 40, "10 000"]
)
def test_bad_timeout_headers_are_422_naming_the_header(server: str, value: str) -> None:
    answer = _generate(server, 1, {HEADER: value})
    assert answer.status_code == 422, (value, answer.text)
    assert answer.json()["error"] == "invalid_request" and HEADER.lower() in answer.json()["detail"].lower()


def test_bad_timeout_headers_are_422_on_every_model_route(server: str) -> None:
    photo = image_bytes(np.zeros((64, 64, 3), np.uint8))
    for path, form in (("/attributes", {}), ("/edit", {"changes": '{"Smiling": 1}'})):
        answer = httpx.post(
            f"{server}{path}", files={"image": ("f.png", photo, "image/png")}, data=form, headers={HEADER: "-1"}
        )
        assert answer.status_code == 422 and HEADER.lower() in answer.json()["detail"].lower(), (path, answer.text)


@pytest.mark.parametrize("value", ["1000", "5000", "3600000"])
def test_good_timeout_headers_are_served(server: str, value: str) -> None:
    assert _generate(server, 1, {HEADER: value}).status_code == 200


def test_the_header_can_shorten_the_deadline_but_never_lengthen_it() -> None:
    assert deadline_for(100.0, None, 300.0) == pytest.approx(100.3)
    assert deadline_for(100.0, 50, 300.0) == pytest.approx(100.05)
    assert deadline_for(100.0, 100_000, 300.0) == pytest.approx(100.3)


def test_the_header_is_documented_on_every_model_route(server: str) -> None:
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    for path in ("/attributes", "/edit", "/generate"):
        (param,) = [p for p in paths[path]["post"].get("parameters", []) if p["name"] == HEADER]
        assert param["in"] == "header" and not param.get("required", False)
        assert "JMVAE_REQUEST_TIMEOUT_MS" in param["description"]
        assert param["schema"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 3_600_000}


MODEL_S = 0.1  # a forward pass of the slowed model: the model thread, not HTTP or the CPUs, is what saturates


@pytest.mark.slow
def test_at_four_times_the_sustainable_load_answers_stay_within_the_deadline_and_the_rest_get_503_fast(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/deadlines.py against a server whose model takes MODEL_S per batch of at most 2 (a busy device):
    the 200s come within the deadline plus a batch or two, every other answer is a 503 with Retry-After that
    comes at the deadline, not after a queue that grew for the whole run (which would take max_queue / rate)."""
    import asyncio

    from bench import deadlines

    original = Engine.generate_batch

    def slow(self: Engine, jobs: Sequence[GenerateJob]) -> list[Generated]:
        time.sleep(MODEL_S)  # releases the GIL, as a device would
        return original(self, jobs)

    monkeypatch.setattr(Engine, "generate_batch", slow)
    deadline_s = 0.5
    settings = Settings(
        checkpoint=tiny_checkpoint, request_timeout_ms=deadline_s * 1000, max_batch_size=2, warmup_batches=1
    )
    with running_server(settings) as url:
        report = asyncio.run(deadlines.run(url, factor=4, seconds=8, clients=8, probe_s=3, n=0))
        metrics = httpx.get(f"{url}/metrics").text
    print(deadlines.format_report(report))  # shown when an assertion fails
    http = {k: v for k, v in report["outcomes"].items() if k[0].isdigit()}
    assert set(http) <= {"200", "503 deadline_exceeded", "503 overloaded"}, report["outcomes"]
    assert report["bad_count"] == sum(report["outcomes"].values()) - sum(http.values()), report[
        "bad"
    ]  # every 503 has Retry-After
    assert report["bad_count"] <= 0.01 * report["sent"], report["bad"]  # connection errors of an overloaded client
    assert report["offered_per_s"] >= 2.5 * report["sustainable_per_s"], report  # it was overload
    assert report["shed"]["count"] > 0 and report["ok"]["count"] > 0
    # Server-side times (its histogram, from arrival to answer), which a load generator lagging on a busy machine
    # does not inflate: 99% of the 200s and of the 503s within 1 s, the deadline plus a batch (0.1 s) plus 0.4 s
    # of slack. Without deadlines the queue would grow to max_queue: ~13 s of waiting.
    for status in ("200", "503"):
        labels = f'method="POST",status="{status}"'  # prometheus_client sorts them, `le` among them
        within = _metric_text(metrics, f'jmvae_request_seconds_bucket{{endpoint="/generate",le="1.0",{labels}}}')
        total = _metric_text(metrics, f'jmvae_request_seconds_count{{endpoint="/generate",{labels}}}')
        assert total > 0 and within >= 0.99 * total, (status, within, total)


def _metric_text(text: str, line: str) -> float:
    match = re.search(rf"^{re.escape(line)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
