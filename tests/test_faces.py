import io
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image, ImageFilter

from jmvae.model.faces import FaceCropper
from jmvae.model.preprocess import ALIGNED_IMAGE_SIZE, CropBox, FaceDetection, Preprocessing, crop_face
from jmvae.service.images import decode_upload

PREPROCESSING = Preprocessing()


@pytest.fixture(scope="module")
def cropper() -> FaceCropper:
    return FaceCropper(PREPROCESSING)


@pytest.fixture(scope="module")
def portrait() -> Image.Image:
    """Grace Hopper's official US Navy portrait (public domain), 512x600, bundled in matplotlib's wheel."""
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def portrait_box(cropper: FaceCropper, portrait: Image.Image) -> CropBox:
    """The portrait's crop: its face grown x1.3."""
    crop = cropper.crop(portrait)
    assert crop.detected
    return crop.box


def _iou(a: CropBox, b: CropBox) -> float:
    w = max(0.0, min(a.right, b.right) - max(a.left, b.left))
    h = max(0.0, min(a.bottom, b.bottom) - max(a.top, b.top))
    return w * h / (a.width * a.height + b.width * b.height - w * h)


def _coarse_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean abs difference at 16x16: a few pixels of framing jitter (cascade boxes come in 10% size steps)
    moves fine texture such as hair and flag stars, but not the face's layout."""

    def coarse(pixels: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(pixels).resize((16, 16), Image.Resampling.BOX), dtype=float)

    return float(np.abs(coarse(a) - coarse(b)).mean())


def _scene(width: int, height: int, face: Image.Image, face_width: int, at: tuple[int, int]) -> Image.Image:
    """The portrait shrunk to face_width and pasted on a smooth grey-blue gradient."""
    ramp = np.linspace(90, 170, width, dtype=np.float32)
    background = np.stack([np.broadcast_to(ramp * f, (height, width)) for f in (0.8, 0.9, 1.0)], axis=-1)
    scene = Image.fromarray(background.astype(np.uint8))
    face_height = round(face_width * face.height / face.width)
    scene.paste(face.resize((face_width, face_height), Image.Resampling.LANCZOS), at)
    return scene


def test_a_face_is_its_refined_detection_grown_about_its_centre(cropper: FaceCropper, portrait: Image.Image) -> None:
    faces = cropper.detect(portrait)
    assert len(faces) == 1 and faces[0].confidence >= PREPROCESSING.detection.min_confidence
    crop = cropper.crop(portrait)
    assert crop.detected and crop.source == "detected" and crop.faces == tuple(faces)
    assert crop.box == faces[0].box.scaled(PREPROCESSING.detection.box_scale)
    # The face is Grace Hopper's: centred, in the upper half, about half the photo wide once grown.
    box = crop.box
    assert 200 < box.left + box.width / 2 < 310 and 150 < box.top + box.height / 2 < 280
    assert 0.4 < box.width / portrait.width < 0.7


def _two_faces(portrait: Image.Image, degrade: str) -> Image.Image:
    """The portrait small and clear on the left, and larger but degraded on the right."""
    scene = Image.new("RGB", (1000, 700), (128, 128, 128))
    scene.paste(portrait.resize((300, 352), Image.Resampling.LANCZOS), (20, 300))
    weak = portrait.resize((420, 492), Image.Resampling.LANCZOS)
    weak = (
        weak.rotate(15, fillcolor=(128, 128, 128)) if degrade == "tilted" else weak.filter(ImageFilter.GaussianBlur(9))
    )
    scene.paste(weak, (520, 60))
    return scene


@pytest.mark.parametrize("degrade", ["tilted", "blurred"])
def test_the_most_confident_face_is_answered_for_not_the_largest(
    cropper: FaceCropper, portrait: Image.Image, degrade: str
) -> None:
    crop = cropper.crop(_two_faces(portrait, degrade))
    assert crop.detected and len(crop.faces) == 2
    strong, weak = crop.faces
    assert strong.confidence > weak.confidence
    assert strong.box.right < 400 < weak.box.left and weak.box.width > strong.box.width
    assert crop.box == strong.box.scaled(PREPROCESSING.detection.box_scale)


def test_faces_below_the_confidence_threshold_are_dropped(portrait: Image.Image) -> None:
    scene = _two_faces(portrait, "tilted")
    weak = FaceCropper(PREPROCESSING).detect(scene)[1].confidence
    strict = FaceCropper(PREPROCESSING.model_copy(update={"detection": FaceDetection(min_confidence=weak + 0.01)}))
    faces = strict.detect(scene)
    assert len(faces) == 1 and faces[0].box.right < 400
    # ... and with every face below it, the photo has none: the fallback framing, not a weak guess.
    none = FaceCropper(PREPROCESSING.model_copy(update={"detection": FaceDetection(min_confidence=1e6)}))
    crop = none.crop(scene)
    assert not crop.detected and crop.source == "fallback" and crop.faces == ()


