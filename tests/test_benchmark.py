"""The benchmark script runs end to end (its numbers are for people to read, not for tests to assert)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from service_support import image_bytes

from bench.throughput import ENDPOINTS, main
from jmvae.training.synthetic import render_faces, sample_attributes

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_runs_and_reports_every_cell(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    face = tmp_path / "face.jpg"
    face.write_bytes(image_bytes(render_faces(sample_attributes(1, rng), rng, image_size=128)[0], "JPEG"))
    assert main(["--image", str(face), "--checkpoint", str(tiny_checkpoint), "--seconds", "0.5", "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n") :])
    cells = {(r["endpoint"], r["clients"], r["batching"]) for r in report["rows"]}
    assert {(e, c, "max 32") for e in ENDPOINTS for c in (1, 32)} <= cells
    assert {(e, 32, "off (max 1)") for e in ENDPOINTS} <= cells
    assert all(r["errors"] == 0 and r["requests"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in report["rows"])
    assert report["summary"]["in_process_images_s"] > 0
    assert set(report["summary"]["in_process_stages"]) == {
        "decode_ms",
        "detect_and_crop_ms",
        "model_batch_1_ms",
        "model_batch_32_ms",
    }
    assert "| /attributes | 32 | max 32 |" in out


def test_peers_pipeline_imports_without_the_web_stack() -> None:
    """bench/peers/common.py runs in each peer's own venv, where FastAPI, Starlette and uvicorn may be missing
    (TorchServe's has none of them): the service's core it calls must not need them."""
    blocked = "import sys; sys.modules.update(dict.fromkeys(('fastapi', 'starlette', 'uvicorn')))"
    code = f"{blocked}; import bench.peers.common, bench.peers.torchserve_handler"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
