"""`jmvae serve` (jmvae.cli): validate the checkpoint, then run the app under uvicorn."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError
from uvicorn.supervisors import Multiprocess

from jmvae.model.checkpoint import CheckpointError, load_jmvae

from .connections import protocol
from .engine import DEFAULT_CHECKPOINT
from .logs import log_config
from .settings import Settings

APP = "jmvae.service.app:create_app"
GRACE_S = 30  # seconds in-flight requests get after SIGTERM; deployments allow more before SIGKILL
# Longer than clients keep idle connections open (httpx 5 s, nginx upstream 60 s), so that they close them, not
# the server: at uvicorn's 5 s default, a request sent just as the server closes its end is reset unanswered.
KEEP_ALIVE_S = 75
# The supervisor kills a worker that does not answer its ping within this. At uvicorn's 5 s, workers still
# importing torch on a busy machine were killed and respawned in a loop (5 in a minute at load 10 on 2 cores).
WORKER_HEALTHCHECK_S = 30


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """serve, onto the `jmvae` command's sub-parsers."""
    parser = commands.add_parser("serve", help="serve a checkpoint over HTTP (default: the model shipped inside)")
    parser.add_argument("--checkpoint", type=Path, help="default: $JMVAE_CHECKPOINT, else the packaged model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.set_defaults(func=lambda args: serve(args.checkpoint, args.host, args.port, args.workers))


def serve(checkpoint: Path | None, host: str, port: int, workers: int) -> int:
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
    # Absolute, not resolved: a reload (SIGHUP) must read the path again, through any symlink a deployment swaps.
    os.environ["JMVAE_CHECKPOINT"] = str(path.absolute())
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "timeout_graceful_shutdown": GRACE_S,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "http": protocol(settings.http_parser),
        "limit_concurrency": settings.max_connections,
        "loop": settings.event_loop,
        "log_config": log_config(settings.log_level, settings.log_format),
    }
    if workers == 1:
        uvicorn.run(APP, **options)
    else:
        config = uvicorn.Config(APP, workers=workers, timeout_worker_healthcheck=WORKER_HEALTHCHECK_S, **options)
        _Supervisor(config, sockets=[config.bind_socket()]).run()
    return 0


class _Supervisor(Multiprocess):
    """uvicorn's worker supervisor, except that the parent lets go of the listening socket once it has told the
    workers to stop: with uvicorn's own, the parent keeps it open until the last worker has drained, so new
    connections queue unanswered for up to the grace period and are then reset, instead of being refused; and
    that SIGHUP reloads the model in every worker rather than restarting them."""

    def terminate_all(self) -> None:
        super().terminate_all()
        for sock in self.sockets:
            sock.close()

    def handle_hup(self) -> None:
        # uvicorn's own replaces every worker with a fresh process, which then answers 503 while it warms up (its
        # readiness is the lifespan's start, before the warm-up). Each worker reloads in place instead, warm
        # before the swap (service/app.py).
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGHUP)
