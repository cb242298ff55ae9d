"""Bounded load test of a running `jmvae serve`: many clients over every endpoint, errors, latency and memory.

    python bench/loadtest.py --url http://127.0.0.1:8000 --clients 32 --seconds 300 --image FACE.jpg \
        --pid SERVER_PID [--overload] [--json]

Each client sends one request after another, cycling through /attributes, /edit, /generate (JSON and PNG),
/model, /healthz, /readyz and /metrics from its own starting point, so every endpoint gets an equal share.
Any answer other than 2xx, and any connection error, is an error; with --overload (a run meant to offer more
than the server can queue) a 503 that carries Retry-After is counted as shed load instead. The first
--warmup seconds count towards errors but not towards latency, throughput or memory. With --pid (the
`jmvae serve` parent), the resident memory of that process and all its descendants (the uvicorn workers) is
sampled from /proc, and its trend reported: first, last, max, the least-squares slope and the growth from the
first to the last third of the run. Exit status 1 when any request errored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.throughput import request_kwargs


@dataclass(frozen=True)
class Kind:
    name: str
    method: str
    path: str
    options: dict[str, Any]


def request_mix(image: bytes) -> list[Kind]:
    """Every endpoint; /edit and /generate both as JSON and as PNG."""
    png = {"headers": {"Accept": "image/png"}}
    posts = [("/attributes", {}), ("/edit", {}), ("/edit", png), ("/generate", {}), ("/generate", png)]
    kinds = [
        Kind(f"POST {path}{' (png)' if extra else ''}", "POST", path, request_kwargs(path, image) | extra)
        for path, extra in posts
    ]
    return kinds + [Kind(f"GET {path}", "GET", path, {}) for path in ("/model", "/healthz", "/readyz", "/metrics")]


@dataclass
class Tally:
    requests: int = 0
    ok: int = 0
    shed: int = 0
    errors: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # status code, or the connection error's name
    measured: int = 0  # ok answers after the warm-up
    latencies_ms: list[float] = field(default_factory=list)  # of those

    def add(self, other: Tally) -> None:
        for name in ("requests", "ok", "shed", "errors", "measured"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.outcomes.update(other.outcomes)
        self.latencies_ms.extend(other.latencies_ms)

    def summary(self, seconds: float) -> dict[str, Any]:
        ms = np.array(self.latencies_ms)
        return {
            "requests": self.requests,
            "ok": self.ok,
            "shed": self.shed,
            "errors": self.errors,
            "outcomes": dict(sorted(self.outcomes.items())),
            "requests_per_s": self.measured / seconds,
            "p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
            "p99_ms": float(np.percentile(ms, 99)) if ms.size else None,
        }


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, in MB (workers are children of the uvicorn parent)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # after "(comm)", which may hold spaces
            except (OSError, IndexError, ValueError):
                continue  # exited while we looked
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
        todo.extend(children.get(current, []))
    return total / 2**20


def memory_trend(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """samples: (seconds since the warm-up ended, MB). Growth compares medians, robust to single spikes."""
    t, mb = np.array(samples).T
    third = max(1, len(mb) // 3)
    slope = float(np.polyfit(t / 60, mb, 1)[0]) if len(mb) > 1 and np.ptp(t) > 0 else 0.0
    return {
        "samples": len(mb),
        "first_mb": float(mb[0]),
        "last_mb": float(mb[-1]),
        "max_mb": float(mb.max()),
        "slope_mb_per_min": slope,
        "growth_mb": float(np.median(mb[-third:]) - np.median(mb[:third])),
        "series": [[round(float(s), 1), round(float(m), 1)] for s, m in samples],
    }


async def run_load(
    url: str,
    image: bytes,
    clients: int,
    seconds: float,
    *,
    warmup_s: float = 0.0,
    pid: int | None = None,
    sample_every_s: float = 5.0,
    overload: bool = False,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Drives `url` for warmup_s + seconds with `clients` concurrent clients; returns the report as a dict."""
    kinds = request_mix(image)
    tallies = {kind.name: Tally() for kind in kinds}
    errors: list[str] = []  # the first few, to say what went wrong
    started = time.perf_counter()
    measure_from, stop_at = started + warmup_s, started + warmup_s + seconds

    async def client_loop(client: httpx.AsyncClient, offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            kind = kinds[i % len(kinds)]
            i += 1
            tally = tallies[kind.name]
            tally.requests += 1
            sent = time.perf_counter()
            try:
                response = await client.request(kind.method, kind.path, **kind.options)
            except httpx.TransportError as e:
                outcome, verdict = type(e).__name__, f"{kind.name}: {type(e).__name__} {e}"
            else:
                outcome = str(response.status_code)
                if response.is_success:
                    verdict = "ok"
                elif overload and response.status_code == 503 and "retry-after" in response.headers:
                    verdict = "shed"
                else:
                    verdict = f"{kind.name}: {response.status_code} {response.text[:200]}"
            tally.outcomes[outcome] += 1
            if verdict == "ok":
                tally.ok += 1
                if sent >= measure_from:
                    tally.measured += 1
                    tally.latencies_ms.append((time.perf_counter() - sent) * 1000)
            elif verdict == "shed":
                tally.shed += 1
            else:
                tally.errors += 1
                if len(errors) < 10:
                    errors.append(verdict)

    samples: list[tuple[float, float]] = []

    async def sample_memory(pid: int) -> None:
        await asyncio.sleep(warmup_s)
        while True:
            samples.append((time.perf_counter() - measure_from, tree_rss_mb(pid)))
            await asyncio.sleep(sample_every_s)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        sampler = asyncio.create_task(sample_memory(pid)) if pid is not None else None
        await asyncio.gather(*(client_loop(client, offset) for offset in range(clients)))
        if sampler is not None:
            sampler.cancel()
    measured_s = time.perf_counter() - measure_from
    total = Tally()
    for tally in tallies.values():
        total.add(tally)
    return {
        "url": url,
        "clients": clients,
        "seconds": measured_s,
        "warmup_s": warmup_s,
        "overload": overload,
        "total": total.summary(measured_s),
        "endpoints": {name: tally.summary(measured_s) for name, tally in tallies.items()},
        "first_errors": errors,
        "memory": memory_trend(samples) if samples else None,
    }


def format_report(report: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        f"{report['clients']} clients, {report['seconds']:.0f} s measured after {report['warmup_s']:.0f} s "
        f"warm-up{', overload run' if report['overload'] else ''}: {report['url']}",
        "",
        f"{'endpoint':22s} {'requests':>8s} {'errors':>6s} {'shed':>6s} {'req/s':>8s} {'p50 ms':>8s} "
        f"{'p99 ms':>8s}  outcomes",
    ]
    for name, row in [*report["endpoints"].items(), ("total", report["total"])]:
        outcomes = " ".join(f"{k}×{v}" for k, v in row["outcomes"].items())
        lines.append(
            f"{name:22s} {row['requests']:8d} {row['errors']:6d} {row['shed']:6d} "
            f"{row['requests_per_s']:8.1f} {ms(row['p50_ms']):>8s} {ms(row['p99_ms']):>8s}  {outcomes}"
        )
    memory = report["memory"]
    if memory is not None:
        lines += [
            "",
            f"server RSS (all processes, {memory['samples']} samples): first {memory['first_mb']:.1f} MB, "
            f"last {memory['last_mb']:.1f} MB, max {memory['max_mb']:.1f} MB, slope "
            f"{memory['slope_mb_per_min']:+.2f} MB/min, last third − first third {memory['growth_mb']:+.1f} MB",
        ]
    lines += [f"error: {e}" for e in report["first_errors"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="base URL of the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--image", type=Path, required=True, help="a face photo (JPEG) for /attributes and /edit")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=300.0, help="measured time, after the warm-up")
    parser.add_argument(
        "--warmup", type=float, help="seconds before measuring (default: a tenth of --seconds, at most 30)"
    )
    parser.add_argument("--pid", type=int, help="the server's (parent) process id, to sample its memory")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument(
        "--overload",
        action="store_true",
        help="the load is meant to exceed capacity: 503 with Retry-After is shed load, not an error",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    parser.add_argument("--json", action="store_true", help="print the report as JSON too")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(30.0, args.seconds / 10)
    report = asyncio.run(
        run_load(
            args.url,
            args.image.read_bytes(),
            args.clients,
            args.seconds,
            warmup_s=warmup,
            pid=args.pid,
            sample_every_s=args.sample_every,
            overload=args.overload,
            timeout_s=args.timeout,
        )
    )
    print(format_report(report), flush=True)
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if report["total"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
