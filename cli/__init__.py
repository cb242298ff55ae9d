"""The `jmvae` command: one parser over the training commands (train, eval, info, export) and the service's
(serve). It sits above both packages, so that neither imports the other."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from jmvae.model.checkpoint import CheckpointError
from jmvae.service.cli import add_commands as add_service_commands
from jmvae.training.cli import add_commands as add_training_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jmvae", description="JMVAE-kl on faces and CelebA attributes")
    commands = parser.add_subparsers(dest="command", required=True)
    add_training_commands(commands)
    add_service_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError, CheckpointError, ValidationError) as e:
        message = " ".join(str(e).split())
        print(f"jmvae {args.command}: {message}", file=sys.stderr)
        return 1
