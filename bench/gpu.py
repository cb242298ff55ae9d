"""The serving half of bench/gpu.sh, and the one result file it writes from all of its steps.

    python -m bench.gpu serve --out SERVING.json [--seconds 4] [--small]
    python -m bench.gpu collect --tests LOG --train EAGER.json COMPILED.json --serving SERVING.json --out RESULT.json

`serve` measures, per variant (the service on CUDA in fp32 and in bf16 where there is a GPU, and on the CPU),
the in-process ceiling of both paths at batch 1, 8 and 32 (bench/serving.py's, the per-request work without HTTP)
and `jmvae serve` (the shipped model) over HTTP at 1 and 32 closed-loop clients per path (bench/throughput.py's
load generator, bench/serving.py's requests: a face photo to /attributes, /generate with n = 0).
`collect` writes bench/results/gpu-<kind>.json's keys from the steps' own outputs, with the issue's targets
checked.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.peers.common import Pipeline
from bench.processes import serve_subprocess
from bench.serving import _ceiling, _requests
from bench.throughput import drive
from jmvae.service.settings import Settings
from jmvae.training.synthetic import render_faces, sample_attributes

CLIENTS = (1, 32)
PATHS = ("attributes", "generate")


def kind() -> str:
    """The device's kind as the device tool names it (nvidia-h200), or cpu."""
    if not torch.cuda.is_available():
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")


def face_photo() -> bytes:
    """A synthetic face (training/synthetic.py) in a 178×218 JPEG, the size of a CelebA image: no data travels."""
    rng = np.random.default_rng(0)
    canvas = np.full((218, 178, 3), 200, np.uint8)
    canvas[20:198] = render_faces(sample_attributes(1, rng), rng, image_size=178)[0]
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def variants() -> dict[str, dict[str, str]]:
    cpu = {"cpu": {"JMVAE_DEVICE": "cpu", "JMVAE_PRECISION": "fp32"}}
    if not torch.cuda.is_available():
        return cpu
    cuda = {f"cuda-{p}": {"JMVAE_DEVICE": "cuda", "JMVAE_PRECISION": p} for p in ("fp32", "bf16")}
    return cuda | cpu


def serve(seconds: float, ceiling_seconds: float) -> dict[str, Any]:
    image = face_photo()
    requests = _requests(image)
    result: dict[str, Any] = {"ceiling": {}, "http": {}}
    for name, env in variants().items():
        print(f"[gpu] serving {name}: ceiling", flush=True)
        settings = Settings(device=env["JMVAE_DEVICE"], precision=env["JMVAE_PRECISION"])  # type: ignore[arg-type]
        pipeline = Pipeline(settings)
        result["ceiling"][name] = _ceiling(pipeline, image, ceiling_seconds)
        del pipeline
        result["http"][name] = {}
        with serve_subprocess(None, env | {"JMVAE_MAX_QUEUE": "1024", "OMP_WAIT_POLICY": "passive"}) as served:
            for path in PATHS:
                result["http"][name][path] = {}
                for clients in CLIENTS:
                    route = f"/{path}"
                    cell = asyncio.run(drive(served.url, route, requests[path], clients, seconds))
                    result["http"][name][path][str(clients)] = cell
                    print(
                        f"[gpu] {name} {path} {clients} clients: {cell['requests_per_s']:.1f} req/s, "
                        f"p50 {cell['p50_ms']:.2f} ms, p99 {cell['p99_ms']:.2f} ms, errors {cell['errors']}",
                        flush=True,
                    )
    return result


def _train_rows(paths: list[Path]) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, Any]]:
    """Ours per mode and batch, MultiVae per batch, and the rest of what the training runs measured."""
    ours: dict[str, dict[str, float]] = {}
    multivae: dict[str, float] = {}
    extra: dict[str, Any] = {"gpu_utilisation_percent": {}, "profile": {}, "machine": None, "commands": []}
    for path in paths:
        run = json.loads(path.read_text())
        mode = "compiled" if run["settings"]["compile"] else "eager"
        extra["machine"] = run["machine"]
        extra["commands"].append(run["command"])
        extra["data"] = run["data"]
        if "profile" in run:
            extra["profile"][mode] = run["profile"]
        for row in run["speed"]:
            batch = str(row["batch_size"])
            label = f"ours {mode} {batch}" if row["trainer"] == "ours" else f"multivae {batch}"
            extra["gpu_utilisation_percent"][label] = row["gpu_utilisation_percent"]
            if row["trainer"] == "ours":
                ours.setdefault(mode, {})[batch] = row["images_per_s"]
            else:
                multivae[batch] = row["images_per_s"]
    return ours, multivae, extra


