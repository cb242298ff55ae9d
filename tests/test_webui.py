"""The web page at GET /: its files over plain HTTP, and the page itself end to end in Debian's headless Chromium,
driven by Playwright against a real server. Screenshots of each state go to $JMVAE_TEST_ARTIFACTS/webui."""

from __future__ import annotations

import base64
import fnmatch
import json
import os
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
from pydantic import SecretStr
from service_support import image_bytes, running_server

from jmvae.service.settings import Settings
from jmvae.training.synthetic import render_faces, sample_attributes

KEY = "page-key-123"
ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "service" / "static"
ARTIFACTS = Path(os.environ.get("JMVAE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "webui"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)"
)


@pytest.fixture(scope="module")
def settings(tiny_checkpoint: Path) -> Settings:
    return Settings(checkpoint=tiny_checkpoint, max_upload_bytes=200_000, max_batch_wait_ms=1)


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[str]:
    with running_server(settings) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(settings: Settings) -> Iterator[str]:
    with running_server(settings.model_copy(update={"api_key": SecretStr(KEY)})) as url:
        yield url


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(0)
    contents = {
        "face.png": image_bytes(render_faces(sample_attributes(1, rng), rng, image_size=128)[0]),
        "wall.jpg": image_bytes(np.full((90, 120, 3), 200, np.uint8), "JPEG"),  # no face in it
        "notes.png": b"this is a text file, not an image",
        "huge.png": b"\x89PNG\r\n\x1a\n" + bytes(300_000),  # over the server's 200 kB
    }
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in contents}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed")
    # Debian's own build, not one Playwright would download: CI has no network beyond the package registries.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    crashes: list[str] = []
    page.on("pageerror", lambda error: crashes.append(str(error)))
    yield page
    context.close()
    assert crashes == [], crashes  # an uncaught exception in app.js


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def src(page: Page, selector: str) -> str:
    value = page.get_attribute(selector, "src")
    assert value is not None and value.startswith("data:image/png;base64,"), value
    return value


