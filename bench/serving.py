"""Serving benchmark: our service against LitServe, BentoML and TorchServe, in one run on one machine.

    bash bench/setup_peers.sh        # once: the peers' venvs, bench/.venv-<peer>/
    .venv/bin/python -m bench.serving --image FACE.jpg [--seconds 10] [--servers jmvae litserve ...] [--json]

Every server loads the same checkpoint and does the same work per request (bench/peers/common.py): for
image → attributes, decode the upload, detect and crop the face, one batched forward pass, the JSON of our
POST /attributes; for attributes → face, validate our POST /generate body (n=0), one batched forward pass, the
average face as a base64 PNG in our JSON. Each runs one worker and its own dynamic batching at max 32: ours
without a wait (its default), LitServe's and TorchServe's with 5 ms, BentoML's adaptive. One asyncio httpx
client, in this process, drives each path at 1, 8 and 32 concurrent clients for --seconds after a warm-up, and
a server's answers are checked against the in-process pipeline before it is measured.

Also measured: the in-process ceiling (the same work without HTTP, at batch 1, 8 and 32), our service with
batching off (JMVAE_MAX_BATCH_SIZE=1), with a 5 ms batch wait (JMVAE_MAX_BATCH_WAIT_MS=5), without the image
path's wait for uploads still being cropped (JMVAE_UPSTREAM_WAIT_MS=0) and on uvicorn's pure-Python HTTP parser
and event loop (JMVAE_HTTP_PARSER=h11, JMVAE_EVENT_LOOP=asyncio), TorchServe with no batch delay as well as 5 ms;
ours (`jmvae serve --workers 2`), LitServe and TorchServe with two workers each, compared among themselves; and
the attributes → face path answered as one PNG, JPEG or WebP (Accept) instead of a base64 PNG in JSON, with each
format's encoding cost; and the CPU time per request of each server and of the client. Prints markdown tables
(and JSON with --json). Servers that are not being measured are stopped (SIGSTOP), and every cell is measured on
each server in turn. The client shares the machine with the servers; compare numbers from one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import yaml
from PIL import Image

from bench.peers.common import Pipeline
from bench.processes import free_port, serve_subprocess, server_process
from bench.throughput import drive
from jmvae.service.encoding import IMAGE_MEDIA_TYPES, encode_image, png_base64
from jmvae.service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench" / "peers"
GENERATE_BODY = {"attributes": {"Smiling": 2, "Male": -1}, "n": 0, "seed": 1}
# Every server's environment. OpenMP threads spin while they wait for work by default; on 2 cores shared with
# the load generator and the server's other threads that burns the CPU they need (torch called from a process's
# main thread, as LitServe's and TorchServe's workers do, took 5x the CPU per item here): a small CPU box runs
# them passive.
SERVER_ENV = {"OMP_WAIT_POLICY": "passive"}


# Our service's variants, each a server of its own, measured beside the default (one worker, max 32, no wait).
@dataclass(frozen=True)
class Variant:
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1  # `jmvae serve --workers`: processes sharing the port, each with its own engine


TWO_WORKERS = "2 workers"  # the variant every server that can runs, compared among themselves
VARIANTS = {
    "batching off": Variant({"JMVAE_MAX_BATCH_SIZE": "1"}),
    "5 ms batch wait": Variant({"JMVAE_MAX_BATCH_WAIT_MS": "5"}),
    "no upstream wait": Variant({"JMVAE_UPSTREAM_WAIT_MS": "0"}),
    "h11 + asyncio": Variant({"JMVAE_HTTP_PARSER": "h11", "JMVAE_EVENT_LOOP": "asyncio"}),
    TWO_WORKERS: Variant(workers=2),
}
PATHS = ("attributes", "generate")  # image → attributes, attributes → face
SERVERS = ("jmvae", "litserve", "bentoml", "torchserve")
BATCH_SIZES = (1, 8, 32)


@dataclass(frozen=True)
class Endpoints:
    """A running server: its main process and where each of the two paths is."""

    pid: int
    url: str
    attributes: str = "/attributes"
    generate: str = "/generate"

    def pause(self) -> None:
        for pid in _process_tree(self.pid):
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in _process_tree(self.pid):
            os.kill(pid, signal.SIGCONT)

    def cpu_seconds(self) -> float:
        """User and system CPU time of the server's processes so far."""
        ticks = 0
        for pid in _process_tree(self.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return ticks / os.sysconf("SC_CLK_TCK")


def _process_tree(root: int) -> list[int]:
    """`root` and all its descendants (BentoML's workers start sessions of their own: no process group holds
    them all)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after "pid (name)": state, ppid
        except OSError:  # it has just exited
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _venv(peer: str) -> Path:
    venv = ROOT / "bench" / f".venv-{peer}" / "bin"
    if not venv.is_dir():
        raise RuntimeError(f"{venv.parent} is missing: run `bash bench/setup_peers.sh {peer}`")
    return venv


@contextmanager
def _jmvae(checkpoint: Path | None, env: dict[str, str], workers: int = 1) -> Iterator[Endpoints]:
    with serve_subprocess(checkpoint, env, workers) as served:
        yield Endpoints(served.process.pid, served.url)


@contextmanager
def _litserve(env: dict[str, str], workers: int = 1) -> Iterator[Endpoints]:
    port = free_port()
    cmd = [str(_venv("litserve") / "python"), "-m", "bench.peers.litserve_app", str(port), str(workers)]
    with server_process(cmd, env, f"http://127.0.0.1:{port}/health", ready_in_a_row=3, cwd=ROOT) as proc:
        yield Endpoints(proc.pid, f"http://127.0.0.1:{port}")


@contextmanager
def _bentoml(env: dict[str, str]) -> Iterator[Endpoints]:
    port = free_port()
    cmd = [
        str(_venv("bentoml") / "bentoml"),
        "serve",
        "bench.peers.bentoml_service:Front",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with server_process(cmd, env, f"http://127.0.0.1:{port}/readyz", ready_in_a_row=3, cwd=ROOT) as proc:
        yield Endpoints(proc.pid, f"http://127.0.0.1:{port}")


@contextmanager
def _torchserve(env: dict[str, str], overrides: dict[str, int] | None = None) -> Iterator[Endpoints]:
    """TorchServe with bench/peers/torchserve-model.yaml, or that config with `overrides` of its fields."""
    venv = _venv("torchserve")
    with tempfile.TemporaryDirectory(prefix="torchserve-") as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        model_config = PEERS / "torchserve-model.yaml"
        if overrides:
            model_config = Path(tmp) / model_config.name
            config = yaml.safe_load((PEERS / model_config.name).read_text()) | overrides
            model_config.write_text(yaml.safe_dump(config))
        for model in PATHS:  # the handler serves the path its model is named after
            subprocess.run(
                [
                    str(venv / "torch-model-archiver"),
                    "--model-name",
                    model,
                    "--version",
                    "1",
                    "--handler",
                    str(PEERS / "torchserve_handler.py"),
                    "--config-file",
                    str(model_config),
                    "--export-path",
                    str(store),
                    "--archive-format",
                    "no-archive",
                ],
                check=True,
            )
        inference, management, metrics, grpc, grpc_management = (free_port() for _ in range(5))
        config = Path(tmp) / "config.properties"
        config.write_text(
            f"inference_address=http://127.0.0.1:{inference}\n"
            f"management_address=http://127.0.0.1:{management}\n"
            f"metrics_address=http://127.0.0.1:{metrics}\n"
            f"grpc_inference_port={grpc}\ngrpc_management_port={grpc_management}\n"
            f"model_store={store}\nload_models={','.join(PATHS)}\n"
        )
        cmd = [
            str(venv / "torchserve"),
            "--start",
            "--foreground",
            "--ncs",
            "--disable-token-auth",
            "--ts-config",
            str(config),
            "--model-store",
            str(store),
        ]
        # /ping answers 200 once every model has its workers up. PYTHONPATH: the handler imports bench.peers;
        # TMPDIR: where `torchserve` keeps the pid file that lets one instance run per directory.
        with server_process(
            cmd,
            env | {"PYTHONPATH": str(ROOT), "TMPDIR": tmp},
            f"http://127.0.0.1:{inference}/ping",
            ready_in_a_row=3,
            cwd=Path(tmp),
            timeout_s=180,
        ) as proc:
            yield Endpoints(
                proc.pid, f"http://127.0.0.1:{inference}", "/predictions/attributes", "/predictions/generate"
            )


def _requests(image: bytes) -> dict[str, dict[str, Any]]:
    return {"attributes": {"files": {"image": ("face.jpg", image, "image/jpeg")}}, "generate": {"json": GENERATE_BODY}}


def _check_answers(name: str, server: Endpoints, image: bytes, expected: dict[str, dict[str, Any]]) -> None:
    """The server answers both paths as the in-process pipeline does (up to float rounding), or RuntimeError."""
    requests = _requests(image)
    got = {path: httpx.post(server.url + getattr(server, path), timeout=60, **requests[path]) for path in PATHS}
    for path, response in got.items():
        if response.status_code != 200:
            raise RuntimeError(f"{name} {path}: HTTP {response.status_code}: {response.text[:500]}")
    a, b = got["attributes"].json(), expected["attributes"]
    probabilities = np.array([a["probabilities"][k] for k in b["probabilities"]])
    if (
        set(a) != set(b)
        or not np.allclose(probabilities, list(b["probabilities"].values()), atol=1e-4)
        or a["box"] != b["box"]
        or a["present"] != b["present"]
    ):
        raise RuntimeError(f"{name} attributes: answers differ from the pipeline's: {a}")
    g, h = got["generate"].json(), expected["generate"]
    faces = [np.asarray(Image.open(io.BytesIO(base64.b64decode(x["average_face"]))), np.int16) for x in (g, h)]
    if set(g) != set(h) or g["attributes"] != h["attributes"] or np.abs(faces[0] - faces[1]).max() > 1:
        raise RuntimeError(f"{name} generate: answers differ from the pipeline's")


def _ceiling(pipeline: Pipeline, image: bytes, seconds: float) -> list[dict[str, Any]]:
    """Items/s of each path's whole per-request work without HTTP, one batch after another on one thread.

    That thread is not the main one: torch's OpenMP team on the main thread spins while it waits (OMP_WAIT_POLICY
    is read once, at start), which took 5x the CPU per item on this 2-core box under load from elsewhere."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(_ceiling_here, pipeline, image, seconds).result()