def test_a_client_box_is_framed_as_a_detection(cropper: FaceCropper, portrait: Image.Image) -> None:
    face = cropper.detect(portrait)[0].box
    crop = cropper.crop(portrait, face)
    assert crop.source == "client" and not crop.detected and crop.faces == ()
    assert crop.box == face.scaled(PREPROCESSING.detection.box_scale)
    np.testing.assert_array_equal(crop.pixels, cropper.crop(portrait).pixels)


class _SpyCascade:
    def __init__(self, cascade: cv2.CascadeClassifier) -> None:
        self.cascade, self.shapes, self.steps = cascade, [], []

    def detectMultiScale3(self, grey: np.ndarray, **options: object) -> object:  # noqa: N802 (OpenCV's name)
        self.shapes.append(grey.shape)
        self.steps.append(options["scaleFactor"])
        return self.cascade.detectMultiScale3(grey, **options)

    def getOriginalWindowSize(self) -> tuple[int, int]:  # noqa: N802
        return self.cascade.getOriginalWindowSize()


@pytest.mark.parametrize(
    ("size", "searched"), [((4000, 3000), (192, 256)), ((700, 1000), (274, 192)), ((200, 160), (160, 200))]
)
def test_photos_are_searched_at_the_resolution_their_smallest_face_needs(
    portrait: Image.Image, portrait_box: CropBox, size: tuple[int, int], searched: tuple[int, int]
) -> None:
    # The smallest face worth answering for is 1/8 of the shorter side; it is searched for at the cascade's own
    # search_window (24 px, so the shorter side is searched at 192 px), whatever the photo's size; a smaller photo
    # at its own size.
    cropper = FaceCropper(PREPROCESSING)
    spy = _SpyCascade(cropper._cascade)
    cropper._cascade = spy
    face_width = min(size) // 2
    faces = cropper.detect(_scene(*size, portrait, face_width, (10, 10)))
    assert spy.shapes[0] == searched
    expected_width = portrait_box.width * face_width / portrait.width
    # Mapped back to full size (a face of 40 px, as in the smallest photo, is boxed to within 15%).
    assert faces and abs(faces[0].box.scaled(1.3).width / expected_width - 1) < 0.15
    # Each candidate is then searched again with the face at refine_size in a region 1.75 times its box.
    assert all(shape == (168, 168) for shape in spy.shapes[1:]) and len(spy.shapes) >= 2


def test_a_photo_without_a_coarse_hit_is_searched_once_more_in_finer_steps() -> None:
    cropper = FaceCropper(PREPROCESSING)
    spy = _SpyCascade(cropper._cascade)
    cropper._cascade = spy
    flat = Image.new("RGB", (2000, 1500), (90, 90, 90))
    assert cropper.detect(flat) == []
    assert spy.shapes == [(192, 256), (192, 256)]
    assert spy.steps == [PREPROCESSING.detection.scale_factor, PREPROCESSING.detection.refine_scale_factor]