def open_page(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#photo:enabled")  # enabled once GET /model has answered


def upload(page: Page, path: Path) -> None:
    page.set_input_files("#photo", path)
    wait_for_upload(page)


def wait_for_upload(page: Page) -> None:
    # expect(), not wait_for_function: the page's CSP forbids the eval that the latter relies on.
    expect(page.locator("#status")).not_to_have_text("Reading the face…")


# Plain HTTP ---------------------------------------------------------------------------------------------------
def test_page_and_assets_are_served_without_a_key(keyed_server: str) -> None:
    with httpx.Client(base_url=keyed_server) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'src="static/app.js"' in page.text and "default-src 'self'" in page.headers["content-security-policy"]
        for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
            response = client.get(f"/static/{asset}")
            assert response.status_code == 200 and kind in response.headers["content-type"], asset
            assert response.text == (STATIC / asset).read_text()
        assert client.get("/static/nothing.js").json()["error"] == "http_error"
        assert client.get("/model").status_code == 401  # the API itself stays guarded
        spec = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert "/" not in spec["paths"] and not any(p.startswith("/static") for p in spec["paths"])


def test_page_loads_nothing_from_elsewhere() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import", text, re.IGNORECASE), path.name


def test_page_files_ship_in_the_wheel() -> None:
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["jmvae.service"]
    for path in STATIC.iterdir():
        relative = path.relative_to(ROOT / "service").as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative


# In the browser -----------------------------------------------------------------------------------------------
@needs_chromium
@pytest.mark.slow  # the browser fixture: chromium, started once for the file
def test_read_edit_and_generate(page: Page, server: str, uploads: dict[str, Path], settings: Settings) -> None:
    open_page(page, server)
    info = page.inner_text("#model-info")
    assert settings.checkpoint is not None and settings.checkpoint.name in info and "cpu" in info
    screenshot(page, "1-loaded")

    upload(page, uploads["face.png"])
    bars = page.locator("#attribute-bars li")
    assert bars.count() == 40
    values = [int(v.rstrip("%")) for v in page.locator("#attribute-bars .value").all_inner_texts()]
    assert values == sorted(values, reverse=True)
    assert page.is_hidden("#face-note") and page.is_visible("#crop-box")
    src(page, "#input-face")
    screenshot(page, "2-attributes")

    # A slider moved with the keyboard, as a person would: the edited face and x′_mean change, x_mean does not.
    absent = page.eval_on_selector_all("#sliders input", "inputs => inputs.find(i => i.value === '-1').id")
    before = {image: src(page, f"#{image}") for image in ("edited-face", "x-prime-mean", "x-mean")}
    page.focus(f"#{absent}")
    page.keyboard.press("End")
    assert page.input_value(f"#{absent}") == "2" and page.inner_text(f"#{absent}-value") == "2"
    expect(page.locator("#edited-face")).not_to_have_attribute("src", before["edited-face"])
    assert src(page, "#x-prime-mean") != before["x-prime-mean"] and src(page, "#x-mean") == before["x-mean"]
    screenshot(page, "3-edited")

    # Many moves in one burst make one request, with the final value.
    edits: list[str] = []
    page.on("request", lambda request: edits.append(request.url) if request.url.endswith("/edit") else None)
    name = absent.removeprefix("attr-")
    with page.expect_response("**/edit") as response:
        page.eval_on_selector(
            f"#{absent}",
            """input => {
            for (const value of ["1", "-2", "0.5", "1.5"]) {
                input.value = value;
                input.dispatchEvent(new Event("input", {bubbles: true}));
            }
        }""",
        )
    answer = response.value.json()
    assert len(edits) == 1
    assert answer["edited_attributes"] == answer["attributes"] | {name: 1.5}

    # Generation from the sliders' attributes, with a seed: the same seed gives the same faces.
    page.fill("#count", "3")
    page.fill("#seed", "7")
    page.click("#generate")
    expect(page.locator("#generated img")).to_have_count(4)
    assert "Seed 7" in page.inner_text("#generate-info")
    first = page.eval_on_selector_all("#generated img", "images => images.map(i => i.src)")
    assert len(set(first)) == 4
    screenshot(page, "4-generated")
    page.evaluate("document.getElementById('generated').replaceChildren()")
    page.click("#generate")
    expect(page.locator("#generated img")).to_have_count(4)
    assert page.eval_on_selector_all("#generated img", "images => images.map(i => i.src)") == first

    # Every image downloads as a PNG.
    with page.expect_download() as download:
        page.click("#generated figure:first-child a")
    assert download.value.suggested_filename == "average-face.png"
    saved = ARTIFACTS / "downloaded-average-face.png"
    download.value.save_as(saved)
    with Image.open(saved) as image:
        assert image.format == "PNG" and image.size == (32, 32)


@needs_chromium
@pytest.mark.slow
def test_generate_without_a_photo_completes_the_attributes_the_sliders_leave(page: Page, server: str) -> None:
    """Only the moved slider is sent; the service fills the rest from the training data (in the synthetic faces a
    moustache is a man's and rules out No_Beard) and the sliders show the vector it used."""
    open_page(page, server)
    assert page.input_value("#attr-Male") == "-1" and page.input_value("#attr-No_Beard") == "1"
    page.eval_on_selector(
        "#attr-Mustache",
        """input => {
        input.value = "2";
        input.dispatchEvent(new Event("input", {bubbles: true}));
    }""",
    )
    page.fill("#count", "1")
    with page.expect_request("**/generate") as request:
        page.click("#generate")
    assert request.value.post_data_json["attributes"] == {"Mustache": 2}
    expect(page.locator("#generated img")).to_have_count(2)
    assert page.input_value("#attr-Male") == "1" and page.input_value("#attr-No_Beard") == "-1"
    assert page.input_value("#attr-Mustache") == "2"


@needs_chromium
@pytest.mark.slow
def test_errors_are_readable(page: Page, server: str, uploads: dict[str, Path]) -> None:
    open_page(page, server)
    upload(page, uploads["notes.png"])
    assert "not an image the service can read" in page.inner_text("#error")
    screenshot(page, "5-error-not-an-image")

    upload(page, uploads["huge.png"])
    assert "too large" in page.inner_text("#error")
    screenshot(page, "6-error-too-large")

    upload(page, uploads["wall.jpg"])
    assert page.is_hidden("#error")
    assert "Not a face? The service says: no face found" in page.inner_text("#face-note")
    assert page.locator("#attribute-bars li").count() == 40  # still read: the centre of the image
    screenshot(page, "7-not-a-face")

    # A full queue is hard to hit on cue from a browser; the page gets the service's exact 503 answer instead.
    page.route(
        "**/edit",
        lambda route: route.fulfill(
            status=503,
            headers={"Retry-After": "1"},
            content_type="application/json",
            body=json.dumps({"error": "overloaded", "detail": "the queue is full; retry after a short wait"}),
        ),
    )
    upload(page, uploads["face.png"])
    assert page.inner_text("#error") == "The service is busy. Try again in 1 s."
    screenshot(page, "8-error-busy")


@needs_chromium
@pytest.mark.slow
def test_the_page_asks_for_the_api_key(page: Page, keyed_server: str, uploads: dict[str, Path]) -> None:
    page.goto(keyed_server)
    page.wait_for_selector("#key-form:visible")
    assert "needs an API key" in page.inner_text("#error") and page.is_disabled("#photo")
    screenshot(page, "9-key-needed")

    page.fill("#api-key", "wrong")
    page.press("#api-key", "Enter")
    expect(page.locator("#error")).to_contain_text("refused")
    assert page.is_visible("#key-form")

    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Use key").click()
    page.wait_for_selector("#photo:enabled")
    assert page.is_hidden("#key-form") and page.is_hidden("#error")
    upload(page, uploads["face.png"])
    assert page.locator("#attribute-bars li").count() == 40
    screenshot(page, "10-key-accepted")


@needs_chromium
@pytest.mark.slow
def test_phone_width(browser: Browser, server: str, uploads: dict[str, Path]) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 812}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        open_page(page, server)
        upload(page, uploads["face.png"])
        page.fill("#count", "4")
        page.click("#generate")
        expect(page.locator("#generated img")).to_have_count(5)
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1] == 375, width  # no horizontal scrolling
        for control in ("#photo", "#attr-Smiling", "#zeta", "#seed", "#count", "#generate"):
            box = page.locator(control).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, control
        screenshot(page, "11-phone")
    finally:
        context.close()


