"""Hostile input over real HTTP: every answer is a precise 4xx or a correct result, never a 500, and the server
lives on. Runs the real app in a real uvicorn server on a checkpoint from the real trainer."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import re
import select
import socket
import tempfile
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from image_builders import (
    animated,
    black_png,
    encode,
    exif_rotated_jpeg,
    jpeg_claiming,
    noise,
    webp_claiming,
)
from PIL import Image
from service_support import image_bytes, running_server
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartParser

from jmvae.service.middleware import MULTIPART_OVERHEAD
from jmvae.service.schemas import AttributesResponse, EditResponse
from jmvae.service.settings import Settings
from jmvae.training.synthetic import render_faces, sample_attributes

MAX_UPLOAD = 200_000
MAX_BODY = MAX_UPLOAD + MULTIPART_OVERHEAD
ENDPOINTS = ["/attributes", "/edit"]


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    settings = Settings(checkpoint=tiny_checkpoint, max_upload_bytes=MAX_UPLOAD, max_image_pixels=1_000_000)
    with running_server(settings) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A drawn face the cascade finds, on a wider grey canvas: 192×128, so that turning it shows in the box."""
    rng = np.random.default_rng(0)
    canvas = np.full((128, 192, 3), 128, np.uint8)
    canvas[:, :128] = render_faces(sample_attributes(1, rng), rng, image_size=128)[0]
    return canvas


def _refused(client: httpx.Client, response: httpx.Response, status: int, code: str, pattern: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == code, body
    assert re.search(pattern, body["detail"]), body["detail"]
    assert client.get("/healthz").status_code == 200  # and the server lives on


def _upload(client: httpx.Client, endpoint: str, data: bytes) -> httpx.Response:
    """`data` as the image, always declared image/png: the server goes by the bytes, not the declaration."""
    fields = {"changes": (None, '{"Smiling": 2}')} if endpoint == "/edit" else {}
    return client.post(endpoint, files={"image": ("upload", data, "image/png"), **fields})


# Hostile images -----------------------------------------------------------------------------------------------
def _truncated_jpeg() -> bytes:
    data = encode(noise(64, 48), "JPEG", quality=90)
    return data[: len(data) // 2]


REFUSED_IMAGES: dict[str, tuple[Callable[[], bytes], int, str]] = {
    # Decompression bombs: small files whose headers claim huge canvases, refused before decoding.
    "png bomb": (lambda: black_png(20_000, 20_000), 413, r"20000x20000 \(400,000,000 pixels\); at most 1,000,000"),
    "jpeg bomb": (lambda: jpeg_claiming(60_000, 60_000), 413, r"60000x60000 .*at most 1,000,000 pixels"),
    "webp bomb": (lambda: webp_claiming(16_383, 16_383), 413, r"16383x16383 .*at most 1,000,000 pixels"),
    # Under the body limit (multipart framing included) but over the upload limit.
    "over the byte limit": (
        lambda: b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD),
        413,
        r"^the upload is 200,008 bytes; at most 200,000 are accepted$",
    ),
    "truncated jpeg": (_truncated_jpeg, 422, r"^the JPEG image is corrupt or truncated: "),
    "animated gif": (lambda: animated("GIF"), 415, r"^GIF images are not accepted; send JPEG, PNG or WebP$"),
    "animated webp": (lambda: animated("WEBP"), 422, r"animated or multi-frame .*this WEBP has 2 frames"),
    "animated png": (lambda: animated("PNG"), 422, r"animated or multi-frame .*this PNG has 2 frames"),
    "zero bytes": (lambda: b"", 422, r"^the upload is empty$"),
    "text as image/png": (lambda: b"this is not a picture\n" * 10, 415, r"^not a recognised image"),
}


@pytest.mark.parametrize("case", REFUSED_IMAGES)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_hostile_images_are_refused_precisely(client: httpx.Client, endpoint: str, case: str) -> None:
    build, status, pattern = REFUSED_IMAGES[case]
    data = build()
    assert len(data) <= MAX_BODY - 1024  # each one reaches the decoder, not the body limit
    _refused(client, _upload(client, endpoint, data), status, "bad_image", pattern)


def _greyscale(face: np.ndarray) -> tuple[bytes, np.ndarray]:
    grey = np.asarray(Image.fromarray(face).convert("L"))
    return encode(Image.fromarray(grey), "PNG"), np.repeat(grey[..., None], 3, axis=2)


def _sixteen_bit(face: np.ndarray) -> tuple[bytes, np.ndarray]:
    grey = np.asarray(Image.fromarray(face).convert("L"))
    wide = Image.fromarray(grey.astype(np.uint16) * 257)  # 16-bit greyscale scaling down exactly to `grey`
    assert wide.mode.startswith("I;16")
    return encode(wide, "PNG"), np.repeat(grey[..., None], 3, axis=2)


def _palette(face: np.ndarray) -> tuple[bytes, np.ndarray]:
    indexed = Image.fromarray(face).quantize(64)
    expected = np.asarray(indexed.convert("RGB")).copy()
    expected[np.asarray(indexed) == 0] = 255  # index 0 is transparent: composited on white
    return encode(indexed, "PNG", transparency=0), expected


def _alpha(face: np.ndarray) -> tuple[bytes, np.ndarray]:
    alpha = np.full(face.shape[:2], 255, np.uint8)
    alpha[:, 150:] = 0  # a transparent strip: composited on white
    expected = face.copy()
    expected[:, 150:] = 255
    return encode(Image.fromarray(np.dstack([face, alpha])), "PNG"), expected


def _cmyk(face: np.ndarray) -> tuple[bytes, np.ndarray]:
    cmyk = Image.fromarray(face).convert("CMYK")
    return encode(cmyk, "JPEG", quality=95), face


def _exif_rotated(face: np.ndarray) -> tuple[bytes, np.ndarray]:
    return exif_rotated_jpeg(Image.fromarray(face)), face


# Each gives the upload and the upright 8-bit RGB picture it must decode to; JPEGs only approximately.
DECODABLE: dict[str, tuple[Callable[[np.ndarray], tuple[bytes, np.ndarray]], bool]] = {
    "greyscale png": (_greyscale, True),
    "16-bit png": (_sixteen_bit, True),
    "palette png": (_palette, True),
    "png with alpha": (_alpha, True),
    "cmyk jpeg": (_cmyk, False),
    "exif-rotated jpeg": (_exif_rotated, False),
}


def _b64_pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), np.int16)


