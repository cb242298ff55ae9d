"""The HTTP API over real HTTP: a real uvicorn server, the real app, a checkpoint from the real trainer."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_support import image_bytes, running_server

from jmvae.service.settings import Settings
from jmvae.training.synthetic import render_faces, sample_attributes

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def face_png() -> bytes:
    rng = np.random.default_rng(0)
    face = render_faces(sample_attributes(1, rng), rng, image_size=128)[0]
    return image_bytes(face)


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path):
    settings = Settings(
        checkpoint=tiny_checkpoint,
        max_batch_size=8,
        max_batch_wait_ms=30,
        max_upload_bytes=200_000,
        max_image_pixels=1_000_000,
        max_faces=6,
    )
    with running_server(settings) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


def _png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _error(response: httpx.Response, status: int, pattern: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert re.search(pattern, body["detail"], re.IGNORECASE), body["detail"]


# Operations -------------------------------------------------------------------------------------------------
def test_health_model_and_openapi(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and isinstance(ready["worker"], int)
    info = client.get("/model").json()
    assert len(info["attribute_names"]) == 40 and info["image_size"] == 32 and info["device"] == "cpu"
    assert info["inference_mode"] == "kl" and info["metadata"]["format"] == "jmvae-checkpoint"
    assert set(info["default_attributes"].values()) <= {-1.0, 1.0}
    spec = client.get("/openapi.json").json()
    for path in ("/attributes", "/generate", "/edit", "/healthz", "/readyz", "/model", "/metrics"):
        assert path in spec["paths"], path
    assert spec["components"]["schemas"]["GenerateRequest"]["examples"]


# /attributes ------------------------------------------------------------------------------------------------
def test_attributes_contract(client: httpx.Client, face_png: bytes) -> None:
    r = client.post("/attributes", files={"image": ("face.png", face_png, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["probabilities"]) == 40 and all(0 <= p <= 1 for p in body["probabilities"].values())
    assert body["present"] == [n for n, p in body["probabilities"].items() if p >= 0.5]
    assert body["face_detected"] is True and body["note"] is None  # the cascade finds the drawn face
    assert body["faces_found"] == 1 and body["face_box"]["width"] < body["box"]["width"]
    assert 0 < body["box"]["width"] < 128
    again = client.post("/attributes", files={"image": ("face.png", face_png, "image/png")}).json()
    assert again["probabilities"] == pytest.approx(body["probabilities"], abs=1e-6)


def test_attributes_without_a_face_uses_a_centre_crop(client: httpx.Client) -> None:
    flat = image_bytes(np.full((60, 90, 3), 200, np.uint8), "JPEG")
    body = client.post("/attributes", files={"image": ("flat.jpg", flat, "image/jpeg")}).json()
    assert body["face_detected"] is False and "centre crop" in body["note"]
    assert body["faces_found"] == 0 and body["face_box"] is None
    assert len(body["probabilities"]) == 40


@pytest.mark.parametrize("endpoint", ["/attributes", "/edit"])
def test_a_client_box_replaces_detection(client: httpx.Client, face_png: bytes, endpoint: str) -> None:
    data = {"changes": "{}"} if endpoint == "/edit" else {}
    detected = client.post(endpoint, files={"image": ("face.png", face_png, "image/png")}, data=data).json()
    # The detected face sent back as the box: the same crop, the same answer, and no detection ran.
    box = json.dumps(detected["face_box"])
    sent = client.post(endpoint, files={"image": ("face.png", face_png, "image/png")}, data=data | {"box": box})
    assert sent.status_code == 200, sent.text
    body = sent.json()
    assert body["box"] == pytest.approx(detected["box"]) and body["probabilities"] == detected["probabilities"]
    assert body["face_detected"] is False and body["faces_found"] == 0 and "box sent" in body["note"]
    # Another box, another crop: the box is the face, and the crop is it grown x1.3 about its centre.
    corner = {"left": 0, "top": 0, "width": 40, "height": 40}
    moved = client.post(
        endpoint, files={"image": ("face.png", face_png, "image/png")}, data=data | {"box": json.dumps(corner)}
    ).json()
    assert moved["box"] == pytest.approx({"left": -6, "top": -6, "width": 52, "height": 52})
    assert moved["probabilities"] != detected["probabilities"]


@pytest.mark.parametrize(
    "box, pattern",
    [
        ({"left": -1, "top": 0, "width": 10, "height": 10}, "left.*greater than or equal to 0"),
        ({"left": 0, "top": -0.5, "width": 10, "height": 10}, "top.*greater than or equal to 0"),
        ({"left": 100, "top": 0, "width": 40, "height": 10}, "reaches past the 128x128 photo"),
        ({"left": 0, "top": 120, "width": 10, "height": 9}, "reaches past"),
        ({"left": 500, "top": 500, "width": 10, "height": 10}, "reaches past"),
        ({"left": 0, "top": 0, "width": 0, "height": 10}, "width.*greater than 0"),
        ({"left": 0, "top": 0, "width": 10, "height": -3}, "height.*greater than 0"),
        ('{"left": NaN, "top": 0, "width": 10, "height": 10}', "invalid JSON|finite"),
        ('{"left": 1e999, "top": 0, "width": 10, "height": 10}', "left.*finite"),
        ({"left": 0, "top": 0, "width": 10}, "height.*required"),
        ({"left": 0, "top": 0, "width": 10, "height": 10, "depth": 1}, "depth.*not permitted"),
        ("[0, 0, 10, 10]", "object"),
        ("left=0", "invalid JSON"),
    ],
)
@pytest.mark.parametrize("endpoint", ["/attributes", "/edit"])
def test_bad_boxes_are_422_naming_the_box(
    client: httpx.Client, face_png: bytes, endpoint: str, box, pattern: str
) -> None:
    data = {"changes": "{}"} if endpoint == "/edit" else {}
    text = box if isinstance(box, str) else json.dumps(box)
    r = client.post(endpoint, files={"image": ("face.png", face_png, "image/png")}, data=data | {"box": text})
    _error(r, 422, "box.*" + pattern)
    two = client.post(
        endpoint,
        files=[("image", ("face.png", face_png, "image/png")), ("box", (None, "{}")), ("box", (None, "{}"))],
        data=data,
    )
    _error(two, 422, "box.*at most one")


# /generate --------------------------------------------------------------------------------------------------
def test_generate_contract_and_seed(client: httpx.Client) -> None:
    request = {"attributes": {"Smiling": 2, "Male": -1}, "n": 3, "zeta": 1.0, "seed": 7}
    body = client.post("/generate", json=request).json()
    assert body["seed"] == 7 and body["zeta"] == 1.0 and len(body["faces"]) == 3
    assert body["attributes"]["Smiling"] == 2 and body["attributes"]["Male"] == -1 and len(body["attributes"]) == 40
    faces = [_png(body["average_face"]), *map(_png, body["faces"])]
    assert all(f.size == (32, 32) and f.mode == "RGB" for f in faces)
    assert len({f.tobytes() for f in faces}) == 4  # random faces differ from the average and each other
    assert client.post("/generate", json=request).json()["faces"] == body["faces"]  # same seed, same faces
    other = client.post("/generate", json=request | {"seed": 8}).json()
    assert other["faces"] != body["faces"] and other["average_face"] == body["average_face"]
    unseeded = client.post("/generate", json={"n": 1}).json()
    assert isinstance(unseeded["seed"], int)
    replay = client.post("/generate", json={"n": 1, "seed": unseeded["seed"]}).json()
    assert replay["faces"] == unseeded["faces"]


def test_generate_completes_unspecified_attributes_from_the_specified_ones(client: httpx.Client) -> None:
    """In the synthetic training faces a moustache is (almost) only a man's and rules out No_Beard: asked for a
    moustache and nothing else, the service asks the model for a man without No_Beard, not for the typical face
    (a woman) with a moustache."""
    typical = client.get("/model").json()["default_attributes"]
    assert typical["Male"] == -1 and typical["No_Beard"] == 1
    completed = client.post("/generate", json={"attributes": {"Mustache": 2}, "n": 0}).json()["attributes"]
    assert completed["Mustache"] == 2 and completed["Male"] == 1 and completed["No_Beard"] == -1
    # What is specified is kept, even against the data's rules.
    kept = client.post("/generate", json={"attributes": {"Mustache": 2, "Male": -1}, "n": 0}).json()["attributes"]
    assert kept["Male"] == -1 and kept["No_Beard"] == -1
    assert client.post("/generate", json={"n": 0}).json()["attributes"] == typical


def test_generate_zeta_zero_gives_the_average(client: httpx.Client) -> None:
    body = client.post("/generate", json={"n": 2, "zeta": 0.0, "seed": 1}).json()
    assert body["faces"] == [body["average_face"]] * 2


def test_generate_png(client: httpx.Client) -> None:
    single = client.post("/generate", json={"n": 0}, headers={"Accept": "image/png"})
    assert single.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(single.content)).size == (32, 32)
    grid = client.post("/generate", json={"n": 3, "seed": 1}, headers={"Accept": "image/png"})
    assert Image.open(io.BytesIO(grid.content)).size[0] > 32 * 4  # average + 3 faces side by side
    as_json = client.post("/generate", json={"n": 0}, headers={"Accept": "application/json, image/png;q=0.5"})
    assert as_json.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "accept, media, fmt",
    [
        ("image/jpeg", "image/jpeg", "JPEG"),
        ("image/webp", "image/webp", "WEBP"),
        ("image/webp, image/png", "image/png", "PNG"),
        ("image/jpeg;q=0.9, image/webp", "image/webp", "WEBP"),
    ],
)
def test_generate_and_edit_answer_the_image_type_asked_for(
    client: httpx.Client, face_png: bytes, accept: str, media: str, fmt: str
) -> None:
    lossless = np.asarray(_png(client.post("/generate", json={"n": 0, "seed": 3}).json()["average_face"]))
    for response in (
        client.post("/generate", json={"n": 0, "seed": 3}, headers={"Accept": accept}),
        client.post(
            "/edit",
            files={"image": ("f.png", face_png, "image/png")},
            data={"changes": "{}"},
            headers={"Accept": accept},
        ),
    ):
        assert response.status_code == 200 and response.headers["content-type"] == media
        image = Image.open(io.BytesIO(response.content))
        assert image.format == fmt and image.size == (32, 32)
    # The average face, lossy or not, is the same picture as the JSON's lossless PNG.
    average = np.asarray(
        Image.open(
            io.BytesIO(client.post("/generate", json={"n": 0, "seed": 3}, headers={"Accept": accept}).content)
        ).convert("RGB")
    )
    assert np.abs(average.astype(int) - lossless.astype(int)).mean() < 8


# /edit ------------------------------------------------------------------------------------------------------
def test_edit_contract(client: httpx.Client, face_png: bytes) -> None:
    r = client.post(
        "/edit",
        files={"image": ("face.png", face_png, "image/png")},
        data={"changes": json.dumps({"Smiling": 2, "Eyeglasses": 1})},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["edited_attributes"]["Smiling"] == 2 and body["edited_attributes"]["Eyeglasses"] == 1
    assert set(body["attributes"].values()) <= {-1.0, 1.0}
    assert body["attributes"] == {n: (1.0 if p >= 0.5 else -1.0) for n, p in body["probabilities"].items()}
    x, xm, xpm, edited = (
        np.asarray(_png(body[k]), np.int16) for k in ("input_face", "x_mean", "x_prime_mean", "edited_face")
    )
    assert x.shape == edited.shape == (32, 32, 3)
    np.testing.assert_array_equal(edited, np.clip(x + xpm - xm, 0, 255))  # x′ = x + x′_mean − x_mean
    png = client.post(
        "/edit",
        files={"image": ("face.png", face_png, "image/png")},
        data={"changes": '{"Smiling": 2, "Eyeglasses": 1}'},
        headers={"Accept": "image/png"},
    )
    assert png.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content)), np.int16), edited)


# Bad input ------------------------------------------------------------------------------------------------
def _bomb_png() -> bytes:
    """A small PNG whose header claims 5000×5000 pixels (over the test limit of 1 M)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (5000 * 3 + 1) * 5000, 9)
    header = struct.pack(">IIBBBBB", 5000, 5000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _animated_png() -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


@pytest.mark.parametrize(
    "payload, status, pattern",
    [
        (b"", 422, "empty"),
        (b"this is not an image at all", 415, "image"),
        (b"GIF89a" + b"\x00" * 100, 415, "image|format"),
        ("truncated", 422, "truncated|corrupt|decode"),
        ("bomb", 413, "pixels"),
        ("animated", 422, "animated|frame"),
        ("huge", 413, "bytes"),
    ],
    ids=["empty", "text", "gif", "truncated", "bomb", "animated", "huge"],
)
@pytest.mark.parametrize("endpoint", ["/attributes", "/edit"])
def test_bad_images(client: httpx.Client, face_png: bytes, endpoint: str, payload, status: int, pattern: str) -> None:
    if payload == "truncated":
        payload = image_bytes(np.full((64, 64, 3), 128, np.uint8), "JPEG")[:300]
    elif payload == "bomb":
        payload = _bomb_png()
        assert len(payload) < 100_000
    elif payload == "animated":
        payload = _animated_png()
    elif payload == "huge":
        payload = b"\xff\xd8" + bytes(400_000)
    data = {"changes": "{}"} if endpoint == "/edit" else None
    r = client.post(endpoint, files={"image": ("x.png", payload, "image/png")}, data=data)
    _error(r, status, pattern)


@pytest.mark.parametrize(
    "body, pattern",
    [
        ({"attributes": {"Smilin": 1}}, "unknown attribute.*Smilin"),
        ({"attributes": {"Smiling": 3}}, "Smiling.*less than or equal to 2"),
        ({"attributes": {"Smiling": -2.5}}, "Smiling.*greater than or equal to -2"),
        ({"attributes": {"Smiling": "yes"}}, "Smiling.*number"),
        ({"attributes": ["Smiling"]}, "attributes.*dictionary"),
        ({"n": -1}, "n.*greater than or equal to 0"),
        ({"n": 7}, "n.*at most 6"),
        ({"n": 1.5}, "n.*integer"),
        ({"zeta": -0.1}, "zeta.*greater than or equal to 0"),
        ({"zeta": 100}, "zeta.*at most"),
        ({"seed": -1}, "seed"),
        ({"unexpected": 1}, "unexpected.*not permitted"),
    ],
)
def test_bad_generate_requests(client: httpx.Client, body: dict, pattern: str) -> None:
    _error(client.post("/generate", json=body), 422, pattern)


def test_bad_json_and_content_types(client: httpx.Client, face_png: bytes) -> None:
    _error(client.post("/generate", content=b'{"n": NaN}', headers={"content-type": "application/json"}), 422, "")
    _error(client.post("/generate", content=b'{"n": 1', headers={"content-type": "application/json"}), 422, "json")
    _error(client.post("/generate", content=b"n=1", headers={"content-type": "text/plain"}), 422, "")
    _error(client.post("/attributes", json={"image": "abc"}), 422, "image")
    _error(client.post("/attributes", files={"picture": ("f.png", face_png, "image/png")}), 422, "image.*required")
    files = {"image": ("f.png", face_png, "image/png")}
    _error(client.post("/edit", files=files), 422, "changes.*required")
    _error(client.post("/edit", files=files, data={"changes": "{nope"}), 422, "changes.*not valid JSON")
    _error(client.post("/edit", files=files, data={"changes": '{"Smiling": 9}'}), 422, "Smiling.*less than")
    _error(client.post("/edit", files=files, data={"changes": '{"Bogus": 1}'}), 422, "unknown attribute.*Bogus")
    _error(client.post("/edit", files=files, data={"changes": "[1, 2]"}), 422, "changes.*dictionary")
    _error(client.get("/nowhere"), 404, "not found")
    _error(client.get("/generate"), 405, "method not allowed")


def test_unknown_attribute_names_suggest_the_closest_valid_one(client: httpx.Client, face_png: bytes) -> None:
    """A wrong case or a typo names the attribute meant, on both endpoints that take names; a name like none of
    the 40 gets no guess."""
    files = {"image": ("f.png", face_png, "image/png")}
    cases = {
        "smiling": 'smiling (did you mean "Smiling"?); GET /model lists the 40 names',
        "Eyglasses": 'Eyglasses (did you mean "Eyeglasses"?)',
        "XYZZY": "unknown attribute(s) XYZZY; GET /model",
    }
    for name, expected in cases.items():
        generated = client.post("/generate", json={"attributes": {name: 1}})
        edited = client.post("/edit", files=files, data={"changes": json.dumps({name: 1})})
        for response in (generated, edited):
            _error(response, 422, "unknown attribute")
            assert expected in response.json()["detail"], (name, response.json()["detail"])


def test_static_files_are_labelled_by_their_mount_in_the_metrics(client: httpx.Client) -> None:
    """One label per mount, whatever file or missing file is asked for: the label set stays bounded."""
    for path in ("/static/app.js", "/static/style.css", "/static/missing-1.js", "/static-docs/swagger-ui.css"):
        client.get(path)
    # A file's request is counted once its task has closed the file, which may be just after the client has
    # the last byte.
    deadline = time.monotonic() + 10
    while True:
        metrics = client.get("/metrics").text
        labels = set(re.findall(r'jmvae_requests_total{endpoint="([^"]*)"', metrics))
        if {"/static", "/static-docs"} <= labels or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert {"/static", "/static-docs"} <= labels, labels
    assert not any(label.startswith(("/static/", "/static-docs/")) for label in labels), labels
    assert re.search(r'jmvae_requests_total{endpoint="/static",method="GET",status="404"} [1-9]', metrics)


# Batching ---------------------------------------------------------------------------------------------------
def _histogram(metrics: str, name: str, path: str) -> tuple[float, float]:
    count = float(re.search(rf'{name}_count{{path="{path}"}} (\S+)', metrics).group(1))
    total = float(re.search(rf'{name}_sum{{path="{path}"}} (\S+)', metrics).group(1))
    return count, total


def test_concurrent_requests_share_a_batch(server: str, client: httpx.Client, face_png: bytes) -> None:
    before = _histogram(client.get("/metrics").text, "jmvae_batch_size", "image")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server, timeout=30) as c:
            responses = await asyncio.gather(
                *(c.post("/attributes", files={"image": ("f.png", face_png, "image/png")}) for _ in range(16))
            )
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 16
    metrics = client.get("/metrics").text
    count, total = _histogram(metrics, "jmvae_batch_size", "image")
    batches, items = count - before[0], total - before[1]
    assert items == 16 and batches < 16, (batches, items)  # fewer forward passes than requests
    assert 'jmvae_requests_total{endpoint="/attributes",method="POST",status="200"}' in metrics
    assert 'jmvae_request_seconds_bucket{endpoint="/attributes",le="0.005",method="POST",status="200"}' in metrics
    for name in (
        "jmvae_queue_wait_seconds_count",
        "jmvae_model_seconds_count",
        "jmvae_queue_depth",
        "jmvae_device_memory_bytes",
    ):
        assert name in metrics, name


