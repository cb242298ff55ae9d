import io
import struct
import warnings
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin, WebPImagePlugin

from jmvae.service.images import ALLOWED_FORMATS, ImageRejected, _webp_canvas_size, decode_upload

MAX_PIXELS = 4_000_000


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _reject(data: bytes, max_pixels: int = MAX_PIXELS, max_bytes: int | None = None) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        decode_upload(data, max_pixels, max_bytes)
    assert "\n" not in caught.value.message and str(caught.value) == caught.value.message
    return caught.value


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _black_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of zeros, compressed row by row: the full canvas never exists in memory."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then packed pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.fixture
def no_pixel_allocation(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails the test if any image's pixel memory is allocated (ImageFile.load_prepare creates it)."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"pixel memory for a {self.size} image was allocated")

    monkeypatch.setattr(ImageFile.ImageFile, "load_prepare", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning must not escape either
        yield


def test_allowed_formats() -> None:
    assert ALLOWED_FORMATS == {"JPEG", "PNG", "WEBP"}


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
    err = _reject(_encode(_noise(32, 24), fmt))
    assert err.status == 415
    assert err.message.startswith(f"{fmt} images are not accepted") and "JPEG, PNG or WebP" in err.message


def test_upload_over_max_bytes_is_too_large() -> None:
    data = _encode(_noise(32, 24), "PNG")
    assert decode_upload(data, MAX_PIXELS, max_bytes=len(data)).size == (32, 24)
    err = _reject(data, max_bytes=len(data) - 1)
    assert err.status == 413 and f"{len(data):,} bytes" in err.message


def test_hand_written_png_is_valid() -> None:
    """The bomb below is built by this writer; a small one must decode to black."""
    image = decode_upload(_black_png(67, 45), MAX_PIXELS)
    assert image.size == (67, 45) and image.mode == "RGB"
    assert not np.asarray(image).any()


# 10000^2 lies between PIL's warning and error thresholds, 20000^2 past both; neither may leak from PIL.
@pytest.mark.parametrize("side", [10_000, 20_000])
def test_png_bomb_is_refused_from_its_header(side: int, no_pixel_allocation: None) -> None:
    data = _black_png(side, side)
    assert len(data) < 100_000  # a tiny upload ...
    err = _reject(data, max_bytes=1_000_000)  # ... well under the byte limit
    assert err.status == 413
    assert f"{side}x{side}" in err.message and f"{MAX_PIXELS:,} pixels" in err.message


def test_pixel_limit_is_inclusive() -> None:
    data = _encode(_noise(40, 25), "PNG")
    assert decode_upload(data, max_pixels=1000).size == (40, 25)
    assert _reject(data, max_pixels=999).status == 413


def test_jpeg_with_huge_declared_size_is_refused_before_decoding(no_pixel_allocation: None) -> None:
    data = bytearray(_encode(_noise(32, 24), "JPEG"))
    sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    err = _reject(bytes(data))
    assert err.status == 413 and "60000x60000" in err.message


def _webp_variants() -> dict[str, bytes]:
    rgba = _noise(37, 23).convert("RGBA")
    rgba.putalpha(128)
    return {
        "VP8L": _encode(_noise(37, 23), "WEBP", lossless=True),
        "VP8 ": _encode(_noise(37, 23), "WEBP", quality=80),
        "VP8X": _encode(rgba, "WEBP", quality=80),  # lossy with alpha needs the extended format
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
    data = bytearray(_webp_variants()["VP8X"])
    data[24:30] = (16_383 - 1).to_bytes(3, "little") * 2  # canvas width-1 and height-1
    err = _reject(bytes(data))
    assert err.status == 413 and "16383x16383" in err.message


def test_truncated_jpeg_is_refused_not_half_decoded() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = _encode(_noise(64, 48), "JPEG", quality=90)
    err = _reject(data[: len(data) // 2])
    assert err.status == 422 and "JPEG" in err.message and "truncated" in err.message


def test_truncated_images_setting_is_a_server_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_upload(_encode(_noise(8, 8), "PNG"), MAX_PIXELS)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_images_are_refused(fmt: str) -> None:
    first = _noise(30, 20, seed=1)
    data = _encode(first, fmt, save_all=True, append_images=[_noise(30, 20, seed=2)], duration=100)
    err = _reject(data)
    assert err.status == 422 and "animated" in err.message and "2 frames" in err.message


def test_multi_picture_jpeg_decodes_its_primary_picture() -> None:
    """Phones write MPO (a JPEG with depth maps or gain maps appended): not an animation."""
    first, second = Image.new("RGB", (30, 20), (255, 0, 0)), Image.new("RGB", (30, 20), (0, 0, 255))
    data = _encode(first, "MPO", save_all=True, append_images=[second])
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
    data = bytearray(_encode(_noise(64, 48), "PNG", compress_level=compress_level))
    start, end = _idat_payload_span(bytes(data))
    data[(start + end) // 2] ^= 0x10
    err = _reject(bytes(data))
    assert err.status == 422 and "PNG" in err.message


def test_png_with_bad_zlib_stream_and_fixed_crc_is_refused() -> None:
    """Corruption that the CRC does not catch (recomputed) must still fail in the decompressor."""
    data = _encode(_noise(64, 48), "PNG")
    start, end = _idat_payload_span(data)
    junk = bytes((i * 37 + 11) % 256 for i in range(end - start))  # not a zlib stream
    rebuilt = data[: start - 8] + _png_chunk(b"IDAT", junk) + data[end + 4 :]
    err = _reject(rebuilt)
    assert err.status == 422 and "PNG" in err.message


def test_png_with_bad_header_crc_or_cut_short_is_refused() -> None:
    data = _encode(_noise(64, 48), "PNG")
    bad_crc = bytearray(data)
    bad_crc[29] ^= 0xFF  # last byte of IHDR's CRC
    for broken in (bytes(bad_crc), data[: len(data) // 2], data[:20]):
        err = _reject(broken)
        assert err.status == 422 and "PNG" in err.message


def test_unexpected_decoder_errors_become_422(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: JpegImagePlugin.JpegImageFile) -> None:
        raise MemoryError("decoder ran out of memory")

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", explode)
    err = _reject(_encode(_noise(16, 16), "JPEG"))
    assert err.status == 422 and "MemoryError" in err.message


def test_rgb_png_and_lossless_webp_decode_exactly() -> None:
    image = _noise(33, 21)
    for fmt, options in (("PNG", {}), ("WEBP", {"lossless": True})):
        decoded = decode_upload(_encode(image, fmt, **options), MAX_PIXELS)
        assert decoded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    cmyk = Image.new("CMYK", (24, 16), (0, 255, 255, 0))  # full magenta + yellow: red
    data = _encode(cmyk, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "CMYK"
    decoded = decode_upload(data, MAX_PIXELS)
    assert decoded.mode == "RGB"
    np.testing.assert_allclose(np.asarray(decoded, dtype=float), np.broadcast_to((255, 0, 0), (16, 24, 3)), atol=8)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    data = _encode(Image.fromarray(values), "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I;16")
    decoded = np.asarray(decode_upload(data, MAX_PIXELS))
    np.testing.assert_array_equal(decoded[0, :, 0], [0, 100, 255])
    assert (decoded == decoded[..., :1]).all()


def test_palette_png_with_transparency_is_composited_on_white() -> None:
    palette = Image.new("P", (4, 2))
    palette.putpalette([0, 0, 0, 200, 30, 40] + [0] * (254 * 3))
    palette.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    data = _encode(palette, "PNG", transparency=0)
    decoded = np.asarray(decode_upload(data, MAX_PIXELS))
    expected = np.where(np.array([0, 1, 0, 1, 1, 0, 1, 0]).reshape(2, 4, 1) == 0, 255, [200, 30, 40])
    np.testing.assert_array_equal(decoded, expected)


def test_greyscale_and_alpha_images_decode() -> None:
    grey = Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8))
    def decoded_png(image: Image.Image) -> np.ndarray:
        return np.asarray(decode_upload(_encode(image, "PNG"), MAX_PIXELS))

    np.testing.assert_array_equal(decoded_png(grey)[0, :, 1], [0, 128, 255])
    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(10, 20, 30, 255), (10, 20, 30, 0)])  # opaque, then fully transparent
    la = Image.new("LA", (2, 1))
    la.putdata([(50, 255), (50, 0)])
    np.testing.assert_array_equal(decoded_png(rgba)[0], [[10, 20, 30], [255] * 3])
    np.testing.assert_array_equal(decoded_png(la)[0], [[50] * 3, [255] * 3])


def test_exif_orientation_is_applied() -> None:
    # Upright picture 80x40: quadrants red, green (top), blue, white (bottom). Orientation 6 means the stored
    # pixels must be turned 90 degrees clockwise for display, so store it turned counter-clockwise.
    upright = np.zeros((40, 80, 3), np.uint8)
    upright[:20, :40], upright[:20, 40:] = (255, 0, 0), (0, 255, 0)
    upright[20:, :40], upright[20:, 40:] = (0, 0, 255), (255, 255, 255)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_upload(data, MAX_PIXELS)
    assert stored.size == (40, 80) and decoded.size == (80, 40)
    quadrant_means = [np.asarray(decoded, dtype=float)[r : r + 20, c : c + 40][4:-4, 4:-4].mean(axis=(0, 1))
                      for r in (0, 20) for c in (0, 40)]
    np.testing.assert_allclose(quadrant_means, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)], atol=10)