@pytest.mark.parametrize("case", DECODABLE)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_unusual_images_give_the_result_of_their_plain_rgb_equivalent(
    client: httpx.Client, face: np.ndarray, endpoint: str, case: str
) -> None:
    build, exact = DECODABLE[case]
    data, expected = build(face)
    got = _upload(client, endpoint, data)
    assert got.status_code == 200, got.text
    reference = _upload(client, endpoint, image_bytes(expected))
    assert reference.status_code == 200, reference.text
    model = AttributesResponse if endpoint == "/attributes" else EditResponse
    body, ref = model.model_validate(got.json()), model.model_validate(reference.json())
    # The drawn face is found in both: sideways (EXIF ignored), the cascade finds none and the crop is centred.
    assert body.face_detected and ref.face_detected
    tolerance = 1e-3 if exact else 3.0  # pixels: a JPEG's detection box moves a little
    assert body.box.model_dump() == pytest.approx(ref.box.model_dump(), abs=tolerance)
    if isinstance(body, EditResponse):
        seen, ref_seen = _b64_pixels(body.input_face), _b64_pixels(ref.input_face)  # the crop the model saw
        if exact:
            np.testing.assert_array_equal(seen, ref_seen)
        else:
            assert np.abs(seen - ref_seen).mean() < 6
    else:
        assert body.probabilities == pytest.approx(ref.probabilities, abs=1e-5 if exact else 5e-3)


