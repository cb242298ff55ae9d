"""The face detector on real faces: recall, framing, false detections, jitter and cost, printed as tables.

    .venv/bin/python -m bench.faces --data ../shared/datasets/celeba-subset [--faces 300] [--json]

Measured with `jmvae.model.faces.FaceCropper` (Preprocessing's defaults, or another --cascade) on CelebA in its
native layout:
- recall and framing on every image: how often a face passes, and the median grown box on the aligned images,
  which is `CELEBA_ALIGNED_BOX`, the framing of a miss;
- scenes: each of the first --faces val faces, enlarged x2 to x4, pasted at a random place into a 1600x1200
  scene drawn here (noise at three scales, shapes, lines, blur; seeded): how often the answer is the face (IoU
  >= 0.5 with the face's aligned box mapped into the scene), a wrong box reported as a face, or no face;
- jitter: how the box of the same face moves between copies of it at x0.75, x1.5, x3, x6 and in a scene,
  relative to the box at x1 (shift of the centre and change of the side, as fractions of the side): the range the
  training augmentation draws from;
- cost: detection CPU milliseconds per photo at 178x218, 640x480, 2000x1500 and 4000x3000 (a val face pasted
  into a scene), for this detector and for the one of jmvae 0.1 (the largest box of the default cascade at
  scale factor 1.1, 5 neighbours, 40 px minimum, searched at most 640 px long), one OpenCV thread and all.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from jmvae.model.faces import FRONTAL_CASCADES, FaceCropper
from jmvae.model.preprocess import CropBox, FaceDetection, Preprocessing
from jmvae.training.celeba import IMAGE_DIR, read_celeba

SCENE_SIZE = (1600, 1200)
VARIANTS = (0.75, 1.5, 3.0, 6.0)


def scene(rng: np.random.Generator, width: int = SCENE_SIZE[0], height: int = SCENE_SIZE[1]) -> Image.Image:
    """A cluttered background without faces: gradients, noise at three scales, shapes and lines, a little blur."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [rng.uniform(60, 200) + rng.uniform(-0.1, 0.1) * xx + rng.uniform(-0.1, 0.1) * yy for _ in range(3)], axis=-1
    )
    for cell in (4, 16, 64):
        noise = rng.normal(0, 1, (height // cell + 2, width // cell + 2, 3)).astype(np.float32)
        base += cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC) * rng.uniform(5, 25)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(20, 60))):
        x, y, size = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(10, 300))
        other = int(rng.integers(10, 300))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 4))
        if kind == 0:
            draw.rectangle([x, y, x + size, y + other], fill=colour)
        elif kind == 1:
            draw.ellipse([x, y, x + size, y + other], fill=colour)
        elif kind == 2:
            end = (x + int(rng.integers(-400, 400)), y + int(rng.integers(-400, 400)))
            draw.line([(x, y), end], fill=colour, width=int(rng.integers(1, 12)))
        else:
            draw.rectangle([x, y, x + size, y + size // 3], outline=colour, width=int(rng.integers(1, 6)))
    return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5))))


def paste(
    face: Image.Image, rng: np.random.Generator, factor: float | None = None, size: tuple[int, int] = SCENE_SIZE
) -> tuple[Image.Image, float, tuple[int, int]]:
    """`face` enlarged by `factor` (default: random x2 to x4) at a random place in a new scene; with where."""
    factor = float(rng.uniform(2, 4)) if factor is None else factor
    enlarged = face.resize((round(face.width * factor), round(face.height * factor)), Image.Resampling.LANCZOS)
    background = scene(rng, *size)
    at = (int(rng.integers(0, size[0] - enlarged.width + 1)), int(rng.integers(0, size[1] - enlarged.height + 1)))
    background.paste(enlarged, at)
    return background, factor, at


def moved(box: CropBox, factor: float, at: tuple[float, float] = (0.0, 0.0)) -> CropBox:
    """A box of the original image where it lands after scaling by `factor` and pasting at `at`."""
    return CropBox(
        left=at[0] + box.left * factor,
        top=at[1] + box.top * factor,
        width=box.width * factor,
        height=box.height * factor,
    )


def val_faces(root: Path) -> tuple[list[Path], np.ndarray]:
    """The val (partition 1) images of a CelebA root in filename order, and their attributes present (bool)."""
    index = read_celeba(root)
    rows = sorted((name, i) for i, name in enumerate(index.filenames) if index.partition[i] == 1)
    paths = [root / IMAGE_DIR / name for name, _ in rows]
    return paths, index.attributes[[i for _, i in rows]] > 0


def recall_and_framing(cropper: FaceCropper, root: Path) -> dict[str, Any]:
    paths = sorted((root / "img_align_celeba").glob("*.jpg"))
    boxes = []
    for path in paths:
        with Image.open(path) as image:
            crop = cropper.crop(image.convert("RGB"))
        if crop.detected and (image.width, image.height) == (178, 218):
            boxes.append([crop.box.left, crop.box.top, crop.box.width])
    grown = np.array(boxes)
    return {
        "images": len(paths),
        "detected": len(grown) / len(paths),
        "median_box": dict(zip(("left", "top", "side"), np.median(grown, axis=0).round(2).tolist())),
        "side_p10_p90": np.percentile(grown[:, 2], [10, 90]).round(1).tolist(),
    }


