"""What users' photos get from POST /attributes of a running `jmvae serve`: accuracy, stability, scenes, speed.

    .venv/bin/python -m bench.photos --data ../shared/datasets/celeba-subset [--checkpoint CKPT] [--faces 200]
        [--before PYTHON] [--seconds 20] [--skip ...] [--json]

Every number is measured over HTTP, on the path a user's upload takes (decode, face crop, model, JSON):
- accuracy: each val face's file, uploaded as it is: ROC AUC and accuracy of the answered probabilities, means
  over the 40 attributes, and the majority baseline's accuracy (the checkpoint's training prevalences);
- stability: each of the first --faces val faces as the file (x1), resized (Lanczos, sent as PNG) to x0.75,
  x1.5, x3 and x6, and enlarged x3 into a 1600x1200 scene (bench.faces.scene, JPEG quality 95): per face and
  attribute the range (max - min) of P over the six copies; the mean over faces and attributes, and for Male;
- scenes: the same faces enlarged x2 to x4 into scenes (bench.faces.paste, JPEG 95): the answer's face box on the
  face (IoU >= 0.5 with its aligned box mapped into the scene), a wrong box reported as a face, or no face;
- throughput: /attributes on one 2000x1500 photo (a val face in a scene, JPEG 90) at 4 clients for --seconds,
  and with --before PYTHON the same against `jmvae serve` of PYTHON in the same run: the service
  of another checkout with its own venv (the one before a change), serving its own default model.
The servers run one worker each, on this machine, with the load generator beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.faces import moved, paste, val_faces
from bench.processes import free_port, server_process
from bench.serving import Endpoints
from bench.throughput import drive
from jmvae.model.checkpoint import read_checkpoint
from jmvae.model.preprocess import CropBox, Preprocessing
from jmvae.service.engine import DEFAULT_CHECKPOINT
from jmvae.training.data import CELEBA_ATTRIBUTES
from jmvae.training.evaluate import roc_auc

SCALES = (0.75, 1.5, 3.0, 6.0)
THREADS_ENV = {"OMP_NUM_THREADS": "1"}  # as bench/serving.py: spinning OpenMP threads starve the client


def _encode(image: Image.Image, kind: str, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **({"quality": quality} if kind == "JPEG" else {}))
    return buffer.getvalue()


async def _answers(url: str, uploads: list[tuple[bytes, str]], concurrency: int = 4) -> list[dict[str, Any]]:
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(data: bytes, media: str) -> dict[str, Any]:
            async with semaphore:
                response = await client.post("/attributes", files={"image": ("photo", data, media)})
                response.raise_for_status()
                return response.json()

        return list(await asyncio.gather(*(one(data, media) for data, media in uploads)))


def accuracy(
    url: str, paths: list[Path], labels: np.ndarray, names: list[str], prevalence: dict[str, float]
) -> dict[str, float]:
    answers = asyncio.run(_answers(url, [(p.read_bytes(), "image/jpeg") for p in paths]))
    scores = np.array([[a["probabilities"][n] for n in names] for a in answers])
    majority = np.array([prevalence[n] >= 0.5 for n in names])
    return {
        "faces": len(paths),
        "auc_mean": float(np.nanmean(roc_auc(scores, labels))),
        "accuracy_mean": float(((scores >= 0.5) == labels).mean()),
        "majority_accuracy_mean": float((majority[None, :] == labels).mean()),
        "faces_detected": float(np.mean([a["face_detected"] for a in answers])),
    }


def stability_and_scenes(url: str, paths: list[Path], names: list[str], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    uploads: list[tuple[bytes, str]] = []
    truths: list[CropBox] = []
    face_box = Preprocessing().aligned_box.scaled(1 / 1.3)  # the aligned face, ungrown: where the face is
    for path in paths:
        with Image.open(path) as opened:
            face = opened.convert("RGB")
        uploads.append((path.read_bytes(), "image/jpeg"))
        for k in SCALES:
            resized = face.resize((round(face.width * k), round(face.height * k)), Image.Resampling.LANCZOS)
            uploads.append((_encode(resized, "PNG"), "image/png"))
        uploads.append((_encode(paste(face, rng, factor=3.0)[0], "JPEG"), "image/jpeg"))
        photo, factor, at = paste(face, rng)
        uploads.append((_encode(photo, "JPEG"), "image/jpeg"))
        truths.append(moved(face_box, factor, at))
    answers = asyncio.run(_answers(url, uploads))
    per_face = len(SCALES) + 3
    ranges, outcome = [], {"face": 0, "wrong": 0, "none": 0}
    for i, truth in enumerate(truths):
        group = answers[i * per_face : (i + 1) * per_face]
        p = np.array([[a["probabilities"][n] for n in names] for a in group[:-1]])
        ranges.append(p.max(axis=0) - p.min(axis=0))
        scene = group[-1]
        if not scene["face_detected"]:
            outcome["none"] += 1
        else:
            # The face box; a service before face_box existed answers with its crop, the face grown x1.3.
            found = (
                CropBox.model_validate(scene["face_box"])
                if "face_box" in scene
                else CropBox.model_validate(scene["box"]).scaled(1 / 1.3)
            )
            outcome["face" if found.iou(truth) >= 0.5 else "wrong"] += 1
    spread = np.array(ranges)
    male = names.index("Male")
    return {
        "stability": {
            "faces": len(paths),
            "copies": ["x1 (file)", *(f"x{k:g}" for k in SCALES), "x3 in a scene"],
            "range_mean": float(spread.mean()),
            "range_male_mean": float(spread[:, male].mean()),
            "range_p95": float(np.percentile(spread, 95)),
            "worst_attributes": sorted(((float(v), n) for n, v in zip(names, spread.mean(axis=0))), reverse=True)[:5],
        },
        "scenes": {k: v / len(truths) for k, v in outcome.items()} | {"faces": len(truths)},
    }


# The command's module moved from jmvae.training.cli to jmvae.cli; a checkout from before has only the first.
SERVE = (
    "import importlib.util, runpy; runpy.run_module('jmvae.cli' if importlib.util.find_spec('jmvae.cli') "
    "else 'jmvae.training.cli', run_name='__main__')"
)


@contextmanager
def serving(python: str, checkpoint: Path | None) -> Iterator[tuple[str, Any]]:
    """`jmvae serve` of `python` (one worker) on a free port: its URL and process, once ready."""
    port = free_port()
    cmd = [python, "-c", SERVE, "serve", "--port", str(port)]
    cmd += ["--checkpoint", str(checkpoint)] if checkpoint else []
    url = f"http://127.0.0.1:{port}"
    with server_process(cmd, THREADS_ENV, f"{url}/readyz") as process:
        yield url, process


def throughput(
    python: str, checkpoint: Path | None, paths: list[Path], before: str | None, seconds: float, seed: int
) -> dict[str, Any]:
    with Image.open(paths[0]) as opened:
        photo = paste(opened.convert("RGB"), np.random.default_rng(seed), factor=2.75, size=(2000, 1500))[0]
    upload = {"files": {"image": ("photo.jpg", _encode(photo, "JPEG", 90), "image/jpeg")}}
    rows: dict[str, Any] = {}
    for label, server, model in (("this", python, checkpoint), ("before", before, None)):
        if server is None:
            continue
        with serving(server, model) as (url, process):
            server_cpu = Endpoints(pid=process.pid, url=url).cpu_seconds
            rows[label] = asyncio.run(drive(url, "/attributes", upload, 4, seconds, server_cpu))
    if before:
        rows["speed_up"] = rows["this"]["requests_per_s"] / rows["before"]["requests_per_s"]
    return {"photo": "2000x1500 JPEG", "clients": 4} | rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a CelebA root in its native layout")
    parser.add_argument("--checkpoint", type=Path, help="default: the packaged model")
    parser.add_argument("--faces", type=int, default=200, help="val faces for stability and scenes")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the python whose `jmvae serve` is measured "
        "(another checkout's venv measures that checkout); default: this one",
    )
    parser.add_argument("--before", help="python of another checkout's venv, for the throughput before a change")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["accuracy", "stability", "throughput"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    paths, labels = val_faces(args.data)
    names = list(CELEBA_ATTRIBUTES)
    meta = read_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT).meta
    results: dict[str, Any] = {"checkpoint": str(args.checkpoint or DEFAULT_CHECKPOINT)}
    if {"accuracy", "stability"} - set(args.skip):
        with serving(args.python, args.checkpoint) as (url, _):
            if "accuracy" not in args.skip:
                results["accuracy"] = accuracy(url, paths, labels, names, meta.data["attribute_prevalence"])
            if "stability" not in args.skip:
                results |= stability_and_scenes(url, paths[: args.faces], names, args.seed)
    if "throughput" not in args.skip:
        results["throughput"] = throughput(args.python, args.checkpoint, paths, args.before, args.seconds, args.seed)
    print(json.dumps(results, indent=None if args.json else 2))


if __name__ == "__main__":
    sys.exit(main())