# Multipart framing --------------------------------------------------------------------------------------------
def _face_part(face: np.ndarray) -> tuple[str, bytes, str]:
    return ("face.png", image_bytes(face), "image/png")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_image_part_must_come_exactly_once_as_a_file(client: httpx.Client, face: np.ndarray, endpoint: str) -> None:
    changes = [("changes", (None, "{}"))] if endpoint == "/edit" else []
    image = ("image", _face_part(face))

    def post(parts: list[tuple[str, Any]]) -> httpx.Response:
        return client.post(endpoint, files=parts)

    _refused(
        client, post([*changes, ("picture", _face_part(face))]), 422, "invalid_request", r"^image: Field required$"
    )
    _refused(
        client, post([*changes, image, image]), 422, "invalid_request", r"^image: send exactly one 'image' part, not 2$"
    )
    _refused(
        client,
        post([*changes, ("image", (None, "a picture"))]),
        422,
        "invalid_request",
        r"^image: must be a file part \(one with a filename\), not a text field$",
    )
    _refused(
        client,
        post([*changes, image, ("extra", (None, "1"))]),
        422,
        "invalid_request",
        r"^extra: unexpected part; send only image",
    )
    # Parts are counted as they stream in: a body of many tiny parts is cut short.
    _refused(
        client,
        post([*changes, *[image] * 9]),
        422,
        "invalid_request",
        r"^body: invalid multipart body: Too many files\. Maximum number of files is 8\.$",
    )
    assert post([*changes, image]).status_code == 200  # and the well-formed request is answered


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_bodies_that_are_not_multipart_are_refused(client: httpx.Client, endpoint: str) -> None:
    parts = "image, changes" if endpoint == "/edit" else "image"
    for headers, content in (
        ({"content-type": "application/json"}, b'{"image": "abc"}'),
        ({"content-type": "application/x-www-form-urlencoded"}, b"image=abc"),
        ({}, b"abc"),
    ):
        got = headers.get("content-type", "a body without a content type")
        _refused(
            client,
            client.post(endpoint, content=content, headers=headers),
            422,
            "invalid_request",
            rf"^body: send multipart/form-data with the parts {parts}, not {got}$",
        )
    _refused(
        client,
        client.post(endpoint, content=b"--x--", headers={"content-type": "multipart/form-data"}),
        422,
        "invalid_request",
        r"^body: invalid multipart body: Missing boundary in multipart\.$",
    )


def test_changes_field_must_come_exactly_once_as_standard_json(client: httpx.Client, face: np.ndarray) -> None:
    image = ("image", _face_part(face))

    def edit(*parts: tuple[str, Any]) -> httpx.Response:
        return client.post("/edit", files=[image, *parts])

    _refused(client, edit(), 422, "invalid_request", r"^changes: Field required$")
    _refused(
        client,
        edit(("changes", (None, "{}")), ("changes", (None, "{}"))),
        422,
        "invalid_request",
        r"^changes: send exactly one 'changes' part, not 2$",
    )
    _refused(
        client,
        edit(("changes", ("changes.json", b"{}", "application/json"))),
        422,
        "invalid_request",
        r"^changes: must be a text field, not a file part$",
    )
    for token in ("NaN", "Infinity", "-Infinity"):
        _refused(
            client,
            edit(("changes", (None, f'{{"Smiling": {token}}}'))),
            422,
            "invalid_request",
            rf"^changes: not valid JSON \({token} is not a JSON number; send a finite number\)$",
        )
    _refused(
        client,
        edit(("changes", (None, "[" * 50_000))),
        422,
        "invalid_request",
        r"^changes: not valid JSON \(nested too deeply\)$",
    )
    _refused(
        client,
        edit(("changes", (None, " " * (MULTIPART_OVERHEAD + 1)))),
        422,
        "invalid_request",
        r"^body: invalid multipart body: Part exceeded maximum size of 64KB\.$",
    )


# JSON bodies --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    "template",
    [
        '{{"n": {}}}',
        '{{"zeta": {}}}',
        '{{"seed": {}}}',
        '{{"attributes": {{"Smiling": {}}}}}',
        '{{"unexpected": [{}]}}',
    ],
)
def test_nan_and_infinity_are_refused_anywhere_in_json(client: httpx.Client, template: str, token: str) -> None:
    """Python's json reads these tokens as floats; JSON has no such numbers, wherever they stand."""
    got = client.post("/generate", content=template.format(token), headers={"content-type": "application/json"})
    _refused(
        client,
        got,
        422,
        "invalid_request",
        rf"^body: not valid JSON \({token} is not a JSON number; send a finite number\)$",
    )


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000, b'{"attributes": ' + b"[" * 100_000])
def test_deeply_nested_json_is_refused(client: httpx.Client, body: bytes) -> None:
    got = client.post("/generate", content=body, headers={"content-type": "application/json"})
    _refused(client, got, 422, "invalid_request", r"^body: not valid JSON \(nested too deeply\)$")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_endpoint_refuses_other_content_types(client: httpx.Client, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    got = client.post("/generate", content=b'{"n": 1}', headers=headers)
    _refused(client, got, 422, "invalid_request", r"^body: Input should be a valid dictionary")


# The body limit -----------------------------------------------------------------------------------------------
def _answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def _stream_until_answered(
    url: str, path: str, content_type: str, opening: bytes, offered: int
) -> tuple[int, int, dict[str, Any]]:
    """POSTs a chunked body, `opening` then zeros up to `offered` bytes, sending only until the server answers;
    returns the bytes sent, and the answer."""
    chunk = 64 * 1024
    frame = f"{chunk:x}\r\n".encode() + b"\x00" * chunk + b"\r\n"
    sent, pending = 0, f"{len(opening):x}\r\n".encode() + opening + b"\r\n"
    deadline = time.monotonic() + 60
    with _connect(url) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: {content_type}\r\n\r\n".encode()
        )
        sock.setblocking(False)
        while sent < offered:
            assert time.monotonic() < deadline, f"no answer after {sent:,} bytes"
            readable, writable, _ = select.select([sock], [sock], [], 1)
            if readable:
                break
            if writable:
                pending = pending or frame
                try:
                    written = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    break  # the server hung up: its answer is waiting to be read
                pending, sent = pending[written:], sent + written
        sock.settimeout(30)
        status, body = _answer(sock)
    return sent, status, body


