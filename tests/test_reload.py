"""Which model answered (X-Model-Version) and swapping it without downtime: POST /admin/reload and SIGHUP load the
file at JMVAE_CHECKPOINT beside the served model and swap it in, with no request failing across the swap."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import shutil
import signal
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import image_bytes, running_server

from bench.processes import serve_subprocess
from jmvae.model.checkpoint import export_checkpoint, read_checkpoint
from jmvae.service.app import create_app
from jmvae.service.metrics import ServiceMetrics
from jmvae.service.models import ModelSlot, ReloadInProgress
from jmvae.service.settings import Settings

KEY = "reload-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FACE = image_bytes(np.full((64, 64, 3), 128, np.uint8))


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny checkpoint and another model: the same one exported as float16, whose weights (hence version)
    differ."""
    other = tmp_path_factory.mktemp("other") / "fp16.safetensors"
    export_checkpoint(tiny_checkpoint, other)
    return tiny_checkpoint, other


def _version(path: Path) -> str:
    return read_checkpoint(path).meta.tensors_sha256[:12]


def _served(tmp_path: Path, source: Path) -> Path:
    """The file at JMVAE_CHECKPOINT, which a deployment replaces before it asks for a reload."""
    path = tmp_path / "served.safetensors"
    shutil.copyfile(source, path)
    return path


def _replace(path: Path, source: Path) -> None:
    tmp = path.with_suffix(".tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, path)  # atomically, as a deployment should


def _settings(path: Path, **overrides: object) -> Settings:
    return Settings(checkpoint=path, api_key=KEY, device="cpu", max_batch_size=8, warmup_batches=1, **overrides)


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_every_response_names_the_model_and_get_model_shows_it(checkpoints: tuple[Path, Path]) -> None:
    old, _ = checkpoints
    with TestClient(create_app(_settings(old))) as client:
        _wait_ready(client)
        version = _version(old)
        assert re.fullmatch(r"[0-9a-f]{12}", version)
        answers = [
            client.get("/model", headers=AUTH),
            client.post("/generate", json={"n": 1}, headers=AUTH),
            client.post("/generate", json={"n": 99}, headers=AUTH),  # 422
            client.post("/generate", json={"n": 1}),  # 401, refused before routing
            client.get("/healthz"),
            client.get("/no-such-path", headers=AUTH),
        ]
        assert [r.status_code for r in answers] == [200, 200, 422, 401, 200, 404]
        assert {r.headers["X-Model-Version"] for r in answers} == {version}
        assert answers[0].json()["version"] == version


def test_without_an_api_key_there_is_no_reload_route(checkpoints: tuple[Path, Path]) -> None:
    app = create_app(Settings(checkpoint=checkpoints[0], device="cpu"))
    assert "/admin/reload" not in app.openapi()["paths"]
    with TestClient(app) as client:
        assert client.post("/admin/reload").status_code == 404
    with TestClient(create_app(_settings(checkpoints[0]))) as client:
        assert "/admin/reload" in client.get("/openapi.json", headers=AUTH).json()["paths"]
        assert client.post("/admin/reload").status_code == 401  # with a key, behind it


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one byte of the weights: the file still parses, its checksum no longer matches
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(_truncate, "not a readable safetensors file"), (_tamper, "do not match their checksum")],
    ids=["truncated", "tampered"],
)
def test_a_broken_file_is_refused_with_one_line_and_the_old_model_keeps_serving(
    checkpoints: tuple[Path, Path], tmp_path: Path, damage: Callable[[Path], None], reason: str
) -> None:
    old, _ = checkpoints
    path = _served(tmp_path, old)
    with TestClient(create_app(_settings(path))) as client:
        _wait_ready(client)
        damage(path)
        refused = client.post("/admin/reload", headers=AUTH)
        assert refused.status_code == 422
        body = refused.json()
        assert body["error"] == "checkpoint_refused" and set(body) == {"error", "detail"}
        assert reason in body["detail"] and "\n" not in body["detail"]
        answer = client.post("/generate", json={"n": 1}, headers=AUTH)
        assert answer.status_code == 200 and answer.headers["X-Model-Version"] == _version(old)