def _ceiling_here(pipeline: Pipeline, image: bytes, seconds: float) -> list[dict[str, Any]]:
    body = json.dumps(GENERATE_BODY).encode()

    def attributes(batch: int) -> None:
        for out in pipeline.attributes([pipeline.crop(image) for _ in range(batch)]):
            json.dumps(out)

    def generate(batch: int) -> None:
        for out in pipeline.generate([pipeline.generate_job(body) for _ in range(batch)]):
            json.dumps(out)

    rows = []
    for path, step in (("attributes", attributes), ("generate", generate)):
        for batch in BATCH_SIZES:
            step(batch)  # warm-up
            done, started, cpu = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - started < seconds:
                step(batch)
                done += batch
            rate = done / (time.perf_counter() - started)
            rows.append(
                {
                    "path": path,
                    "batch": batch,
                    "items_per_s": rate,
                    "ms_per_item": 1000 / rate,
                    "cpu_ms_per_item": (time.process_time() - cpu) / done * 1000,
                }
            )  # all of this process
            print(f"ceiling {path:10s} batch {batch:2d}: {rate:8.1f} items/s", flush=True)
    return rows


def _encode_costs(pipeline: Pipeline, repeat: int = 200) -> list[dict[str, Any]]:
    """Per format: the time to encode one average face and the answer's size."""
    job = pipeline.generate_job(GENERATE_BODY)
    face = pipeline.engine.generate_batch([job])[0].average
    body = pipeline.generate([job])[0]
    encoders: dict[str, Callable[[], bytes]] = {
        "JSON, base64 PNG": lambda: json.dumps(body | {"average_face": png_base64(face)}).encode(),
        **{media: (lambda m=media: encode_image(face, m)) for media in IMAGE_MEDIA_TYPES},
        "image/png with PIL (the service's encoder before)": lambda: _pil_png(face),
    }
    rows = []
    for name, encode in encoders.items():
        size = len(encode())
        started = time.perf_counter()
        for _ in range(repeat):
            encode()
        rows.append({"response": name, "bytes": size, "encode_us": (time.perf_counter() - started) / repeat * 1e6})
    return rows