IMAGE_PART_OPENING = b'--x\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n\x89PNG'


@pytest.mark.parametrize(
    "path, content_type, opening",
    [
        ("/attributes", "multipart/form-data; boundary=x", IMAGE_PART_OPENING),
        ("/edit", "multipart/form-data; boundary=x", IMAGE_PART_OPENING),
        ("/generate", "application/json", b'{"attributes": {"Smiling": 1}, "pad": "'),
    ],
)
def test_streamed_body_over_the_limit_is_refused_before_it_is_read_whole(
    server: str, client: httpx.Client, path: str, content_type: str, opening: bytes
) -> None:
    sent, status, body = _stream_until_answered(server, path, content_type, opening, offered=1 << 30)
    assert status == 413 and body == {"error": "payload_too_large", "detail": f"request body over {MAX_BODY} bytes"}
    # What was sent is the limit plus what the loopback socket buffers hold (a few MB): far from the whole.
    assert sent < 64 << 20, sent
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/attributes", "/edit", "/generate"])
def test_declared_length_over_the_limit_is_refused_before_any_body(
    server: str, client: httpx.Client, path: str
) -> None:
    with _connect(server) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {1 << 40}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n\r\n".encode()
        )
        status, body = _answer(sock)  # answered without a byte of the body
    assert status == 413 and body == {"error": "payload_too_large", "detail": f"request body over {MAX_BODY} bytes"}
    assert client.get("/healthz").status_code == 200


def _requests_counted(client: httpx.Client, path: str, status: int) -> float:
    line = rf'^jmvae_requests_total{{endpoint="{path}",method="POST",status="{status}"}} (\S+)$'
    found = re.search(line, client.get("/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("path", ENDPOINTS)
def test_client_hanging_up_mid_upload_is_not_a_server_error(server: str, client: httpx.Client, path: str) -> None:
    def counts() -> tuple[float, float]:
        return _requests_counted(client, path, 422), _requests_counted(client, path, 500)

    before = counts()
    with _connect(server) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n\r\n".encode()
            + IMAGE_PART_OPENING
        )
    deadline = time.monotonic() + 30
    while (after := counts()) == before:
        assert time.monotonic() < deadline, "the abandoned request was never counted"
        time.sleep(0.05)
    assert after == (before[0] + 1, before[1])  # counted as the client's fault, not the server's


# No upload touches the disk -----------------------------------------------------------------------------------
@pytest.fixture
def temp_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every temporary file or folder made through `tempfile`, which is how Python code makes them
    (SpooledTemporaryFile's roll-over to disk included)."""
    made: list[str] = []
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        original = getattr(tempfile, name)

        def record(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            made.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(tempfile, name, record)
    return made


def test_uploads_stay_in_memory(tiny_checkpoint: Path, temp_files: list[str]) -> None:
    photo = encode(noise(1300, 1300), "PNG", compress_level=0)  # ~5 MB: noise does not compress
    settings = Settings(checkpoint=tiny_checkpoint, max_upload_bytes=8_000_000)
    assert 5_000_000 < len(photo) < settings.max_upload_bytes
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )

    async def stock_parse() -> None:
        async def stream() -> AsyncGenerator[bytes, None]:
            yield body

        headers = Headers({"content-type": f"multipart/form-data; boundary={boundary}"})
        form = await MultiPartParser(headers, stream()).parse()
        await form.close()

    # The spy sees what the stock parser, which FastAPI's File() parameters use, does with such an upload.
    asyncio.run(stock_parse())
    assert temp_files == ["TemporaryFile"]
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as c:
        temp_files.clear()  # from here on, only what the uploads cause
        for endpoint in ENDPOINTS:
            got = _upload(c, endpoint, photo)
            assert got.status_code == 200, got.text
    assert temp_files == []
