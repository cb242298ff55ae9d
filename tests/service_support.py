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

from bench.processes import free_port
from jmvae.cli import main as jmvae_main
from jmvae.service.app import create_app
from jmvae.service.settings import Settings


def train_tiny_checkpoint(out: Path) -> Path:
    """A real checkpoint from the real trainer: 32×32 synthetic faces, a few seconds on CPU."""
    config = out / "tiny.toml"
    config.write_text(
        "batch_size = 50\nwarmup_epochs = 1\nval_k = 2\nval_n_w = 2\nval_max_examples = 50\nprogress = false\n"
        "[model]\nimage_size = 32\nlatent_dim = 8\nconv_channels = [8, 16, 16]\ndense_units = 32\n"
        "attribute_units = 16\n[preprocessing]\nimage_size = 32\n[synthetic]\nn_train = 200\nn_val = 50\nn_test = 0\n"
    )
    assert jmvae_main(["train", "--data", "synthetic", "--out", str(out / "run"), "--config", str(config),
                       "--epochs", "2"]) == 0
    return out / "run" / "final.safetensors"


@contextmanager
def running_server(settings: Settings, wait_ready: bool = True) -> Iterator[str]:
    """Serves create_app(settings) on 127.0.0.1; yields the base URL once it accepts connections."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
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