@needs_chromium
@pytest.mark.slow
def test_every_control_has_a_label(page: Page, server: str) -> None:
    open_page(page, server)
    unlabelled = page.eval_on_selector_all(
        "input, button",
        "nodes => nodes.filter(n => n.labels?.length === 0 && !n.textContent.trim()).map(n => n.id || n.outerHTML)",
    )
    assert unlabelled == []
    assert page.locator("#sliders input[type=range]").count() == 40
    assert page.get_by_label("Smiling", exact=True).get_attribute("type") == "range"


@needs_chromium
@pytest.mark.slow
def test_a_photo_dropped_on_the_page_is_read(page: Page, server: str, uploads: dict[str, Path]) -> None:
    open_page(page, server)
    transfer = page.evaluate_handle(
        """data => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "face.png", {type: "image/png"}));
        return transfer;
    }""",
        base64.b64encode(uploads["face.png"].read_bytes()).decode(),
    )
    page.dispatch_event("main", "dragover", {"dataTransfer": transfer})
    assert "dragging" in (page.get_attribute("#drop-zone", "class") or "")
    page.dispatch_event("main", "drop", {"dataTransfer": transfer})
    wait_for_upload(page)
    assert page.locator("#attribute-bars li").count() == 40 and page.is_hidden("#error")
    assert "dragging" not in (page.get_attribute("#drop-zone", "class") or "")