def _pil_png(image: np.ndarray) -> bytes:
    """PNG by PIL's encoder at its default settings, as the service encoded faces before OpenCV."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _measure(
    name: str, variant: str, server: Endpoints, path: str, clients: int, request: dict[str, Any], seconds: float
) -> dict[str, Any]:
    result = asyncio.run(drive(server.url, getattr(server, path), request, clients, seconds, server.cpu_seconds))
    print(
        f"{name:10s} {variant:18s} {path:10s} {clients:2d} clients {result['requests_per_s']:8.1f} req/s "
        f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  errors {result['errors']}  CPU ms/req "
        f"server {result['server_cpu_ms']:.2f} client {result['client_cpu_ms']:.2f}",
        flush=True,
    )
    return {"server": name, "variant": variant, "path": path, "clients": clients} | result


def _processor() -> str:
    names = [
        line.split(":", 1)[1].strip()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("model name")
    ]
    return names[0] if names else platform.machine()


def _load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _versions(servers: list[str]) -> dict[str, str]:
    packages = {"litserve": ["litserve"], "bentoml": ["bentoml"], "torchserve": ["torchserve", "torch-model-archiver"]}
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for peer in (s for s in servers if s in packages):
        code = "import importlib.metadata as m, sys; print(*(m.version(p) for p in sys.argv[1:]))"
        out = subprocess.run(
            [str(_venv(peer) / "python"), "-c", code, *packages[peer]], capture_output=True, text=True, check=True
        ).stdout.split()
        versions |= dict(zip(packages[peer], out))
    java = subprocess.run(["java", "-version"], capture_output=True, text=True) if "torchserve" in servers else None
    if java is not None:
        versions["java"] = java.stderr.splitlines()[0] if java.stderr else "missing"
    return versions


def _table(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    """A markdown table of `rows` (columns: header → key), floats to three significant digits or so."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[k]) for k in columns.values()) + " |" for r in rows]
    return "\n".join(lines)


