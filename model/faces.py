"""From a photo to the model's input: find the face, frame it as the paper did, crop it.

The one path every face takes: the CelebA training cache, `jmvae eval` and the service's `/attributes` and `/edit`
all call `FaceCropper.crop`, so a model sees uploads framed exactly as its training faces were. How faces are
found is `Preprocessing.detection`, recorded in every checkpoint.

Finding a face is two searches with OpenCV's Haar cascade:
1. coarse: the photo resampled so that the smallest face worth answering for (`min_face` of the shorter side)
   is `search_window` pixels, so the cost is the same for a 178x218 thumbnail and a 12-megapixel photo;
2. refine: each candidate's neighbourhood resampled so that the face is `refine_size` pixels and searched again
   in fine steps. The box then no longer depends on the photo's resolution or on how much scene surrounds the
   face, and what is not found again (most false detections) is dropped. The refined detection's level weight
   (`detectMultiScale3`) is its confidence; the most confident face is answered for.
If the coarse search finds nothing, it is repeated once in the refine search's finer steps: that finds 52 of the 83
faces the first search misses in 1,500 CelebA images, for about three times the cost of the first search.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import cv2
import numpy as np
from PIL import Image

from .preprocess import ALIGNED_IMAGE_SIZE, CropBox, FaceDetection, Preprocessing, crop_face, to_rgb

# The detector this module implements; a checkpoint whose faces were found by another is refused.
DETECTOR: Final = "opencv-haar-refined"
FRONTAL_CASCADES: Final = frozenset(
    {"haarcascade_frontalface_default.xml", "haarcascade_frontalface_alt.xml", "haarcascade_frontalface_alt2.xml"}
)
# Candidates of the coarse search that are refined, most confident first: a portrait has one face, and a false
# detection that outranks a real face in the coarse search rarely survives its refinement.
_MAX_CANDIDATES: Final = 3
# Each candidate is searched again within its box grown by this, for faces within this factor of its size.
_REFINE_REGION: Final = 1.75
_REFINE_RANGE: Final = 1.3
# An image within 1% of img_align_celeba's aspect ratio is taken for an aligned CelebA face (or a resized copy).
_ALIGNED_ASPECT: Final = ALIGNED_IMAGE_SIZE[1] / ALIGNED_IMAGE_SIZE[0]
_ALIGNED_ASPECT_TOLERANCE: Final = 0.01

CropSource = Literal["detected", "client", "fallback", "aligned"]


@dataclass(frozen=True)
class Face:
    box: CropBox  # the face as the detector boxes it, in the photo's pixels (before `box_scale`)
    confidence: float  # the refined detection's level weight; higher is surer


@dataclass(frozen=True, eq=False)  # eq=False: comparing the arrays field-wise would raise, not compare
class FaceCrop:
    box: CropBox  # the crop fed to the model, in the photo's pixels (may extend past the image)
    source: CropSource  # detected: around the most confident face; client: around the caller's box; fallback: no
    # face found (the aligned box for an aligned CelebA image, else the largest centred square); aligned: the
    # fixed aligned box (Preprocessing.crop == "aligned")
    faces: tuple[Face, ...]  # every face that passed the detector, most confident first
    pixels: np.ndarray  # (S, S, 3) uint8 RGB, the model input before normalisation

    @property
    def detected(self) -> bool:
        return self.source == "detected"


class FaceCropper:
    """The face pipeline of one `Preprocessing`; loaded once, safe to share between threads."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        check_detection(preprocessing.detection)
        self.preprocessing = preprocessing
        self.detection = preprocessing.detection
        path = Path(cv2.data.haarcascades) / self.detection.cascade  # type: ignore[attr-defined]  # not in the stubs
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(f"could not load the face cascade {path}")
        # One classifier used from several threads at once returns wrong boxes (31 of 40 concurrent calls,
        # measured). A call already spreads over all cores, so serialising calls costs no throughput: on
        # 2 cores, 16 photos from 4 threads took the same time (1.0 s) as with a classifier per thread.
        self._lock = threading.Lock()

    def crop(self, image: Image.Image, face_box: CropBox | None = None) -> FaceCrop:
        """The model input for `image`: around `face_box` when given (a face box in the photo's pixels, as a
        detector reports it), else around the most confident detected face, else the fallback framing."""
        rgb = to_rgb(image)
        faces: tuple[Face, ...] = ()
        source: CropSource
        if self.preprocessing.crop == "aligned":
            box, source = self.preprocessing.aligned_box_for(*rgb.size), "aligned"
        elif face_box is not None:
            box, source = face_box.scaled(self.detection.box_scale), "client"
        else:
            faces = tuple(self.detect(rgb))
            if faces:
                box, source = faces[0].box.scaled(self.detection.box_scale), "detected"
            else:
                box, source = self._fallback_box(*rgb.size), "fallback"
        return FaceCrop(box, source, faces, crop_face(rgb, box, self.preprocessing.image_size))

    def crop_every_face(
        self, image: Image.Image, limit: int, face_box: CropBox | None = None
    ) -> tuple[FaceCrop, list[np.ndarray]]:
        """`crop`, and the model inputs of the next most confident faces (framed as `crop` frames the first),
        `limit` faces in all."""
        rgb = to_rgb(image)  # once, for the crop and the others alike
        face = self.crop(rgb, face_box)
        others = face.faces[1:limit] if face.detected else ()
        size = self.preprocessing.image_size
        return face, [crop_face(rgb, other.box.scaled(self.detection.box_scale), size) for other in others]

    def detect(self, image: Image.Image) -> list[Face]:
        """The faces in `image` that pass the detector, most confident first."""
        rgb = to_rgb(image)
        d = self.detection
        for steps in (d.scale_factor, d.refine_scale_factor):
            refined = (self._refine(rgb, box) for box in self._coarse(rgb, steps))
            faces = [face for face in refined if face is not None and face.confidence >= d.min_confidence]
            if faces:
                return _distinct(faces)
        return []

    def _coarse(self, rgb: Image.Image, scale_factor: float) -> list[CropBox]:
        width, height = rgb.size
        smallest = self.detection.min_face * min(width, height)
        # Never upsampled: a photo smaller than that is searched at its own size.
        scale = min(1.0, self.detection.search_window / smallest)
        grey = _grey(rgb, scale)
        min_size = max(_window(self._cascade), round(smallest * grey.shape[0] / height))
        if min_size > min(grey.shape):
            return []
        with self._lock:
            boxes, _, weights = self._cascade.detectMultiScale3(
                grey,
                scaleFactor=scale_factor,
                minNeighbors=self.detection.min_neighbors,
                minSize=(min_size, min_size),
                outputRejectLevels=True,
            )
        sx, sy = width / grey.shape[1], height / grey.shape[0]
        ranked = sorted(zip(np.ravel(weights).tolist(), np.asarray(boxes).reshape(-1, 4).tolist()), reverse=True)
        return [
            CropBox(left=x * sx, top=y * sy, width=w * sx, height=h * sy)
            for _, (x, y, w, h) in ranked[:_MAX_CANDIDATES]
        ]

    def _refine(self, rgb: Image.Image, candidate: CropBox) -> Face | None:
        d = self.detection
        region = candidate.scaled(_REFINE_REGION)
        side = round(d.refine_size * _REFINE_REGION)
        grey, (left, top, scale) = _grey_region(rgb, region, side)
        smallest, largest = round(d.refine_size / _REFINE_RANGE), round(d.refine_size * _REFINE_RANGE)
        with self._lock:
            boxes, _, weights = self._cascade.detectMultiScale3(
                grey,
                scaleFactor=d.refine_scale_factor,
                minNeighbors=d.min_neighbors,
                minSize=(smallest, smallest),
                maxSize=(largest, largest),
                outputRejectLevels=True,
            )
        if len(boxes) == 0:
            return None
        best = int(np.argmax(np.ravel(weights)))
        x, y, w, h = (float(v) for v in np.asarray(boxes).reshape(-1, 4)[best])
        box = CropBox(left=left + x / scale, top=top + y / scale, width=w / scale, height=h / scale)
        return Face(box, float(np.ravel(weights)[best]))

    def _fallback_box(self, width: int, height: int) -> CropBox:
        # An image shaped like img_align_celeba is most likely one (2.0% of the subset has no face that passes):
        # crop it as the detector frames CelebA faces. Anything else: the largest centred square, the least-wrong
        # guess for a photo whose subject is in the middle.
        if abs(height / width / _ALIGNED_ASPECT - 1) <= _ALIGNED_ASPECT_TOLERANCE:
            return self.preprocessing.aligned_box_for(width, height)
        side = min(width, height)
        return CropBox(left=(width - side) / 2, top=(height - side) / 2, width=side, height=side)