def test_the_old_engine_is_stopped_and_freed_after_a_swap(checkpoints: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = checkpoints
    path = _served(tmp_path, old)
    with TestClient(create_app(_settings(path))) as client:
        _wait_ready(client)
        slot: ModelSlot = client.app_state["slot"]
        engine = weakref.ref(slot.core.engine)
        threads = weakref.WeakSet(engine()._executor._threads)  # type: ignore[union-attr]
        assert client.post("/generate", json={"n": 1}, headers=AUTH).status_code == 200  # the model thread runs
        _replace(path, new)
        swapped = client.post("/admin/reload", headers=AUTH)
        assert swapped.status_code == 200, swapped.text
        assert swapped.json() | {"checkpoint": None} == {
            "version": _version(new),
            "previous": _version(old),
            "checkpoint": None,
        }
        assert not any(t.is_alive() for t in threads)  # stopped before the reload answered
        gc.collect()
        assert engine() is None  # one model's worth of memory again: nothing holds the old one
        assert slot.core.engine.ready
        assert client.get("/model", headers=AUTH).json()["version"] == _version(new)


def test_the_warm_heap_is_frozen_and_refrozen_after_a_reload(checkpoints: tuple[Path, Path], tmp_path: Path) -> None:
    """Once warm, the objects alive are out of the cyclic collector's reach (its full passes over them were the
    long tail of the attributes → face path), and again after a reload, which unfreezes first so that the retired
    model is freed (the test above)."""
    old, new = checkpoints
    path = _served(tmp_path, old)
    gc.unfreeze()
    with TestClient(create_app(_settings(path))) as client:
        _wait_ready(client)
        assert gc.get_freeze_count() > 10_000
        gc.unfreeze()
        _replace(path, new)
        assert client.post("/admin/reload", headers=AUTH).status_code == 200
        assert gc.get_freeze_count() > 10_000


def test_only_one_reload_runs_at_a_time(checkpoints: tuple[Path, Path]) -> None:
    async def race() -> None:
        slot = await ModelSlot.open(_settings(checkpoints[0]), ServiceMetrics())
        try:
            first = asyncio.create_task(slot.reload())
            await asyncio.sleep(0)  # the first has the lock
            with pytest.raises(ReloadInProgress):
                await slot.reload()
            await first
        finally:
            await slot.close()

    asyncio.run(race())


class _Load:
    """Clients hitting /generate and /attributes without pause; records every status and X-Model-Version."""

    def __init__(self, url: str, clients: int = 4, headers: dict[str, str] | None = None) -> None:
        self.url, self.headers = url, headers or {}
        self.answers: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(clients)
        self._runs = [self._pool.submit(self._run, i) for i in range(clients)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            while not self._stop.is_set():
                if i % 2:
                    r = client.post("/attributes", files={"image": ("f.png", FACE, "image/png")})
                else:
                    r = client.post("/generate", json={"n": 2, "seed": i})
                self.answers.append((r.status_code, r.headers.get("X-Model-Version")))

    def stop(self) -> list[tuple[int, str | None]]:
        self._stop.set()
        for run in self._runs:
            run.result()  # a transport error fails the test here
        self._pool.shutdown()
        return self.answers


def _switched(answers: list[tuple[int, str | None]], old: str, new: str) -> None:
    """Every answer a 200, the old model's first, then the new one's."""
    assert answers and {status for status, _ in answers} == {200}, sorted({s for s, _ in answers})
    versions = [version for _, version in answers]
    assert set(versions) == {old, new}
    assert versions[-20:] == [new] * 20  # completion order varies at the swap; afterwards only the new one answers


@pytest.mark.slow  # about 10 s of continuous load around the swap
def test_a_reload_under_load_fails_no_request_and_switches_the_version(
    checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    old, new = checkpoints
    path = _served(tmp_path, old)
    with running_server(_settings(path)) as url:
        load = _Load(url, headers=AUTH)
        time.sleep(2)
        _replace(path, new)
        with ThreadPoolExecutor(2) as pool:  # two at once: one swaps, the other is told one is running
            reloads = list(pool.map(lambda _: httpx.post(f"{url}/admin/reload", headers=AUTH, timeout=60), range(2)))
        assert sorted(r.status_code for r in reloads) == [200, 409], [r.text for r in reloads]
        assert next(r for r in reloads if r.status_code == 409).json()["error"] == "reload_in_progress"
        time.sleep(2)
        answers = load.stop()
    _switched(answers, _version(old), _version(new))


@pytest.mark.slow  # `jmvae serve` subprocesses
@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_every_worker_without_a_failed_request(
    checkpoints: tuple[Path, Path], tmp_path: Path, workers: int
) -> None:
    old, new = checkpoints
    path = _served(tmp_path, old)
    env = {"JMVAE_DEVICE": "cpu", "JMVAE_WARMUP_BATCHES": "1", "JMVAE_MAX_BATCH_SIZE": "8", "OMP_NUM_THREADS": "1"}
    with serve_subprocess(path, env, workers=workers) as served:
        load = _Load(served.url)
        time.sleep(1)
        _replace(path, new)
        served.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while load.answers[-40:].count((200, _version(new))) < 40:  # both workers, if two, have swapped
            assert time.monotonic() < deadline, load.answers[-5:]
            time.sleep(0.2)
        answers = load.stop()
        assert served.process.poll() is None
    _switched(answers, _version(old), _version(new))
