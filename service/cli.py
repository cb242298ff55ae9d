"""`jmvae serve`: validate the checkpoint, then run the app under uvicorn."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from jmvae.model.checkpoint import CheckpointError, load_jmvae

from .engine import DEFAULT_CHECKPOINT


def serve(checkpoint: Path | None, host: str, port: int, workers: int) -> int:
    import uvicorn

    path = checkpoint or Path(os.environ.get("JMVAE_CHECKPOINT") or DEFAULT_CHECKPOINT)
    try:
        load_jmvae(path)  # fail here, once, with one line, not in every worker
    except CheckpointError as e:
        print(f"jmvae serve: {e}", file=sys.stderr)
        return 1
    # Workers are separate processes that build their app from the environment.
    os.environ["JMVAE_CHECKPOINT"] = str(path.resolve())
    uvicorn.run("jmvae.service.app:create_app", factory=True, host=host, port=port, workers=workers,
                timeout_graceful_shutdown=30)
    return 0
