"""Throughput and latency of the HTTP service, printed as a table (and JSON with --json).

    python -m bench.throughput --image FACE.jpg [--checkpoint CKPT] [--seconds 10]

For each endpoint at 1 and 32 concurrent clients it starts `jmvae serve` in a subprocess on a loopback port,
drives it with an asyncio httpx load for a fixed time and reports requests/s, p50 and p99. /attributes at 32
clients is also run with JMVAE_MAX_BATCH_SIZE=1, and the same pipeline (decode, crop, model, JSON encode) is
timed in-process at the service's batch size, which bounds what HTTP can reach. The load generator shares the
machine with the server, as it would on a 2-core box; compare numbers from the same machine only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench.processes import serve_subprocess

ENDPOINTS = ("/attributes", "/generate", "/edit")


def request_kwargs(endpoint: str, image: bytes) -> dict[str, Any]:
    if endpoint == "/generate":
        return {"json": {"attributes": {"Smiling": 2, "Male": -1}, "n": 4, "seed": 1}}
    files = {"image": ("face.jpg", image, "image/jpeg")}
    if endpoint == "/edit":
        return {"files": files, "data": {"changes": '{"Smiling": 2}'}}
    return {"files": files}


async def drive(
    url: str,
    path: str,
    request: dict[str, Any],
    clients: int,
    seconds: float,
    server_cpu_s: Callable[[], float] | None = None,
) -> dict[str, float]:
    """`clients` concurrent clients, each posting `request` (httpx.post keyword arguments) to `path` as soon as
    its previous answer is in, for `seconds` after a warm-up: req/s, p50 and p99 of the 200s, other answers and
    failed connections, and the CPU time per answer of this load generator (and of the server, given its CPU
    seconds so far)."""
    import httpx

    latencies: list[float] = []
    errors = 0

    async def one_client(client: httpx.AsyncClient, stop_at: float, record: bool) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                ok = (await client.post(path, **request)).status_code == 200
            except httpx.TransportError:  # refused, reset or timed out: the server's failure, counted as one
                ok = False
            if record:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

    # A client (one keep-alive connection) each, as independent users have: one httpx pool shared by 32
    # connections cost this generator 5.2 CPU ms per request against 2.2 (measured on 2 cores), CPU that the
    # server being measured then lacks.
    async with AsyncExitStack() as stack:
        pool = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=60)) for _ in range(clients)]
        warm = time.perf_counter() + min(2.0, seconds / 5)
        await asyncio.gather(*(one_client(client, warm, False) for client in pool))
        started, cpu, server = time.perf_counter(), time.process_time(), server_cpu_s() if server_cpu_s else 0.0
        await asyncio.gather(*(one_client(client, started + seconds, True) for client in pool))
        elapsed, answers = time.perf_counter() - started, max(1, len(latencies) + errors)
        result = {"client_cpu_ms": (time.process_time() - cpu) / answers * 1000}
        if server_cpu_s:
            result["server_cpu_ms"] = (server_cpu_s() - server) / answers * 1000
    ms = np.array(latencies) * 1000
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
        "requests": len(latencies),
    } | result


def _in_process(checkpoint: Path | None, image: bytes, batch_size: int, seconds: float) -> dict[str, float]:
    """The pipeline without HTTP: images/s of decode → detect and crop → model → JSON at `batch_size`, and
    each stage's cost per image (which bounds what batching the model can gain end to end)."""
    import torch

    from jmvae.model.checkpoint import load_jmvae
    from jmvae.model.device import resolve_device
    from jmvae.model.faces import FaceCropper
    from jmvae.model.preprocess import normalise
    from jmvae.service.engine import DEFAULT_CHECKPOINT
    from jmvae.service.images import decode_upload

    device = resolve_device("auto")
    model, meta = load_jmvae(checkpoint or DEFAULT_CHECKPOINT, device)
    detector = FaceCropper(meta.preprocessing)

    def attributes(faces: list[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            x = normalise(torch.from_numpy(np.stack(faces)).to(device))
            z = model.infer(x=x, mode=meta.default_inference_mode).mean
            return torch.sigmoid(model.decode_attributes(z)).cpu().numpy()

    def per_image_ms(step: Any, items: int = 1, repeat: int = 20) -> float:
        step()
        started = time.perf_counter()
        for _ in range(repeat):
            step()
        return (time.perf_counter() - started) / repeat / items * 1000

    decoded = decode_upload(image, 40_000_000)
    face = detector.crop(decoded).pixels
    stages = {
        "decode_ms": per_image_ms(lambda: decode_upload(image, 40_000_000)),
        "detect_and_crop_ms": per_image_ms(lambda: detector.crop(decoded)),
        "model_batch_1_ms": per_image_ms(lambda: attributes([face])),
        f"model_batch_{batch_size}_ms": per_image_ms(lambda: attributes([face] * batch_size), batch_size, 5),
    }
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        faces = [detector.crop(decode_upload(image, 40_000_000)).pixels for _ in range(batch_size)]
        for row in attributes(faces):
            json.dumps({"probabilities": dict(zip(meta.attribute_names, map(float, row)))})
        done += batch_size
    return {"images_per_s": done / (time.perf_counter() - started)} | stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, required=True, help="a face photo (JPEG) to upload")
    parser.add_argument("--checkpoint", type=Path, help="default: the model shipped in the package")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per cell")
    parser.add_argument("--batch-size", type=int, default=32, help="JMVAE_MAX_BATCH_SIZE of the batched runs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    image = args.image.read_bytes()
    rows: list[dict[str, Any]] = []

    def run(env: dict[str, str], cells: list[tuple[str, int]], label: str) -> None:
        with serve_subprocess(args.checkpoint, env) as served:
            for endpoint, clients in cells:
                result = asyncio.run(
                    drive(served.url, endpoint, request_kwargs(endpoint, image), clients, args.seconds)
                )
                rows.append({"endpoint": endpoint, "clients": clients, "batching": label} | result)
                print(
                    f"{endpoint:12s} {clients:3d} clients {label:12s} {result['requests_per_s']:8.1f} req/s "
                    f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  errors {result['errors']}",
                    flush=True,
                )

    batched = {"JMVAE_MAX_BATCH_SIZE": str(args.batch_size), "JMVAE_MAX_QUEUE": "1024"}
    run(batched, [(e, c) for e in ENDPOINTS for c in (1, 32)], f"max {args.batch_size}")
    run({"JMVAE_MAX_BATCH_SIZE": "1", "JMVAE_MAX_QUEUE": "1024"}, [(e, 32) for e in ENDPOINTS], "off (max 1)")
    pipeline = _in_process(args.checkpoint, image, args.batch_size, args.seconds)
    in_process = pipeline["images_per_s"]
    print(
        f"in-process pipeline, batch {args.batch_size}: {in_process:.1f} images/s; per image: "
        + ", ".join(f"{k} {v:.2f}" for k, v in pipeline.items() if k.endswith("_ms")),
        flush=True,
    )

    def rate(endpoint: str, batching: str) -> float:
        return next(
            r["requests_per_s"]
            for r in rows
            if r["endpoint"] == endpoint and r["clients"] == 32 and r["batching"] == batching
        )

    speedups = {e: rate(e, f"max {args.batch_size}") / rate(e, "off (max 1)") for e in ENDPOINTS}
    batched_rate = rate("/attributes", f"max {args.batch_size}")
    summary = {
        "batching_speedup_32_clients": speedups,
        "in_process_images_s": in_process,
        "in_process_stages": {k: v for k, v in pipeline.items() if k.endswith("_ms")},
        "http_share_of_in_process": batched_rate / in_process,
    }
    print("\n| endpoint | clients | batching | req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['endpoint']} | {r['clients']} | {r['batching']} | {r['requests_per_s']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |"
        )
    print("\nbatching speed-up at 32 clients: " + ", ".join(f"{e} {x:.2f}x" for e, x in speedups.items()))
    print(
        f"/attributes over HTTP reaches {summary['http_share_of_in_process']:.0%} of the in-process pipeline "
        f"({in_process:.1f} images/s at batch {args.batch_size})"
    )
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