def _summary(rows: list[dict[str, Any]], ceiling: list[dict[str, Any]], clients: list[int]) -> list[dict[str, Any]]:
    """Per path, client count and number of workers (one, or two where every server ran a "2 workers" variant):
    ours against the best peer in any configuration with as many workers, by throughput, with both p99s (the best
    peer's p99 is the lowest among those peers), and against the ceiling (the in-process rate at its best batch
    size)."""
    out = []
    for path in PATHS:
        best_ceiling = max(c["items_per_s"] for c in ceiling if c["path"] == path)
        for workers, two in ((1, False), (2, True)):
            for n in clients:
                cell = [
                    r
                    for r in rows
                    if r["path"] == path
                    and r["clients"] == n
                    and (r["variant"] == TWO_WORKERS) == two
                    and not r["variant"].startswith("Accept")
                ]
                ours = next((r for r in cell if r["server"] == "jmvae" and (two or not r["variant"])), None)
                peers = [r for r in cell if r["server"] != "jmvae"]
                if ours is None or not peers:
                    continue
                best = max(peers, key=lambda r: r["requests_per_s"])
                out.append(
                    {
                        "path": path,
                        "clients": n,
                        "workers": workers,
                        "ours": ours["requests_per_s"],
                        "best_peer": _label(best),
                        "best_peer_rate": best["requests_per_s"],
                        "ours_over_best_peer": ours["requests_per_s"] / best["requests_per_s"],
                        "ours_p99_ms": ours["p99_ms"],
                        "best_peer_p99_ms": min(r["p99_ms"] for r in peers),
                        "ours_over_ceiling": ours["requests_per_s"] / best_ceiling,
                    }
                )
    return out