def check_detection(detection: FaceDetection) -> None:
    """ValueError naming the difference if this module cannot find faces the way `detection` says."""
    if detection.detector != DETECTOR:
        raise ValueError(f"faces were found by {detection.detector!r}; this version finds them by {DETECTOR!r}")
    if detection.cascade not in FRONTAL_CASCADES:
        raise ValueError(f"unknown face cascade {detection.cascade!r}; expected one of {sorted(FRONTAL_CASCADES)}")


def _window(cascade: cv2.CascadeClassifier) -> int:
    return int(max(cascade.getOriginalWindowSize()))


def _grey(rgb: Image.Image, scale: float) -> np.ndarray:
    """`rgb` as 8-bit grey resampled by `scale` (area averaging): an integer box reduction first, which is several
    times cheaper than OpenCV's area resize on a large photo, then an exact area resize to the target size."""
    width, height = rgb.size
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    factor = int(1 / scale) if scale < 1 else 1
    reduced = rgb.reduce(factor) if factor >= 2 else rgb
    grey = cv2.cvtColor(np.asarray(reduced), cv2.COLOR_RGB2GRAY)
    if grey.shape[::-1] == size:
        return grey
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def _grey_region(rgb: Image.Image, region: CropBox, side: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """`region` of `rgb` resampled to side x side grey, edges repeated where it extends past the image; with the
    region's integer left, top and the scale from photo to region pixels."""
    width, height = rgb.size
    left, top = round(region.left), round(region.top)
    extent = max(1, round(region.width))
    scale = side / extent
    x0, y0 = min(max(left, 0), width - 1), min(max(top, 0), height - 1)
    x1, y1 = max(min(left + extent, width), x0 + 1), max(min(top + extent, height), y0 + 1)
    inside = cv2.cvtColor(np.asarray(rgb.crop((x0, y0, x1, y1))), cv2.COLOR_RGB2GRAY)
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    inside = cv2.resize(inside, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    pad_left, pad_top = round((x0 - left) * scale), round((y0 - top) * scale)
    pad_right, pad_bottom = max(0, side - pad_left - size[0]), max(0, side - pad_top - size[1])
    grey = cv2.copyMakeBorder(inside, pad_top, pad_bottom, pad_left, pad_right, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(grey[:side, :side]), (float(left), float(top), scale)


def _distinct(faces: list[Face]) -> list[Face]:
    """One face per place, most confident first: two candidates refined onto the same face keep the more
    confident."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: -f.confidence):
        if all(face.box.iou(other.box) < 0.5 for other in kept):
            kept.append(face)
    return kept
