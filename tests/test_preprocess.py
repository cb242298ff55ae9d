import io

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from jmvae.model.preprocess import (
    ALIGNED_IMAGE_SIZE,
    CropBox,
    Preprocessing,
    crop_face,
    denormalise,
    normalise,
    open_image,
    to_rgb,
)


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_scaled_keeps_centre_and_scales_size() -> None:
    box = CropBox(left=10, top=20, width=100, height=50)
    grown = box.scaled(1.3)
    assert grown.width == pytest.approx(130) and grown.height == pytest.approx(65)
    assert grown.left + grown.width / 2 == pytest.approx(60)
    assert grown.top + grown.height / 2 == pytest.approx(45)
    assert box.scaled(0.5).scaled(2.0).model_dump() == pytest.approx(box.model_dump())
    with pytest.raises(ValueError):
        box.scaled(0)


def test_crop_box_is_validated_and_frozen() -> None:
    with pytest.raises(ValidationError):
        CropBox(left=0, top=0, width=0, height=10)
    with pytest.raises(ValidationError):
        CropBox(left=float("nan"), top=0, width=1, height=1)
    box = CropBox(left=0, top=0, width=1, height=1)
    with pytest.raises(ValidationError):
        box.left = 5


def test_preprocessing_defaults_round_trip_and_scale() -> None:
    p = Preprocessing()
    box = p.aligned_box
    assert p.image_size == 64 and p.detection.box_scale == 1.3 and p.normalisation == "unit"
    assert p.crop == "detector"  # training crops as the service does, by default
    assert box.width == box.height
    assert 0 <= box.left and box.right <= ALIGNED_IMAGE_SIZE[0] and 0 <= box.top and box.bottom <= ALIGNED_IMAGE_SIZE[1]
    assert Preprocessing.model_validate_json(p.model_dump_json()) == p
    assert p.aligned_box_for(*ALIGNED_IMAGE_SIZE) == box
    half = p.aligned_box_for(89, 109)
    assert half.model_dump() == pytest.approx({k: v / 2 for k, v in box.model_dump().items()})
    stretched = p.aligned_box_for(356, 218)
    assert stretched.width == pytest.approx(2 * box.width) and stretched.height == pytest.approx(box.height)


def test_preprocessing_of_older_checkpoints_reads_as_the_aligned_crop() -> None:
    # jmvae 0.1 cropped every training image with the fixed box and recorded the detector's box scale alone.
    legacy = {
        "image_size": 64,
        "aligned_box": {"left": 21.4, "top": 55.85, "width": 135.2, "height": 135.2},
        "detector_box_scale": 1.3,
        "normalisation": "unit",
    }
    p = Preprocessing.model_validate(legacy)
    assert p.crop == "aligned" and p.aligned_box.left == 21.4
    assert Preprocessing.model_validate_json(p.model_dump_json()) == p


def test_crop_inside_matches_pil_one_step_resize() -> None:
    image = _noise_image(178, 218)
    box = CropBox(left=30.5, top=50.25, width=110, height=110)
    out = crop_face(image, box, 32)
    expected = np.asarray(image.resize((32, 32), Image.Resampling.LANCZOS, box=(30.5, 50.25, 140.5, 160.25)))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_crop_past_the_edge_pads_by_repeating_edge_pixels() -> None:
    image = _noise_image(60, 50, seed=1)
    box = CropBox(left=-25.5, top=30, width=70, height=70)  # past the left and bottom edges
    pad = 80
    padded = Image.fromarray(np.pad(np.asarray(image), ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    shifted = CropBox(left=box.left + pad, top=box.top + pad, width=box.width, height=box.height)
    np.testing.assert_array_equal(crop_face(image, box, 24), crop_face(padded, shifted, 24))


def test_crop_wholly_outside_never_fails() -> None:
    pixels = np.zeros((40, 40, 3), np.uint8)
    pixels[:, -1] = (200, 10, 30)  # right edge column
    out = crop_face(Image.fromarray(pixels), CropBox(left=500, top=5, width=20, height=20), 8)
    assert (out == (200, 10, 30)).all()
    assert crop_face(Image.fromarray(pixels), CropBox(left=-1e4, top=-1e4, width=3, height=3), 8).shape == (8, 8, 3)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("L", (8, 8), 77), (77, 77, 77)),
        (Image.new("1", (8, 8), 1), (255, 255, 255)),
        (Image.new("RGBA", (8, 8), (10, 20, 30, 0)), (255, 255, 255)),  # fully transparent: white background
        (Image.new("RGBA", (8, 8), (10, 20, 30, 255)), (10, 20, 30)),
        (Image.new("LA", (8, 8), (50, 0)), (255, 255, 255)),
        (Image.new("CMYK", (8, 8), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.fromarray(np.full((8, 8), 65535, np.uint16)), (255, 255, 255)),  # I;16: scaled, not clipped
        (Image.fromarray(np.full((8, 8), 32896, np.uint16)), (128, 128, 128)),
    ],
    ids=["L", "1", "RGBA-clear", "RGBA-opaque", "LA", "CMYK", "I16-max", "I16-mid"],
)
def test_to_rgb_and_crop_on_other_modes(image: Image.Image, expected: tuple[int, int, int]) -> None:
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((3, 3)) == expected
    out = crop_face(image, CropBox(left=1, top=1, width=6, height=6), 4)
    assert out.shape == (4, 4, 3) and (out == expected).all()


def test_to_rgb_palette_with_transparency() -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 9, 99, 199] + [0] * 762)
    assert to_rgb(image).getpixel((0, 0)) == (9, 99, 199)
    image.info["transparency"] = 1
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_open_image_applies_exif_orientation() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    buffer.seek(0)
    opened = open_image(buffer)
    assert opened.mode == "RGB" and opened.size == (20, 40)


def test_normalise_shapes_range_and_channel_order() -> None:
    pixels = torch.zeros((2, 5, 5, 3), dtype=torch.uint8)
    pixels[..., 0] = 255
    x = normalise(pixels)
    assert x.shape == (2, 3, 5, 5) and x.dtype == torch.float32 and x.is_contiguous()
    assert (x[:, 0] == 1).all() and (x[:, 1:] == 0).all()
    assert normalise(pixels[0]).shape == (3, 5, 5)
    assert normalise(torch.empty((1, 4, 4, 3), dtype=torch.uint8, device="meta")).device.type == "meta"
    with pytest.raises(TypeError):
        normalise(pixels.float())
    with pytest.raises(ValueError):
        normalise(pixels[..., :2])


def test_denormalise_inverts_normalise_and_clips() -> None:
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(2, 16, 16, 3).contiguous()
    assert torch.equal(denormalise(normalise(pixels)), pixels)
    x = torch.tensor([-0.5, 0.6 / 255, 1.4 / 255, 1.7, float("nan")]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = denormalise(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 1, 5, 3)
    assert out[0, 0, :, 0].tolist() == [0, 1, 1, 255, 0]
    with pytest.raises(TypeError):
        denormalise(pixels)
