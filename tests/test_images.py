import io
import struct
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from image_builders import (
    animated,
    black_png,
    encode,
    exif_rotated_jpeg,
    jpeg_claiming,
    noise,
    png_chunk,
    webp_claiming,
    webp_with_alpha,
)
from PIL import Image, ImageFile, JpegImagePlugin, WebPImagePlugin

from jmvae.service.images import ALLOWED_FORMATS, ImageRejected, _webp_canvas_size, decode_upload

MAX_PIXELS = 4_000_000


def _reject(data: bytes, max_pixels: int = MAX_PIXELS, max_bytes: int | None = None) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        decode_upload(data, max_pixels, max_bytes)
    assert "\n" not in caught.value.message and str(caught.value) == caught.value.message
    return caught.value


@pytest.fixture
def no_pixel_allocation(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails the test if any image's pixel memory is allocated (ImageFile.load_prepare creates it)."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"pixel memory for a {self.size} image was allocated")

    monkeypatch.setattr(ImageFile.ImageFile, "load_prepare", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning must not escape either
        yield


def test_of_every_format_pillow_writes_only_jpeg_png_and_webp_are_decoded() -> None:
    """What ALLOWED_FORMATS promises, checked on files: each format this Pillow can write from an RGB picture is
    decoded if it is one of the three (MPO is a JPEG with more pictures appended), refused with 415 otherwise."""
    Image.init()
    accepted, refused = set(), set()
    for fmt in sorted(Image.SAVE):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # IM, on its way out of Pillow
                data = encode(noise(32, 24), fmt)
        except Exception:  # a format Pillow cannot write from this picture here (XBM is 1-bit; BLP, WMF, ...)
            continue
        try:
            decode_upload(data, MAX_PIXELS)
        except ImageRejected as refusal:
            assert refusal.status == 415, (fmt, refusal.message)
            refused.add(fmt)
        else:
            accepted.add(fmt)
    assert accepted == ALLOWED_FORMATS | {"MPO"} == {"JPEG", "PNG", "WEBP", "MPO"}, accepted
    assert {"GIF", "BMP", "TIFF", "ICO", "PPM", "QOI"} <= refused, refused  # the test saw other formats


def test_empty_upload_is_refused() -> None:
    err = _reject(b"")
    assert err.status == 422 and "empty" in err.message


@pytest.mark.parametrize("data", [b"hello, this is not an image\n", bytes(range(256)) * 4, b"\x89PN"])
def test_non_images_are_unsupported(data: bytes) -> None:
    err = _reject(data)
    assert err.status == 415
    assert "not a recognised image" in err.message and "JPEG, PNG or WebP" in err.message


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_refused_by_name(fmt: str) -> None:
    err = _reject(encode(noise(32, 24), fmt))
    assert err.status == 415
    assert err.message.startswith(f"{fmt} images are not accepted") and "JPEG, PNG or WebP" in err.message


def test_upload_over_max_bytes_is_too_large() -> None:
    data = encode(noise(32, 24), "PNG")
    assert decode_upload(data, MAX_PIXELS, max_bytes=len(data)).size == (32, 24)
    err = _reject(data, max_bytes=len(data) - 1)
    assert err.status == 413 and f"{len(data):,} bytes" in err.message


def test_hand_written_png_is_valid() -> None:
    """The bomb below is built by this writer; a small one must decode to black."""
    image = decode_upload(black_png(67, 45), MAX_PIXELS)
    assert image.size == (67, 45) and image.mode == "RGB"
    assert not np.asarray(image).any()


# 10000^2 lies between PIL's warning and error thresholds, 20000^2 past both; neither may leak from PIL.
@pytest.mark.parametrize("side", [10_000, 20_000])
def test_png_bomb_is_refused_from_its_header(side: int, no_pixel_allocation: None) -> None:
    data = black_png(side, side)
    assert len(data) < 100_000  # a tiny upload ...
    err = _reject(data, max_bytes=1_000_000)  # ... well under the byte limit
    assert err.status == 413
    assert f"{side}x{side}" in err.message and f"{MAX_PIXELS:,} pixels" in err.message


def test_pixel_limit_is_inclusive() -> None:
    data = encode(noise(40, 25), "PNG")
    assert decode_upload(data, max_pixels=1000).size == (40, 25)
    assert _reject(data, max_pixels=999).status == 413


def test_jpeg_with_huge_declared_size_is_refused_before_decoding(no_pixel_allocation: None) -> None:
    err = _reject(jpeg_claiming(60_000, 60_000))
    assert err.status == 413 and "60000x60000" in err.message


def _webp_variants() -> dict[str, bytes]:
    return {
        "VP8L": encode(noise(37, 23), "WEBP", lossless=True),
        "VP8 ": encode(noise(37, 23), "WEBP", quality=80),
        "VP8X": webp_with_alpha(),
    }


@pytest.mark.parametrize("chunk", ["VP8L", "VP8 ", "VP8X"])
def test_webp_header_size_matches_pil(chunk: str) -> None:
    data = _webp_variants()[chunk]
    assert data[12:16] == chunk.encode()
    assert _webp_canvas_size(data) == (37, 23)
    assert decode_upload(data, MAX_PIXELS).size == (37, 23)


def test_webp_bomb_is_refused_before_the_parser_allocates_its_canvas(
    monkeypatch: pytest.MonkeyPatch, no_pixel_allocation: None
) -> None:
    def refuse(self: WebPImagePlugin.WebPImageFile) -> None:
        raise AssertionError("the WebP parser ran")

    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "_open", refuse)
    err = _reject(webp_claiming(16_383, 16_383))
    assert err.status == 413 and "16383x16383" in err.message


def test_truncated_jpeg_is_refused_not_half_decoded() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = encode(noise(64, 48), "JPEG", quality=90)
    err = _reject(data[: len(data) // 2])
    assert err.status == 422 and "JPEG" in err.message and "truncated" in err.message


def test_truncated_images_setting_is_a_server_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_upload(encode(noise(8, 8), "PNG"), MAX_PIXELS)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_images_are_refused(fmt: str) -> None:
    err = _reject(animated(fmt))
    assert err.status == 422 and "animated" in err.message and "2 frames" in err.message


def test_multi_picture_jpeg_decodes_its_primary_picture() -> None:
    """Phones write MPO (a JPEG with depth maps or gain maps appended): not an animation."""
    first, second = Image.new("RGB", (30, 20), (255, 0, 0)), Image.new("RGB", (30, 20), (0, 0, 255))
    data = encode(first, "MPO", save_all=True, append_images=[second])
    with Image.open(io.BytesIO(data)) as check:
        assert check.format == "MPO" and check.n_frames == 2
    image = decode_upload(data, MAX_PIXELS)
    assert image.size == (30, 20)
    np.testing.assert_allclose(np.asarray(image).mean(axis=(0, 1)), (255, 0, 0), atol=6)


def _idat_payload_span(data: bytes) -> tuple[int, int]:
    start = data.index(b"IDAT") + 4
    return start, start + struct.unpack(">I", data[start - 8 : start - 4])[0]


@pytest.mark.parametrize("compress_level", [0, 6])
def test_png_with_a_bit_flipped_mid_file_is_refused(compress_level: int) -> None:
    """Level 0 stores the rows uncompressed: only the zlib checksum can notice the flip."""
    data = bytearray(encode(noise(64, 48), "PNG", compress_level=compress_level))
    start, end = _idat_payload_span(bytes(data))
    data[(start + end) // 2] ^= 0x10
    err = _reject(bytes(data))
    assert err.status == 422 and "PNG" in err.message


def test_png_with_bad_zlib_stream_and_fixed_crc_is_refused() -> None:
    """Corruption that the CRC does not catch (recomputed) must still fail in the decompressor."""
    data = encode(noise(64, 48), "PNG")
    start, end = _idat_payload_span(data)
    junk = bytes((i * 37 + 11) % 256 for i in range(end - start))  # not a zlib stream
    rebuilt = data[: start - 8] + png_chunk(b"IDAT", junk) + data[end + 4 :]
    err = _reject(rebuilt)
    assert err.status == 422 and "PNG" in err.message


def test_png_with_bad_header_crc_or_cut_short_is_refused() -> None:
    data = encode(noise(64, 48), "PNG")
    bad_crc = bytearray(data)
    bad_crc[29] ^= 0xFF  # last byte of IHDR's CRC
    for broken in (bytes(bad_crc), data[: len(data) // 2], data[:20]):
        err = _reject(broken)
        assert err.status == 422 and "PNG" in err.message


def test_unexpected_decoder_errors_become_422(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: JpegImagePlugin.JpegImageFile) -> None:
        raise MemoryError("decoder ran out of memory")

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", explode)
    err = _reject(encode(noise(16, 16), "JPEG"))
    assert err.status == 422 and "MemoryError" in err.message


def test_rgb_png_and_lossless_webp_decode_exactly() -> None:
    image = noise(33, 21)
    for fmt, options in (("PNG", {}), ("WEBP", {"lossless": True})):
        decoded = decode_upload(encode(image, fmt, **options), MAX_PIXELS)
        assert decoded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    cmyk = Image.new("CMYK", (24, 16), (0, 255, 255, 0))  # full magenta + yellow: red
    data = encode(cmyk, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "CMYK"
    decoded = decode_upload(data, MAX_PIXELS)
    assert decoded.mode == "RGB"
    np.testing.assert_allclose(np.asarray(decoded, dtype=float), np.broadcast_to((255, 0, 0), (16, 24, 3)), atol=8)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I;16")
    decoded = np.asarray(decode_upload(data, MAX_PIXELS))
    np.testing.assert_array_equal(decoded[0, :, 0], [0, 100, 255])
    assert (decoded == decoded[..., :1]).all()


def test_palette_png_with_transparency_is_composited_on_white() -> None:
    palette = Image.new("P", (4, 2))
    palette.putpalette([0, 0, 0, 200, 30, 40] + [0] * (254 * 3))
    palette.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    data = encode(palette, "PNG", transparency=0)
    decoded = np.asarray(decode_upload(data, MAX_PIXELS))
    expected = np.where(np.array([0, 1, 0, 1, 1, 0, 1, 0]).reshape(2, 4, 1) == 0, 255, [200, 30, 40])
    np.testing.assert_array_equal(decoded, expected)


def test_greyscale_and_alpha_images_decode() -> None:
    grey = Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8))

    def decoded_png(image: Image.Image) -> np.ndarray:
        return np.asarray(decode_upload(encode(image, "PNG"), MAX_PIXELS))

    np.testing.assert_array_equal(decoded_png(grey)[0, :, 1], [0, 128, 255])
    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(10, 20, 30, 255), (10, 20, 30, 0)])  # opaque, then fully transparent
    la = Image.new("LA", (2, 1))
    la.putdata([(50, 255), (50, 0)])
    np.testing.assert_array_equal(decoded_png(rgba)[0], [[10, 20, 30], [255] * 3])
    np.testing.assert_array_equal(decoded_png(la)[0], [[50] * 3, [255] * 3])


def test_exif_orientation_is_applied() -> None:
    # Upright picture 80x40: quadrants red, green (top), blue, white (bottom), stored sideways with orientation 6.
    upright = np.zeros((40, 80, 3), np.uint8)
    upright[:20, :40], upright[:20, 40:] = (255, 0, 0), (0, 255, 0)
    upright[20:, :40], upright[20:, 40:] = (0, 0, 255), (255, 255, 255)
    data = exif_rotated_jpeg(Image.fromarray(upright))
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.size == (40, 80)
    decoded = decode_upload(data, MAX_PIXELS)
    assert decoded.size == (80, 40)
    quadrant_means = [
        np.asarray(decoded, dtype=float)[r : r + 20, c : c + 40][4:-4, 4:-4].mean(axis=(0, 1))
        for r in (0, 20)
        for c in (0, 40)
    ]
    np.testing.assert_allclose(quadrant_means, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)], atol=10)