def scenes_and_jitter(cropper: FaceCropper, faces: list[Path], seed: int) -> dict[str, Any]:
    truth_box = Preprocessing().aligned_box.scaled(1 / cropper.detection.box_scale)  # the aligned face, ungrown
    rng = np.random.default_rng(seed)
    outcome = {"face": 0, "wrong": 0, "none": 0}
    shifts: list[float] = []
    sides: list[float] = []
    confidences: dict[str, list[float]] = {"true": [], "false": []}
    for path in faces:
        with Image.open(path) as opened:
            face = opened.convert("RGB")
        photo, factor, at = paste(face, rng)
        crop = cropper.crop(photo)
        truth = moved(truth_box, factor, at)
        for found in crop.faces:
            confidences["true" if found.box.iou(truth) >= 0.5 else "false"].append(found.confidence)
        if not crop.detected:
            outcome["none"] += 1
        else:
            outcome["face" if crop.faces[0].box.iou(truth) >= 0.5 else "wrong"] += 1
        base = cropper.crop(face)
        if not base.detected:
            continue
        copies = [
            (
                cropper.crop(face.resize((round(face.width * k), round(face.height * k)), Image.Resampling.LANCZOS)),
                k,
                (0.0, 0.0),
            )
            for k in VARIANTS
        ]
        for other, k, offset in [*copies, (crop, factor, at)]:
            if not other.detected:
                continue
            expected = moved(base.faces[0].box, k, offset)
            found = other.faces[0].box
            centre = np.hypot(
                found.left + found.width / 2 - expected.left - expected.width / 2,
                found.top + found.height / 2 - expected.top - expected.height / 2,
            )
            shifts.append(centre / expected.width)
            sides.append(found.width / expected.width)
    n = len(faces)
    log_sides = np.abs(np.log(sides))
    return {
        "scenes": {k: v / n for k, v in outcome.items()} | {"faces": n},
        # Confidence percentiles 0, 1, 5, 50, 100 of the faces found, true (IoU >= 0.5) and false.
        "confidence": {
            k: np.percentile(v, [0, 1, 5, 50, 100]).round(3).tolist() if v else [] for k, v in confidences.items()
        },
        "jitter": {
            "copies": len(shifts),
            "centre_shift_p50_p95_max": np.percentile(shifts, [50, 95, 100]).round(4).tolist(),
            "side_ratio_log_p50_p95_max": np.percentile(log_sides, [50, 95, 100]).round(4).tolist(),
        },
    }


def _legacy_find(cascade: cv2.CascadeClassifier, image: Image.Image) -> None:
    """The detection of jmvae 0.1 (service/faces.py at e5f622b), for the before/after cost."""
    width, height = image.size
    longest = max(width, height)
    if longest > 640:
        reduced = image.reduce(longest // 640)
        factor = 640 / longest
        grey = cv2.resize(
            cv2.cvtColor(np.asarray(reduced), cv2.COLOR_RGB2GRAY),
            (max(1, round(width * factor)), max(1, round(height * factor))),
            interpolation=cv2.INTER_AREA,
        )
    else:
        grey = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
    cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))


def cost(cropper: FaceCropper, face_path: Path, seed: int, repeats: int = 10) -> list[dict[str, Any]]:
    legacy = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    rng = np.random.default_rng(seed)
    with Image.open(face_path) as opened:
        face = opened.convert("RGB")
    photos = {"178x218": face}
    for size in ((640, 480), (2000, 1500), (4000, 3000)):
        photos[f"{size[0]}x{size[1]}"] = paste(face, rng, factor=size[1] / 218 / 2.5, size=size)[0]
    rows = []
    for threads in (1, cv2.getNumberOfCPUs()):
        cv2.setNumThreads(threads)
        for name, photo in photos.items():
            row: dict[str, Any] = {"photo": name, "opencv_threads": threads}
            for label, run in (
                ("before_ms", lambda photo=photo: _legacy_find(legacy, photo)),
                ("after_ms", lambda photo=photo: cropper.detect(photo)),
            ):
                row[label] = round(_cpu_ms(run, repeats), 2)
            rows.append(row)
    return rows


def _cpu_ms(run: Callable[[], object], repeats: int) -> float:
    run()
    start = time.process_time()
    for _ in range(repeats):
        run()
    return (time.process_time() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a CelebA root in its native layout")
    parser.add_argument("--faces", type=int, default=300, help="val faces for the scenes and the jitter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cascade",
        default=FaceDetection().cascade,
        choices=sorted(FRONTAL_CASCADES),
        help="the cascade to measure (the others are what the default was chosen against)",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["recall", "scenes", "cost"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    detection = FaceDetection(cascade=args.cascade)
    if args.cascade != FaceDetection().cascade:  # min_confidence is on the default cascade's scale: none for others
        detection = detection.model_copy(update={"min_confidence": -1e9})
    cropper = FaceCropper(Preprocessing(detection=detection))
    faces = val_faces(args.data)[0][: args.faces]
    results: dict[str, Any] = {"detection": cropper.detection.model_dump()}
    if "recall" not in args.skip:
        results["recall"] = recall_and_framing(cropper, args.data)
    if "scenes" not in args.skip:
        results |= scenes_and_jitter(cropper, faces, args.seed)
    if "cost" not in args.skip:
        results["cost"] = cost(cropper, faces[0], args.seed)
    print(json.dumps(results, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
