"""Finding the face in an uploaded photo and cropping it the way the training faces were cropped.

`Preprocessing.aligned_box` is the median of this very detector's boxes (grown by `detector_box_scale`) on
aligned CelebA images, so a photo cropped around its own detection is framed like the training data wherever
and however large the face is. The detector parameters below are the ones that median was measured with.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import cv2
import numpy as np
from PIL import Image

from jmvae.model.preprocess import ALIGNED_IMAGE_SIZE, CropBox, Preprocessing, crop_face, to_rgb

CASCADE_FILE: Final = "haarcascade_frontalface_default.xml"
SCALE_FACTOR: Final = 1.1
MIN_NEIGHBORS: Final = 5
MIN_SIZE: Final = (40, 40)
# Photos are searched at most this large (longest side): ~10x faster on a 12-megapixel photo, and the cascade
# is scale-invariant, so the box just scales back. The smallest face found is then 1/16 of the longest side.
DETECTION_MAX_SIDE: Final = 640
# What an answer says when `FaceCrop.detected` is False (the service's and the serving benchmark's peers').
NO_FACE_NOTE: Final = "no face found; a centre crop of the image was used"
# An image within 1% of img_align_celeba's aspect ratio is taken for an aligned CelebA face (or a resized copy).
_ALIGNED_ASPECT: Final = ALIGNED_IMAGE_SIZE[1] / ALIGNED_IMAGE_SIZE[0]
_ALIGNED_ASPECT_TOLERANCE: Final = 0.01


@dataclass(frozen=True, eq=False)  # eq=False: comparing the arrays field-wise would raise, not compare
class FaceCrop:
    box: CropBox  # in the source image's pixel coordinates
    detected: bool  # False: no face was found and `box` is the fallback framing
    pixels: np.ndarray  # (S, S, 3) uint8 RGB, the model input before normalisation


class FaceDetector:
    """OpenCV's frontal-face Haar cascade, loaded once; safe to share between threads."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing
        path = Path(cv2.data.haarcascades) / CASCADE_FILE
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(f"could not load the face cascade {path}")
        # One classifier used from several threads at once returns wrong boxes (31 of 40 concurrent calls,
        # measured). A call already spreads over all cores, so serialising calls costs no throughput: on
        # 2 cores, 16 photos from 4 threads took the same time (1.0 s) as with a classifier per thread.
        self._lock = threading.Lock()

    def find(self, image: Image.Image) -> CropBox | None:
        """The largest face's box grown by `detector_box_scale` about its centre, or None if none is found."""
        rgb = to_rgb(image)
        width, height = rgb.size
        longest = max(width, height)
        if longest > DETECTION_MAX_SIDE:
            # A cheap integer box-filter reduction first, then an exact area resize to the search size.
            reduced = rgb.reduce(longest // DETECTION_MAX_SIDE)
            factor = DETECTION_MAX_SIDE / longest
            size = (max(1, round(width * factor)), max(1, round(height * factor)))  # a 10000x3 strip keeps a row
            grey = cv2.resize(cv2.cvtColor(np.asarray(reduced), cv2.COLOR_RGB2GRAY), size,
                              interpolation=cv2.INTER_AREA)
        else:
            grey = cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2GRAY)
        with self._lock:
            faces = self._cascade.detectMultiScale(grey, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS,
                                                   minSize=MIN_SIZE)
        if len(faces) == 0:
            return None
        x, y, w, h = (float(v) for v in max(faces, key=lambda face: int(face[2]) * int(face[3])))
        sx, sy = width / grey.shape[1], height / grey.shape[0]
        box = CropBox(left=x * sx, top=y * sy, width=w * sx, height=h * sy)
        return box.scaled(self.preprocessing.detector_box_scale)

    def crop(self, image: Image.Image) -> FaceCrop:
        """The model input for `image`: its face cropped as training crops were, or the fallback framing."""
        rgb = to_rgb(image)
        box = self.find(rgb)
        detected = box is not None
        if box is None:
            box = self._fallback_box(*rgb.size)
        return FaceCrop(box=box, detected=detected, pixels=crop_face(rgb, box, self.preprocessing.image_size))

    def _fallback_box(self, width: int, height: int) -> CropBox:
        # An image shaped like img_align_celeba is most likely one (the cascade misses ~4% of CelebA): crop it
        # exactly as training did. Anything else: the largest centred square, the least-wrong guess for a
        # photo whose subject is in the middle.
        if abs(height / width / _ALIGNED_ASPECT - 1) <= _ALIGNED_ASPECT_TOLERANCE:
            return self.preprocessing.aligned_box_for(width, height)
        side = min(width, height)
        return CropBox(left=(width - side) / 2, top=(height - side) / 2, width=side, height=side)
