"""Deadlines under overload: how a running `jmvae serve` answers an open-loop load several times what it sustains.

    python -m bench.deadlines --url http://127.0.0.1:8000 --factor 4 --seconds 20 [--deadline-ms 300] [--json]

First a closed loop (--clients clients, one request after another, --probe seconds) measures the sustainable
rate of POST /generate (n=4 by default, as bench/throughput.py sends it); then requests are sent at --factor times that
rate, each at its scheduled time whatever the answers (open loop: overload stays overload), for --seconds, over a
lean keep-alive HTTP/1.1 client (httpx's CPU per request would take the server's cores and make sends late). It
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
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np

from bench.throughput import request_kwargs


def generate_body(n: int) -> bytes:
    """bench/throughput.py's POST /generate body with `n` random faces (n=0: the average face alone, the least
    HTTP work)."""
    return json.dumps(request_kwargs("/generate", b"")["json"] | {"n": n}).encode()


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


class LeanClient:
    """HTTP/1.1 over a pool of keep-alive asyncio connections, one prepared request sent again and again.

    httpx costs about a millisecond of CPU per request; at 4x the service's rate on a 2-core machine that is a
    core the server no longer has, and requests leave late: the open loop stops being open. Here a request is
    one write of prepared bytes and one read of the answer, tens of microseconds."""

    def __init__(self, url: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        head = {"Host": f"{self.host}:{self.port}", "Content-Type": "application/json"}
        head |= {"Content-Length": str(len(body))} | (headers or {})
        lines = [f"POST {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in head.items()]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def send(self) -> Answer:
        reader, writer = self.idle.pop() if self.idle else await self._open()
        try:
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        return Answer(int(status_line.split()[1]), headers, body)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def sustainable_rate(url: str, body: bytes, clients: int, seconds: float) -> float:
    """Answers per second of `clients` closed-loop clients, after a one-second warm-up."""
    answered = 0
    client = LeanClient(url, "/generate", body)
    start = time.perf_counter()
    measure_from, until = start + 1.0, start + 1.0 + seconds

    async def one_client() -> None:
        nonlocal answered
        while time.perf_counter() < until:
            answer = await client.send()
            if answer.status == 200 and time.perf_counter() > measure_from:
                answered += 1

    await asyncio.gather(*(one_client() for _ in range(clients)))
    client.close()
    return answered / seconds


def _percentiles(values: list[float]) -> dict[str, float | None]:
    ms = np.array(values) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
        "p99_ms": float(np.percentile(ms, 99)) if ms.size else None,
        "max_ms": float(ms.max()) if ms.size else None,
    }


async def open_loop(
    url: str, body: bytes, rate: float, seconds: float, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Sends POST /generate at `rate` per second for `seconds`, each at its scheduled time; what came back.

    A latency runs from the request's scheduled time, not from when it left: a generator that fell behind
    counts its own lag against the answer rather than hiding it (no coordinated omission); how late requests
    left is reported apart, as `send_lag`."""
    ok: list[float] = []
    shed: list[float] = []
    lag: list[float] = []
    outcomes: Counter[str] = Counter()
    bad: list[str] = []
    client = LeanClient(url, "/generate", body, headers)

    async def one(scheduled: float) -> None:
        lag.append(time.perf_counter() - scheduled)
        try:
            answer = await client.send()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            outcomes[type(e).__name__] += 1
            bad.append(type(e).__name__)
            return
        took = time.perf_counter() - scheduled
        if answer.status == 200:
            ok.append(took)
            outcomes["200"] += 1
            return
        json_body = answer.headers.get("content-type") == "application/json"
        code = json.loads(answer.body).get("error", "?") if json_body else "?"
        outcomes[f"{answer.status} {code}"] += 1
        if answer.status == 503 and "retry-after" in answer.headers:
            shed.append(took)
        else:
            bad.append(f"{answer.status} {answer.body[:200]!r}")

    start, tasks = time.perf_counter(), []
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    sent_s = time.perf_counter() - start
    await asyncio.gather(*tasks)
    client.close()
    return {
        "target_per_s": rate,
        "offered_per_s": len(tasks) / sent_s,  # what this client managed to send
        "sent": len(tasks),
        "connections": client.opened,
        "answered_per_s": len(ok) / sent_s,
        "outcomes": dict(sorted(outcomes.items())),
        "ok": {"count": len(ok), **_percentiles(ok)},
        "shed": {"count": len(shed), **_percentiles(shed)},
        "send_lag": _percentiles(lag),
        "bad": bad[:5],
        "bad_count": len(bad),
    }


async def run(
    url: str, factor: float, seconds: float, clients: int, probe_s: float, n: int = 4, deadline_ms: int | None = None
) -> dict[str, Any]:
    body = generate_body(n)
    rate = await sustainable_rate(url, body, clients, probe_s)
    headers = {"X-Request-Timeout-Ms": str(deadline_ms)} if deadline_ms else None
    return {
        "sustainable_per_s": rate,
        "factor": factor,
        **await open_loop(url, body, factor * rate, seconds, headers),
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
            f"  sent late p50 {report['send_lag']['p50_ms']:.1f} ms, p99 {report['send_lag']['p99_ms']:.1f} ms "
            f"(times above run from each request's scheduled time); {report['connections']} connections",
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
