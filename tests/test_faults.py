"""Faults: SIGTERM under load, a missing, truncated or tampered checkpoint, the model raising on one request.
(Training killed mid-epoch is in test_training.py, beside the uninterrupted run it must reproduce.)"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from safetensors import safe_open
from safetensors.torch import save_file
from service_support import free_port, running_server

from bench.processes import Served, serve_subprocess
from jmvae.service.cli import GRACE_S
from jmvae.service.engine import Engine, Generated, GenerateJob
from jmvae.service.settings import Settings

BATCH_WAIT_S = 6.0


async def _generate(client: httpx.AsyncClient, seed: int) -> str:
    """'200' (with the whole body), another status, 'refused' (no answer at all) or 'truncated'."""
    response = None
    try:
        async with client.stream("POST", "/generate", json={"n": 2, "seed": seed}) as response:
            await response.aread()
    except httpx.TransportError:
        return "truncated" if response is not None else "refused"
    if response.status_code == 200:
        assert len(response.json()["faces"]) == 2
    return str(response.status_code)


async def _around_sigterm(served: Served) -> tuple[list[str], list[str], float]:
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
        in_flight = [asyncio.create_task(_generate(client, seed)) for seed in range(16)]
        await asyncio.sleep(BATCH_WAIT_S / 3)
        # The first batch waits BATCH_WAIT_S for company, so none of these can have been answered yet.
        assert not any(task.done() for task in in_flight)
        signalled = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(BATCH_WAIT_S / 3)  # time to stop listening; the batch has not run yet
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as fresh:
            after = await asyncio.gather(*(_generate(fresh, seed) for seed in range(8)))
        # Refused while the server still drains, not left waiting until it has gone.
        assert not any(task.done() for task in in_flight)
        before = await asyncio.gather(*in_flight)
    return list(before), list(after), signalled


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits(tiny_checkpoint: Path, workers: int) -> None:
    env = {
        "JMVAE_MAX_BATCH_SIZE": "64",
        "JMVAE_MAX_BATCH_WAIT_MS": str(BATCH_WAIT_S * 1000),
        "JMVAE_LOG_LEVEL": "warning",
    }
    with serve_subprocess(tiny_checkpoint, env, workers) as served:
        before, after, signalled = asyncio.run(_around_sigterm(served))
        returncode = served.process.wait(timeout=GRACE_S + 30)
        exited_after_s = time.monotonic() - signalled
    assert before == ["200"] * 16
    assert set(after) <= {"refused", "503"}, after  # never a 500, never half a body
    assert exited_after_s < GRACE_S
    # The uvicorn parent of several workers returns 0; a single uvicorn process re-raises the SIGTERM it
    # handled once it has shut down, so it ends by that signal (exit status 143 in a shell).
    assert returncode == (0 if workers > 1 else -signal.SIGTERM)


def _tamper(source: Path, target: Path) -> None:
    """The same file with one weight changed and the metadata, checksum included, left as it was."""
    with safe_open(source, "pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    name = next(n for n, t in tensors.items() if t.is_floating_point())
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, target, metadata=metadata)


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("missing", "no such checkpoint file"),
        ("truncated", "not a readable safetensors file"),
        ("tampered", "weights do not match their checksum"),
    ],
)
def test_serve_refuses_a_bad_checkpoint_before_starting_workers(
    tmp_path: Path, tiny_checkpoint: Path, damage: str, reason: str
) -> None:
    path = tmp_path / "model.safetensors"
    if damage == "truncated":
        path.write_bytes(tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 2])
    elif damage == "tampered":
        _tamper(tiny_checkpoint, path)
    # As a container starts it: the checkpoint from the environment, several workers.
    result = subprocess.run(
        [sys.executable, "-m", "jmvae.cli", "serve", "--port", str(free_port()), "--workers", "2"],
        env=os.environ | {"JMVAE_CHECKPOINT": str(path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and reason in result.stderr and str(path) in result.stderr, result.stderr


POISON_SEED = 666


def test_a_request_that_makes_the_model_raise_fails_alone(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[int] = []  # size of each forward pass that held the poisoned request
    generate = Engine.generate_batch

    def poisoned(self: Engine, jobs: list[GenerateJob]) -> list[Generated]:
        if any(job.seed == POISON_SEED for job in jobs):
            attempts.append(len(jobs))
            raise RuntimeError("the model cannot take this input")
        return generate(self, jobs)

    monkeypatch.setattr(Engine, "generate_batch", poisoned)
    # A batch waits up to 2 s for 16 items: the 16 requests below share one forward pass.
    settings = Settings(checkpoint=tiny_checkpoint, max_batch_size=16, max_batch_wait_ms=2000)
    seeds = [*range(7), POISON_SEED, *range(7, 15)]

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/generate", json={"n": 1, "seed": s}) for s in seeds))

    with running_server(settings) as url:
        responses = asyncio.run(burst(url))
        afterwards = httpx.post(f"{url}/generate", json={"n": 1, "seed": 1}, timeout=60)
    assert attempts[0] > 1 and attempts[-1] == 1  # in a shared batch first, then retried alone
    for seed, response in zip(seeds, responses, strict=True):
        if seed == POISON_SEED:
            assert response.status_code == 500
            assert response.json()["error"] == "internal_error"
        else:
            assert response.status_code == 200, response.text
            assert len(response.json()["faces"]) == 1
    assert afterwards.status_code == 200
