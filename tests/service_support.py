"""A real uvicorn server on a loopback port, in a background thread, for HTTP tests."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image
from tiny_configs import write_tiny_run

from bench.processes import free_port
from jmvae.cli import main as jmvae_main
from jmvae.service.app import create_app
from jmvae.service.settings import Settings


def train_tiny_checkpoint(out: Path) -> Path:
    """A real checkpoint from the real trainer: 32×32 synthetic faces, a few seconds on CPU."""
    config = write_tiny_run(out / "tiny.toml")
    assert (
        jmvae_main(
            ["train", "--data", "synthetic", "--out", str(out / "run"), "--config", str(config), "--epochs", "2"]
        )
        == 0
    )
    return out / "run" / "final.safetensors"


@contextmanager
def running_server(settings: Settings, wait_ready: bool = True, tracer_provider: object = None) -> Iterator[str]:
    """Serves create_app(settings, tracer_provider) on 127.0.0.1; yields the base URL once it accepts connections."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, tracer_provider), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server failed to start")
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    if wait_ready:
        import httpx

        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "server did not get ready"
            time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def image_bytes(array: np.ndarray, format: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **save)
    return buffer.getvalue()
