"""`jmvae serve`: validate the checkpoint, then run the app under uvicorn."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import ValidationError

from jmvae.model.checkpoint import CheckpointError, load_jmvae

from .engine import DEFAULT_CHECKPOINT
from .logs import log_config
from .settings import Settings


def serve(checkpoint: Path | None, host: str, port: int, workers: int) -> int:
    import uvicorn

    try:
        settings = Settings()
    except ValidationError as e:
        first = e.errors()[0]
        print(f"jmvae serve: JMVAE_{str(first['loc'][0]).upper()}: {first['msg']}", file=sys.stderr)
        return 2
    path = checkpoint or settings.checkpoint or DEFAULT_CHECKPOINT
    try:
        load_jmvae(path)  # fail here, once, with one line, not in every worker
    except CheckpointError as e:
        print(f"jmvae serve: {e}", file=sys.stderr)
        return 1
    # Workers are separate processes that build their app from the environment.
    os.environ["JMVAE_CHECKPOINT"] = str(path.resolve())
    uvicorn.run("jmvae.service.app:create_app", factory=True, host=host, port=port, workers=workers,
                timeout_graceful_shutdown=30, log_config=log_config(settings.log_level, settings.log_format))
    return 0