def _label(row: dict[str, Any]) -> str:
    return f"{row['server']} ({row['variant']})" if row["variant"] else row["server"]


def _median_rows(rows: list[dict[str, Any]], key: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of several rounds merged per `key`: the median of each float, the sum of each count."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in key), []).append(r)
    merged = []
    for group in groups.values():
        row = dict(group[0])
        for k, v in row.items():
            if isinstance(v, float):
                row[k] = float(np.median([r[k] for r in group]))
            elif k in ("errors", "requests"):
                row[k] = sum(r[k] for r in group)
        merged.append(row)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, required=True, help="a face photo (JPEG) to upload")
    parser.add_argument("--checkpoint", type=Path, help="default: the model shipped in the package")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per cell (after a warm-up)")
    parser.add_argument("--rounds", type=int, default=1, help="times to run every cell; the median is reported")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    image = args.image.read_bytes()
    env = SERVER_ENV | ({"JMVAE_CHECKPOINT": str(args.checkpoint.resolve())} if args.checkpoint else {})
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "processor": _processor(), "load_average_start": _load_average()},
        "versions": _versions(args.servers),
        "image": str(args.image),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "server_env": SERVER_ENV,
    }
    print(f"{report['machine']}; {report['versions']}", flush=True)

    pipeline = Pipeline(Settings(checkpoint=args.checkpoint) if args.checkpoint else Settings())
    expected = {
        "attributes": pipeline.attributes([pipeline.crop(image)])[0],
        "generate": pipeline.generate([pipeline.generate_job(GENERATE_BODY)])[0],
    }
    report["encoding"] = _encode_costs(pipeline)
    requests = _requests(image)
    starters: dict[str, Callable[[], AbstractContextManager[Endpoints]]] = {
        "jmvae": lambda: _jmvae(args.checkpoint, env),
        "litserve": lambda: _litserve(env),
        "bentoml": lambda: _bentoml(env),
        "torchserve": lambda: _torchserve(env),
    }
    ceiling: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        # Every cell is measured on each server in turn, so that load from elsewhere on a shared machine falls on
        # all of them alike. The servers not being measured are stopped (SIGSTOP), not merely idle: some poll
        # (LitServe's workers use a fifth of a core doing nothing).
        entries = [(name, "", starters[name]) for name in args.servers]
        if "jmvae" in args.servers:
            entries += [
                ("jmvae", name, lambda v=variant: _jmvae(args.checkpoint, env | v.env, v.workers))
                for name, variant in VARIANTS.items()
            ]
        if "torchserve" in args.servers:  # our default's policy; LitServe's worker spins on an empty queue at 0
            entries.append(("torchserve", "no batch wait", lambda: _torchserve(env, {"maxBatchDelay": 0})))
        # Two inference workers per path, as ours with two: LitServe's and TorchServe's front ends are already
        # processes of their own beside their workers.
        if "litserve" in args.servers:
            entries.append(("litserve", TWO_WORKERS, lambda: _litserve(env, workers=2)))
        if "torchserve" in args.servers:
            entries.append(("torchserve", TWO_WORKERS, lambda: _torchserve(env, {"minWorkers": 2, "maxWorkers": 2})))
        running: dict[tuple[str, str], Endpoints] = {}
        for name, variant, start in entries:
            running[name, variant] = server = stack.enter_context(start())
            stack.callback(server.resume)  # on the way out, before it is terminated: a stopped one cannot exit
            _check_answers(name, server, image, expected)
            server.pause()

        def measure(name: str, variant: str, path: str, n: int, request: dict[str, Any]) -> None:
            server = running[name, "" if variant.startswith("Accept") else variant]
            server.resume()
            try:
                rows.append(_measure(name, variant, server, path, n, request, args.seconds))
            finally:
                server.pause()

        for _ in range(args.rounds):
            ceiling += _ceiling(pipeline, image, args.seconds)
            for path in PATHS:
                for n in args.clients:
                    for name, variant in running:
                        measure(name, variant, path, n, requests[path])
                    if path == "generate" and "jmvae" in args.servers:  # the face as one image, not JSON
                        for media in IMAGE_MEDIA_TYPES:
                            measure(
                                "jmvae", f"Accept: {media}", path, n, requests[path] | {"headers": {"Accept": media}}
                            )
    report["machine"]["load_average_end"] = _load_average()
    report["ceiling"] = _median_rows(ceiling, ("path", "batch"))
    report["rows"] = rows = _median_rows(rows, ("server", "variant", "path", "clients"))
    report["summary"] = _summary(rows, report["ceiling"], args.clients)

    machine = report["machine"]
    print(
        f"\n{machine['cpus']} CPUs ({machine['processor']}), load average (1, 5, 15 min) at start "
        f"{machine['load_average_start']}, at end {machine['load_average_end']}; {report['versions']}; "
        f"median of {args.rounds} round(s)\n"
    )
    print("In-process ceiling (same work, no HTTP):\n")
    print(
        _table(
            report["ceiling"],
            {
                "path": "path",
                "batch": "batch",
                "items/s": "items_per_s",
                "ms/item": "ms_per_item",
                "CPU ms/item": "cpu_ms_per_item",
            },
        )
    )
    print("\nServers (dynamic batching max 32; one worker unless marked):\n")
    print(
        _table(
            [r | {"server": _label(r)} for r in rows if r["server"] != "jmvae" or not r["variant"]],
            {
                "server": "server",
                "path": "path",
                "clients": "clients",
                "req/s": "requests_per_s",
                "p50 ms": "p50_ms",
                "p99 ms": "p99_ms",
                "errors": "errors",
                "server CPU ms/req": "server_cpu_ms",
                "client CPU ms/req": "client_cpu_ms",
            },
        )
    )
    print("\nOurs against the best peer with as many workers, and the ceiling (its best batch size):\n")
    print(
        _table(
            report["summary"],
            {
                "path": "path",
                "clients": "clients",
                "workers": "workers",
                "ours req/s": "ours",
                "best peer": "best_peer",
                "its req/s": "best_peer_rate",
                "ours / best peer": "ours_over_best_peer",
                "ours p99 ms": "ours_p99_ms",
                "lowest peer p99 ms": "best_peer_p99_ms",
                "ours / ceiling": "ours_over_ceiling",
            },
        )
    )
    print("\nOur service, variants:\n")
    ours = sorted((r for r in rows if r["server"] == "jmvae"), key=lambda r: (r["path"], r["clients"]))
    print(
        _table(
            [r | {"variant": r["variant"] or "default (max 32, no wait), JSON"} for r in ours],
            {
                "path": "path",
                "clients": "clients",
                "variant": "variant",
                "req/s": "requests_per_s",
                "p50 ms": "p50_ms",
                "p99 ms": "p99_ms",
                "errors": "errors",
                "server CPU ms/req": "server_cpu_ms",
            },
        )
    )
    print("\nEncoding one average face (64x64):\n")
    print(_table(report["encoding"], {"response": "response", "bytes": "bytes", "µs": "encode_us"}))
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