def targets(ours: dict[str, float], multivae: dict[str, float], http: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, as far as this run measured them (None where a side was not run)."""
    best = max(ours.values(), default=None)
    cuda = "cpu" in http and (http.get("cuda-fp32") or http.get("cuda-bf16"))
    ratio = ours["100"] / multivae["100"] if "100" in ours and "100" in multivae else None
    generate_32 = {name: cells["generate"]["32"]["requests_per_s"] for name, cells in http.items()}
    serving_ratio = max(v for k, v in generate_32.items() if k != "cpu") / generate_32["cpu"] if cuda else None
    p99_1 = min(cells["generate"]["1"]["p99_ms"] for k, cells in http.items() if k != "cpu") if cuda else None
    return {
        "ours_best_images_per_s": best,
        "ours_best_at_least_20000": None if best is None else best >= 20_000,
        "ours_over_multivae_at_batch_100": ratio,
        "ours_at_least_5x_multivae_at_batch_100": None if ratio is None else ratio >= 5,
        "generate_32_clients_cuda_over_cpu": serving_ratio,
        "generate_at_least_3x_cpu": None if serving_ratio is None else serving_ratio >= 3,
        "generate_1_client_p99_ms": p99_1,
        "generate_p99_under_10_ms": None if p99_1 is None else p99_1 < 10,
    }


def collect(tests: Path, train: list[Path], serving: Path) -> dict[str, Any]:
    ours_by_mode, multivae, extra = _train_rows(train)
    ours = {
        batch: max(modes[batch] for modes in ours_by_mode.values() if batch in modes)
        for batch in sorted({b for modes in ours_by_mode.values() for b in modes}, key=int)
    }
    # A step that ran out of time left no file: its keys stay empty.
    measured = json.loads(serving.read_text()) if serving.is_file() else {"ceiling": {}, "http": {}}
    summary = [line for line in tests.read_text().splitlines() if re.search(r"\d+ (passed|failed|skipped)", line)]
    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "kind": kind(),
        "torch": torch.__version__,
        "cuda_tests": summary[-1] if summary else "no pytest summary line",
        "train_ours_images_per_s": ours,
        "train_ours_images_per_s_by_mode": ours_by_mode,
        "train_multivae_images_per_s": multivae,
        "serving": {
            name: {
                path: {
                    c: {k: cell[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "errors")}
                    for c, cell in cells.items()
                }
                for path, cells in paths.items()
            }
            for name, paths in measured["http"].items()
        },
        "serving_ceiling": measured["ceiling"],
        "targets": targets(ours, multivae, measured["http"]),
    } | extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    measure = commands.add_parser("serve")
    measure.add_argument("--out", type=Path, required=True)
    measure.add_argument("--seconds", type=float, default=4.0, help="measured time per HTTP cell")
    measure.add_argument("--ceiling-seconds", type=float, default=1.5, help="per batch size and path")
    merge = commands.add_parser("collect")
    merge.add_argument("--tests", type=Path, required=True, help="the cuda tests' pytest output")
    merge.add_argument("--train", type=Path, nargs="*", default=[], help="bench/train_speed.py --json files")
    merge.add_argument("--serving", type=Path, required=True)
    merge.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "serve":
        args.out.write_text(json.dumps(serve(args.seconds, args.ceiling_seconds), indent=2) + "\n")
    else:
        result = collect(args.tests, args.train, args.serving) | {"command": os.environ.get("GPU_SH_COMMAND", "")}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: result[k] for k in ("device", "train_ours_images_per_s", "targets")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
