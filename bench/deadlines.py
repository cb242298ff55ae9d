"""Deadlines under overload: how a running `jmvae serve` answers an open-loop load several times what it sustains.

    python -m bench.deadlines --url http://127.0.0.1:8000 --factor 4 --seconds 20 [--deadline-ms 300] [--json]

First a closed loop (--clients clients, one request after another, --probe seconds) measures the sustainable
rate of POST /generate (n=4 by default, as bench/throughput.py sends it); then requests are sent at --factor times that
rate, each at its scheduled time whatever the answers (open loop: overload stays overload), for --seconds. It
prints the offered and answered rates, p50/p99 of the 200s, and the 503s by error code with their p50/p99
latency. With deadlines, the 200s stay within the server's JMVAE_REQUEST_TIMEOUT_MS plus about one batch and the
rest get 503 at their deadline; without, the queue would grow until every answer took max_queue / rate.
--deadline-ms sends it as X-Request-Timeout-Ms. Exit status 1 when an answer was neither 200 nor a 503 with
Retry-After.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import httpx
import numpy as np

from bench.throughput import request_kwargs


def generate_request(n: int) -> dict[str, Any]:
    """bench/throughput.py's POST /generate with `n` random faces (n=0: the average face alone, the least HTTP work)."""
    request = request_kwargs("/generate", b"")
    return {"json": request["json"] | {"n": n}}


async def sustainable_rate(url: str, request: dict[str, Any], clients: int, seconds: float) -> float:
    """Answers per second of `clients` closed-loop clients, after a one-second warm-up."""
    answered = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        start = time.perf_counter()
        measure_from, until = start + 1.0, start + 1.0 + seconds

        async def one_client() -> None:
            nonlocal answered
            while time.perf_counter() < until:
                response = await client.post("/generate", **request)
                if response.status_code == 200 and time.perf_counter() > measure_from:
                    answered += 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return answered / seconds


def _percentiles(values: list[float]) -> dict[str, float | None]:
    ms = np.array(values) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
        "p99_ms": float(np.percentile(ms, 99)) if ms.size else None,
        "max_ms": float(ms.max()) if ms.size else None,
    }


async def open_loop(
    url: str, request: dict[str, Any], rate: float, seconds: float, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Sends POST /generate at `rate` per second for `seconds`, each at its scheduled time; what came back."""
    ok: list[float] = []
    shed: list[float] = []
    outcomes: Counter[str] = Counter()
    bad: list[str] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, headers=headers) as client:

        async def one() -> None:
            sent = time.perf_counter()
            try:
                response = await client.post("/generate", **request)
            except httpx.HTTPError as e:
                outcomes[type(e).__name__] += 1
                bad.append(type(e).__name__)
                return
            took = time.perf_counter() - sent
            if response.status_code == 200:
                ok.append(took)
                outcomes["200"] += 1
                return
            code = (
                response.json().get("error", "?") if response.headers.get("content-type") == "application/json" else "?"
            )
            outcomes[f"{response.status_code} {code}"] += 1
            if response.status_code == 503 and "retry-after" in response.headers:
                shed.append(took)
            else:
                bad.append(f"{response.status_code} {response.text[:200]}")

        start, tasks = time.perf_counter(), []
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        sent_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
    return {
        "target_per_s": rate,
        "offered_per_s": len(tasks) / sent_s,  # what this client managed to send
        "sent": len(tasks),
        "answered_per_s": len(ok) / sent_s,
        "outcomes": dict(sorted(outcomes.items())),
        "ok": {"count": len(ok), **_percentiles(ok)},
        "shed": {"count": len(shed), **_percentiles(shed)},
        "bad": bad[:5],
        "bad_count": len(bad),
    }


async def run(
    url: str, factor: float, seconds: float, clients: int, probe_s: float, n: int = 4, deadline_ms: int | None = None
) -> dict[str, Any]:
    request = generate_request(n)
    rate = await sustainable_rate(url, request, clients, probe_s)
    headers = {"X-Request-Timeout-Ms": str(deadline_ms)} if deadline_ms else None
    return {
        "sustainable_per_s": rate,
        "factor": factor,
        **await open_loop(url, request, factor * rate, seconds, headers),
    }


def format_report(report: dict[str, Any]) -> str:
    def row(name: str, r: dict[str, Any]) -> str:
        if not r["count"]:
            return f"  {name:<9} 0"
        times = f"p50 {r['p50_ms']:7.1f} ms   p99 {r['p99_ms']:7.1f} ms   max {r['max_ms']:7.1f} ms"
        return f"  {name:<9} {r['count']:>6}   {times}"

    return "\n".join(
        [
            f"sustainable {report['sustainable_per_s']:.1f} req/s; offered {report['offered_per_s']:.1f} req/s "
            f"(×{report['offered_per_s'] / report['sustainable_per_s']:.1f}), "
            f"answered {report['answered_per_s']:.1f} req/s",
            row("200", report["ok"]),
            row("503", report["shed"]),
            f"  outcomes  {report['outcomes']}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--factor", type=float, default=4.0, help="offered load as a multiple of the sustainable")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the open-loop run")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients that measure the sustainable rate")
    parser.add_argument("--probe", type=float, default=5.0, help="seconds of that measurement")
    parser.add_argument("--n", type=int, default=4, help="random faces per /generate request")
    parser.add_argument("--deadline-ms", type=int, default=None, help="send as X-Request-Timeout-Ms")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.url, args.factor, args.seconds, args.clients, args.probe, args.n, args.deadline_ms))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["bad_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