def test_aligned_celeba_like_image_is_cropped_as_training_crops(
    cropper: FaceCropper, portrait: Image.Image, portrait_box: CropBox
) -> None:
    # Rescale and crop the portrait so that its grown detection lands on the aligned box of a 178x218
    # image: what an img_align_celeba image is, by the measurement behind `aligned_box`.
    aligned_box = PREPROCESSING.aligned_box
    k = aligned_box.width / portrait_box.width
    pad = 200  # the region reaches past the photo's top: extend it by its edge pixels
    padded = Image.fromarray(np.pad(np.asarray(portrait), ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    left, top = portrait_box.left - aligned_box.left / k + pad, portrait_box.top - aligned_box.top / k + pad
    width, height = ALIGNED_IMAGE_SIZE
    region = (left, top, left + width / k, top + height / k)
    aligned = padded.resize((width, height), Image.Resampling.LANCZOS, box=region)

    crop = cropper.crop(aligned)
    training = crop_face(aligned, aligned_box, PREPROCESSING.image_size)
    assert crop.detected
    assert _iou(crop.box, aligned_box) > 0.8
    assert crop.pixels.shape == (64, 64, 3) and crop.pixels.dtype == np.uint8
    assert _coarse_difference(crop.pixels, training) < 20
    # ... where a framing that ignores the face would not be close.
    centre = crop_face(aligned, CropBox(left=0, top=20, width=178, height=178), PREPROCESSING.image_size)
    assert _coarse_difference(centre, training) > 2 * _coarse_difference(crop.pixels, training)


@pytest.mark.parametrize(
    ("size", "face_width", "at"),
    [
        ((640, 480), 220, (380, 150)),
        ((640, 480), 300, (10, 90)),
        ((1200, 900), 400, (700, 300)),
        ((4000, 3000), 1500, (2100, 700)),  # searched at 640x480, the box mapped back
        ((3000, 4000), 1300, (300, 2300)),
    ],
)
def test_framing_does_not_depend_on_where_the_face_is(
    cropper: FaceCropper,
    portrait: Image.Image,
    portrait_box: CropBox,
    size: tuple[int, int],
    face_width: int,
    at: tuple[int, int],
) -> None:
    scene = _scene(*size, portrait, face_width, at)
    crop = cropper.crop(scene)
    s = face_width / portrait.width
    expected = CropBox(
        left=at[0] + portrait_box.left * s,
        top=at[1] + portrait_box.top * s,
        width=portrait_box.width * s,
        height=portrait_box.height * s,
    )
    # The cascade's box size jitters by about +-10% with the pixels around a face (on CelebA the grown
    # boxes' p10-p90 side is 121-151 around a median of 135); 15% larger is an IoU of 0.75. A framing that
    # misses the face differs by about 50 at 16x16.
    assert crop.detected
    assert _iou(crop.box, expected) > 0.75
    assert _coarse_difference(crop.pixels, crop_face(portrait, portrait_box, PREPROCESSING.image_size)) < 28


def test_face_in_exif_rotated_upload_is_found_after_decoding(
    cropper: FaceCropper, portrait: Image.Image, portrait_box: CropBox
) -> None:
    stored = portrait.transpose(Image.Transpose.ROTATE_90)  # as a phone held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # display turned 90 degrees clockwise
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    assert cropper.detect(stored) == []  # a frontal-face cascade does not find a face lying on its side
    upright = decode_upload(buffer.getvalue(), max_pixels=10_000_000)
    crop = cropper.crop(upright)
    assert crop.detected and _iou(crop.box, portrait_box) > 0.9


@pytest.mark.parametrize("kind", ["noise", "flat"])
def test_no_face_gives_the_largest_centred_square(cropper: FaceCropper, kind: str) -> None:
    if kind == "noise":
        pixels = np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    else:
        pixels = np.full((200, 300, 3), 120, np.uint8)
    image = Image.fromarray(pixels)
    crop = cropper.crop(image)
    assert not crop.detected
    assert crop.box == CropBox(left=50, top=0, width=200, height=200)
    np.testing.assert_array_equal(crop.pixels, crop_face(image, crop.box, PREPROCESSING.image_size))
    assert cropper.detect(image) == []


@pytest.mark.parametrize("size", [(1, 1), (10_000, 3), (3, 10_000), (30, 20)])
def test_degenerate_images_get_a_centre_crop(cropper: FaceCropper, size: tuple[int, int]) -> None:
    crop = cropper.crop(Image.new("RGB", size, (100, 50, 20)))
    side = min(size)
    assert not crop.detected
    assert crop.box == CropBox(left=(size[0] - side) / 2, top=(size[1] - side) / 2, width=side, height=side)
    assert crop.pixels.shape == (64, 64, 3) and (crop.pixels == (100, 50, 20)).all()


@pytest.mark.parametrize("size", [ALIGNED_IMAGE_SIZE, (356, 436), (89, 109)])
def test_no_face_in_a_celeba_shaped_image_gives_the_aligned_box(cropper: FaceCropper, size: tuple[int, int]) -> None:
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    crop = cropper.crop(image)
    assert not crop.detected
    assert crop.box == PREPROCESSING.aligned_box_for(*size)
    assert crop.pixels.shape == (64, 64, 3)


def test_output_size_and_input_modes_follow_the_preprocessing(portrait: Image.Image, portrait_box: CropBox) -> None:
    small = FaceCropper(Preprocessing(image_size=32))
    crop = small.crop(portrait.convert("L"))
    assert crop.detected and crop.pixels.shape == (32, 32, 3)
    assert _iou(crop.box, portrait_box) > 0.9
    assert (crop.pixels == crop.pixels[..., :1]).all()  # still grey, as RGB


def test_concurrent_use_gives_the_serial_results(cropper: FaceCropper, portrait: Image.Image) -> None:
    scenes = [_scene(640, 480, portrait, 150 + 25 * i, (40 * i, 10 * i)) for i in range(8)]
    serial = [cropper.crop(scene) for scene in scenes]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(cropper.crop, scenes))
    for one, other in zip(serial, parallel, strict=True):
        assert one.detected and other.box == one.box
        np.testing.assert_array_equal(other.pixels, one.pixels)