@needs_chromium
@pytest.mark.slow
def test_a_failed_upload_clears_the_previous_photos_results(page: Page, server: str, uploads: dict[str, Path]) -> None:
    """Results left on show after a refused file would read as that file's: the page forgets the previous photo."""
    open_page(page, server)
    typical = page.input_value("#attr-Male")
    upload(page, uploads["face.png"])
    assert page.locator("#attribute-bars li").count() == 40 and page.is_visible("#edit-images")
    src(page, "#input-face")

    upload(page, uploads["notes.png"])
    assert "not an image the service can read" in page.inner_text("#error")
    assert page.is_hidden("#face-result") and page.is_hidden("#edit-images") and page.is_hidden("#face-note")
    assert page.locator("#attribute-bars li").count() == 0
    for image in ("photo-preview", "input-face", "x-mean", "x-prime-mean", "edited-face"):
        assert page.get_attribute(f"#{image}", "src") is None, image
    assert page.is_disabled("#reset") and page.input_value("#attr-Male") == typical
    screenshot(page, "9-cleared-after-a-failed-upload")

    # No photo now: a slider move edits nothing, and generation sends only the moved slider.
    edits: list[str] = []
    page.on("request", lambda request: edits.append(request.url) if request.url.endswith("/edit") else None)
    page.eval_on_selector(
        "#attr-Mustache", 'input => { input.value = "2"; input.dispatchEvent(new Event("input", {bubbles: true})); }'
    )
    page.fill("#count", "1")
    with page.expect_request("**/generate") as request:
        page.click("#generate")
    assert request.value.post_data_json["attributes"] == {"Mustache": 2} and edits == []


# The API docs ------------------------------------------------------------------------------------------------
def offline(page: Page, server: str) -> list[str]:
    """Refuses every request that leaves the server, as a machine without the Internet would; returns them."""
    outside: list[str] = []

    def only_local(route: Route) -> None:
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    return outside


def test_docs_pages_and_assets_are_served_without_a_key(keyed_server: str) -> None:
    with httpx.Client(base_url=keyed_server) as client:
        for path, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
            page = client.get(path)
            assert page.status_code == 200 and f"/static-docs/{script}" in page.text, path
            assert "https://" not in page.text, path  # nothing from a CDN or Google Fonts
            asset = client.get(f"/static-docs/{script}")
            assert asset.status_code == 200 and "javascript" in asset.headers["content-type"]
        assert client.get("/static-docs/swagger-ui.css").headers["content-type"].startswith("text/css")
        assert client.get("/static-docs/nothing.js").status_code == 404
        spec = client.get("/openapi.json").json()  # what the docs read: open, as the page is
        assert spec["components"]["securitySchemes"]["apiKey"] == {"type": "http", "scheme": "bearer"}
        assert spec["paths"]["/generate"]["post"]["security"] == [{"apiKey": []}]
        assert "security" not in spec["paths"]["/healthz"]["get"]
        assert client.post("/generate", json={"n": 0}).status_code == 401  # the operations stay guarded


@needs_chromium
@pytest.mark.slow
def test_swagger_ui_works_offline_and_tries_out_generate(page: Page, server: str) -> None:
    outside = offline(page, server)
    page.goto(f"{server}/docs")
    operations = page.locator(".opblock-summary-path")
    expect(operations.first).to_be_visible()
    paths = set(operations.all_inner_texts())
    assert {"/generate", "/edit", "/attributes", "/model", "/healthz"} <= {p.replace("\u200b", "") for p in paths}
    screenshot(page, "docs-1-swagger-ui")

    block = page.locator(".opblock-post", has=page.locator(".opblock-summary-path", has_text="/generate"))
    block.locator(".opblock-summary").click()
    block.get_by_role("button", name="Try it out").click()
    block.locator(".response-controls select").first.select_option("image/png")
    with page.expect_response(lambda r: r.url.endswith("/generate") and r.request.method == "POST") as answer:
        block.get_by_role("button", name="Execute").click()
    assert answer.value.status == 200 and answer.value.headers["content-type"] == "image/png"
    expect(block.locator(".live-responses-table tr.response .response-col_status")).to_have_text("200")
    expect(block.locator(".live-responses-table img")).to_have_count(1)  # the PNG, shown
    screenshot(page, "docs-2-tried-generate")
    assert outside == []


@needs_chromium
@pytest.mark.slow
def test_redoc_works_offline(page: Page, server: str) -> None:
    outside = offline(page, server)
    page.goto(f"{server}/redoc")
    title = page.locator("h2", has_text="Attributes → average face and random faces")
    expect(title).to_be_visible(timeout=30_000)
    screenshot(page, "docs-3-redoc")
    # The bundle hardcodes its "API docs by Redocly" logo's URL: offline that image alone is missing.
    assert outside in ([], ["https://cdn.redoc.ly/redoc/logo-mini.svg"]), outside