def test_full_queue_answers_503_with_retry_after(tiny_checkpoint: Path) -> None:
    settings = Settings(checkpoint=tiny_checkpoint, max_batch_size=1, max_queue=1, max_faces=64)

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/generate", json={"n": 64, "seed": i}) for i in range(24)))

    with running_server(settings) as url:
        responses = asyncio.run(burst(url))
        metrics = httpx.get(f"{url}/metrics").text
    statuses = sorted({r.status_code for r in responses})
    assert statuses == [200, 503], statuses
    for r in responses:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "1"
            _error(r, 503, "waiting")
    rejected = float(re.search(r'jmvae_queue_rejections_total{path="attributes"} (\S+)', metrics).group(1))
    assert rejected == sum(r.status_code == 503 for r in responses)


# Authentication, readiness, start-up ---------------------------------------------------------------------------
def test_api_key_is_enforced(tiny_checkpoint: Path) -> None:
    with running_server(Settings(checkpoint=tiny_checkpoint, api_key=KEY)) as url, httpx.Client(base_url=url) as c:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(path).status_code == 200, path
        _error(c.get("/model"), 401, "API key")
        _error(c.post("/generate", json={"n": 0}), 401, "API key")
        _error(c.post("/generate", json={"n": 0}, headers={"Authorization": "Bearer wrong"}), 401, "API key")
        _error(c.post("/generate", json={"n": 0}, headers={"Authorization": f"Basic {KEY}"}), 401, "API key")
        assert c.get("/openapi.json").status_code == 200  # the schema the docs read is open, as /docs is
        ok = c.post("/generate", json={"n": 0}, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        assert 'status="401"' in c.get("/metrics").text  # refusals are counted too


@pytest.mark.slow
def test_readyz_is_503_until_warm(tiny_checkpoint: Path) -> None:
    settings = Settings(checkpoint=tiny_checkpoint, warmup_batches=400, max_batch_size=64)
    with running_server(settings, wait_ready=False) as url, httpx.Client(base_url=url) as c:
        first = c.get("/readyz")
        _error(first, 503, "warming up")
        assert first.headers["Retry-After"] == "1"
        assert c.get("/healthz").status_code == 200
        _error(c.post("/generate", json={"n": 0}), 503, "warming up")
        import time

        deadline = time.monotonic() + 120
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.post("/generate", json={"n": 0}).status_code == 200


def test_cors(tiny_checkpoint: Path) -> None:
    settings = Settings(checkpoint=tiny_checkpoint, cors_origins=["https://app.example"])
    with running_server(settings) as url, httpx.Client(base_url=url) as c:
        r = c.options("/generate", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert (
            "access-control-allow-origin" not in c.get("/healthz", headers={"Origin": "https://evil.example"}).headers
        )


@pytest.mark.unit
def test_env_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JMVAE_MAX_BATCH_SIZE", "1")
    monkeypatch.setenv("JMVAE_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("JMVAE_API_KEY", "hunter2-secret")
    settings = Settings()
    assert settings.max_batch_size == 1 and settings.cors_origins == ["https://a.example", "https://b.example"]
    assert "hunter2" not in repr(settings)  # the key never shows up where settings are logged
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "hunter2-secret"
    monkeypatch.setenv("JMVAE_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValueError):
        Settings()


def test_serve_refuses_a_bad_checkpoint_with_one_line(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    from jmvae.cli import main

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    for path, reason in (
        (tmp_path / "missing.safetensors", "no such checkpoint"),
        (truncated, "not a readable safetensors file"),
    ):
        assert main(["serve", "--checkpoint", str(path), "--port", "1"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and reason in err and str(path) in err


def _with_preprocessing(source: Path, target: Path, **changes: object) -> Path:
    from jmvae.model.checkpoint import read_checkpoint, save_checkpoint

    checkpoint = read_checkpoint(source)
    preprocessing = checkpoint.meta.preprocessing.model_copy(update=changes)
    checkpoint.meta = checkpoint.meta.model_copy(update={"preprocessing": preprocessing})
    save_checkpoint(target, checkpoint)
    return target


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"crop": "aligned"}, "trained on the fixed crop of aligned CelebA images"),
        ({"detection": {"detector": "opencv-haar"}}, "found by 'opencv-haar'"),
        ({"detection": {"cascade": "haarcascade_profileface.xml"}}, "unknown face cascade"),
    ],
)
def test_a_checkpoint_trained_on_another_crop_is_refused(
    tmp_path: Path, tiny_checkpoint: Path, capsys, changes: dict, reason: str
) -> None:
    from jmvae.cli import main
    from jmvae.model.checkpoint import CheckpointError, read_checkpoint
    from jmvae.model.preprocess import FaceDetection
    from jmvae.service.app import create_app

    if "detection" in changes:
        detection = read_checkpoint(tiny_checkpoint).meta.preprocessing.detection
        changes = {"detection": FaceDetection.model_validate(detection.model_dump() | changes["detection"])}
    path = _with_preprocessing(tiny_checkpoint, tmp_path / "other-crop.safetensors", **changes)
    assert main(["serve", "--checkpoint", str(path), "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and reason in err and str(path) in err

    app = create_app(Settings(checkpoint=path))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(CheckpointError, match=reason):
        asyncio.run(start())


def test_a_checkpoint_with_other_detector_parameters_is_served_with_them(
    tmp_path: Path, tiny_checkpoint: Path, face_png: bytes
) -> None:
    # The same detector with other parameters is the same crop: the service applies the checkpoint's own.
    from jmvae.model.checkpoint import read_checkpoint
    from jmvae.model.preprocess import FaceDetection

    detection = read_checkpoint(tiny_checkpoint).meta.preprocessing.detection
    path = _with_preprocessing(
        tiny_checkpoint,
        tmp_path / "wide.safetensors",
        detection=FaceDetection.model_validate(detection.model_dump() | {"box_scale": 1.6}),
    )
    with running_server(Settings(checkpoint=path)) as url:
        body = httpx.post(url + "/attributes", files={"image": ("face.png", face_png, "image/png")}, timeout=30).json()
    assert body["face_detected"] and body["box"]["width"] == pytest.approx(1.6 * body["face_box"]["width"])


@pytest.mark.unit
def test_app_start_fails_on_a_bad_checkpoint(tmp_path: Path) -> None:
    from jmvae.model.checkpoint import CheckpointError
    from jmvae.service.app import create_app

    app = create_app(Settings(checkpoint=tmp_path / "nope.safetensors"))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(CheckpointError, match="no such checkpoint"):
        asyncio.run(start())


@pytest.mark.unit
def test_default_model_ships_in_the_package() -> None:
    from jmvae.model.checkpoint import load_model
    from jmvae.service.engine import DEFAULT_CHECKPOINT

    assert DEFAULT_CHECKPOINT.stat().st_size < 25 * 1024 * 1024
    model, meta = load_model(DEFAULT_CHECKPOINT)
    assert meta.model.image_size == 64 and len(meta.attribute_names) == 40 and meta.alpha == 0.1
    assert (DEFAULT_CHECKPOINT.parent / "MODEL_CARD.md").exists()


# Every face in a photo ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_faces_jpeg() -> bytes:
    """Grace Hopper's portrait (public domain, in matplotlib's wheel) twice, at two sizes, on a grey scene."""
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as opened:
        portrait = opened.convert("RGB")
    scene = Image.new("RGB", (1400, 800), (120, 130, 140))
    scene.paste(portrait.resize((500, 586)), (40, 100))
    scene.paste(portrait.resize((340, 398)), (900, 200))
    buffer = io.BytesIO()
    scene.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_faces_all_answers_every_face_best_first(tiny_checkpoint: Path, two_faces_jpeg: bytes) -> None:
    files = {"image": ("two.jpg", two_faces_jpeg, "image/jpeg")}
    with running_server(Settings(checkpoint=tiny_checkpoint)) as url, httpx.Client(base_url=url, timeout=30) as c:
        one = c.post("/attributes", files=files).json()
        every = c.post("/attributes", params={"faces": "all"}, files=files).json()
    assert one["faces"] is None and one["faces_found"] == 2
    faces = every["faces"]
    assert len(faces) == 2 and faces[0]["confidence"] >= faces[1]["confidence"]
    # The first is the face the top-level fields answer for; the other is elsewhere in the photo.
    assert faces[0]["face_box"] == every["face_box"] == one["face_box"] and faces[0]["box"] == every["box"]
    assert abs(faces[0]["face_box"]["left"] - faces[1]["face_box"]["left"]) > 300
    for face in faces:
        assert set(face["probabilities"]) == set(one["probabilities"])
        assert face["present"] == [n for n, p in face["probabilities"].items() if p >= 0.5]
    assert faces[0]["probabilities"] == pytest.approx(one["probabilities"], abs=1e-5)


def test_faces_all_stops_at_the_limit_and_is_empty_without_a_face(tiny_checkpoint: Path, two_faces_jpeg: bytes) -> None:
    settings = Settings(checkpoint=tiny_checkpoint, max_faces_per_photo=1)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        limited = c.post("/attributes?faces=all", files={"image": ("two.jpg", two_faces_jpeg, "image/jpeg")}).json()
        noise = image_bytes(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
        nothing = c.post("/attributes?faces=all", files={"image": ("noise.png", noise, "image/png")}).json()
        for bad in ("every", "", "ALL", "1"):
            _error(c.post("/attributes", params={"faces": bad}, files={"image": ("n.png", noise)}), 422, "faces")
    assert limited["faces_found"] == 2 and len(limited["faces"]) == 1
    assert nothing["face_detected"] is False and nothing["faces"] == []
