"""The FastAPI application: routes, errors, authentication, limits and metrics around one Engine."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jmvae.model.faces import FaceCrop, FaceCropper
from jmvae.model.render import grid

from .batching import QueueFull
from .bodies import StandardJSONRoute, parse_json, read_form
from .engine import Engine, GenerateJob
from .faces import BadBox, check_inside, face_fields, parse_box
from .images import ImageRejected, decode_upload
from .logs import RequestContext
from .metrics import ServiceMetrics
from .render import IMAGE_MEDIA_TYPES, encode_image, png_base64
from .schemas import (
    AttributesResponse,
    EditChanges,
    EditResponse,
    ErrorBody,
    GenerateRequest,
    GenerateResponse,
    ModelInfo,
)
from .settings import Settings

logger = logging.getLogger("jmvae.service")
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/"})
# The web page and its assets load without a key: the page itself asks for the key and sends it to the API.
OPEN_PREFIXES = ("/static/",)
STATIC = Path(__file__).parent / "static"
# The page loads nothing from elsewhere (it must work offline); images arrive as data: URLs, the photo as a blob:.
PAGE_CSP = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'"
# Multipart framing around the image: boundaries, part headers and the small `changes` field.
MULTIPART_OVERHEAD = 64 * 1024

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        401: "missing or wrong API key", 413: "upload too large (bytes or pixels)",
        415: "not a JPEG, PNG or WebP image", 422: "invalid input: the detail names the field and the problem",
        503: "not ready yet, or the queue is full: retry after Retry-After seconds",
    }.items()
}
IMAGE_RESPONSE: dict[str, Any] = {
    "content": {media: {} for media in IMAGE_MEDIA_TYPES},
    "description": "JSON by default; one image with Accept: image/png (lossless), image/jpeg or image/webp (quality 90)",
}
IMAGE_PART: dict[str, Any] = {"type": "string", "format": "binary",
                              "description": "a JPEG, PNG or WebP photo with one face"}
OPTIONAL_PARTS = ("box",)  # form parts an upload may leave out
BOX_PART: dict[str, Any] = {"type": "string", "description": "optional: the face's box in the photo's pixels, as "
                            "JSON; the crop is it grown ×1.3, and no face detection runs",
                            "examples": ['{"left": 140, "top": 95, "width": 210, "height": 210}']}
CHANGES_PART: dict[str, Any] = {"type": "string", "description": 'JSON object of attribute values, e.g. {"Smiling": 2}',
                                "examples": ['{"Smiling": 2, "Eyeglasses": 1}']}


def _multipart(**parts: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a form read by `read_form`: FastAPI documents only bodies it reads itself."""
    required = [name for name in parts if name not in OPTIONAL_PARTS]
    schema = {"type": "object", "properties": parts, "required": required, "additionalProperties": False}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


class ServiceUnavailable(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


def _report_warm_up_failure(task: asyncio.Task[None]) -> None:
    # A failed warm-up leaves /readyz at 503 for good; say why instead of failing silently.
    if not task.cancelled() and task.exception() is not None:
        logger.error("warm-up failed; the service stays unready", exc_info=task.exception())


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _validation_message(errors: list[Any]) -> str:
    parts = []
    for e in errors[:5]:
        if e.get("type") == "json_invalid":  # FastAPI's msg is "JSON decode error"; the reason is in ctx
            parts.append(f"body: not valid JSON ({e['ctx']['error']})")
            continue
        location = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",)) or "body"
        parts.append(f"{location}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def _image_type(request: Request) -> str | None:
    """The image type the client ranks highest in Accept when it ranks it at least as high as JSON, else None
    (answer JSON); equal ranks go to PNG, then JPEG, then WebP."""
    ranked: dict[str, float] = {}
    for part in request.headers.get("accept", "").split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        ranked[media.lower()] = q
    best = max(IMAGE_MEDIA_TYPES, key=lambda media: ranked.get(media, 0.0))  # max keeps the first of equals
    q = ranked.get(best, 0.0)
    return best if q > 0 and q >= ranked.get("application/json", 0.0) else None


def _endpoint(app: FastAPI, scope: Scope) -> str:
    """The route template a request matches, for bounded metric labels; unknown paths share one label."""
    for route in app.router.routes:
        if route.matches(scope)[0] != Match.NONE:
            return getattr(route, "path", "unmatched")
    return "unmatched"


class BodyLimit:
    """Refuses bodies over the limit as they stream in (413), before the app has read them whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _error(413, "payload_too_large", BodyTooLarge(self.max_bytes).detail)(scope, receive, send)


class BodyTooLarge(StarletteHTTPException):
    """Raised into the app by BodyLimit's receive, and answered by the app's handler. An HTTPException because
    FastAPI turns any other error raised while it reads a JSON body into a 400."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over {max_bytes} bytes")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        engine = Engine.load(settings, metrics)  # a bad checkpoint stops the start here
        cropper = FaceCropper(engine.meta.preprocessing)  # the crop its model was trained on (load_jmvae checks)
        logger.info("loaded %s on %s (%s inference)", engine.checkpoint.name, engine.device, engine.mode)
        await engine.start()
        warm_up = asyncio.create_task(engine.warm_up())
        warm_up.add_done_callback(_report_warm_up_failure)
        try:
            yield {"engine": engine, "cropper": cropper}
        finally:
            warm_up.cancel()
            await engine.stop()

    app = FastAPI(
        title="jmvae",
        summary="JMVAE-kl: faces ↔ CelebA attributes through one joint latent space",
        description="Upload a face to read its 40 CelebA attributes, generate faces from attributes, or edit a "
        "face's attributes (Suzuki, Nakayama & Matsuo, 2016). Images are 64×64.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.router.route_class = StandardJSONRoute  # every route declared below reads JSON bodies strictly

    # Middleware, innermost first (each one added wraps the ones before): auth, CORS (so that 401s carry CORS
    # headers), the body limit, metrics around those so refusals are counted too, and outermost the request id
    # and access log, so every log line a request causes carries its id.
    if settings.api_key is not None:
        # Digests of equal length, so compare_digest's time reveals neither how much of a guess was right nor the
        # key's length.
        expected = hashlib.sha256(settings.api_key.get_secret_value().encode()).digest()

        @app.middleware("http")
        async def authenticate(request: Request, call_next: Any) -> Response:
            path = request.url.path
            if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or request.method == "OPTIONS":
                return await call_next(request)
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            offered = hashlib.sha256(token.strip().encode()).digest()
            if not hmac.compare_digest(offered, expected) or scheme.lower() != "bearer":
                return _error(401, "unauthorized", "a valid API key is required as 'Authorization: Bearer <key>'",
                              {"WWW-Authenticate": "Bearer"})
            return await call_next(request)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
        )

    max_body = settings.max_upload_bytes + MULTIPART_OVERHEAD
    app.add_middleware(BodyLimit, max_bytes=max_body)

    app.add_middleware(RequestContext, on_response=lambda scope, status, seconds: metrics.observe_request(
        _endpoint(app, scope), scope["method"], status, seconds))

    # Errors: always JSON {"error", "detail"}, never a bare 500 for bad input.
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", _validation_message(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return _error(413, "payload_too_large", exc.detail)

    @app.exception_handler(ImageRejected)
    async def _bad_image(request: Request, exc: ImageRejected) -> JSONResponse:
        return _error(exc.status, "bad_image", exc.message)

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull) -> JSONResponse:
        metrics.rejected.labels(exc.path).inc()
        return _error(503, "overloaded", str(exc), {"Retry-After": "1"})

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        return _error(503, "not_ready", exc.detail, {"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal_error", "the server failed on this request; it has been logged")

    def ready_engine(request: Request) -> Engine:
        engine: Engine = request.state.engine
        if not engine.ready:
            raise ServiceUnavailable("the model is warming up")
        return engine

    async def read_upload(request: Request, *fields: str) -> tuple[bytes, dict[str, str]]:
        return await read_form(request, "image", fields, max_bytes=max_body, max_field_bytes=MULTIPART_OVERHEAD,
                               optional=OPTIONAL_PARTS)

    async def face_from_upload(request: Request, data: bytes, box_field: str | None) -> FaceCrop:
        cropper: FaceCropper = request.state.cropper
        try:
            face_box = parse_box(box_field) if box_field is not None else None  # before the costly decode

            def prepare() -> FaceCrop:
                image = decode_upload(data, settings.max_image_pixels, settings.max_upload_bytes)
                if face_box is not None:
                    check_inside(face_box, image.size)
                return cropper.crop(image, face_box)

            return await run_in_threadpool(prepare)
        except BadBox as e:
            raise RequestValidationError([{"loc": ("box",), "msg": str(e)}]) from None

    def check_names(engine: Engine, values: dict[str, float], field: str) -> None:
        unknown = sorted(set(values) - set(engine.attribute_names))
        if unknown:
            raise RequestValidationError([{
                "loc": (field, unknown[0]),
                "msg": f"unknown attribute(s) {', '.join(unknown[:5])}; GET /model lists the {len(engine.attribute_names)} names",
            }])

    # Routes -------------------------------------------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Readiness: checkpoint loaded and warmed up (503 before)",
             responses={503: ERRORS[503]})
    async def readyz(request: Request) -> JSONResponse:
        if not request.state.engine.ready:
            return _error(503, "not_ready", "the model is warming up", {"Retry-After": "1"})
        # Which process answered: with --workers N, a client (the benchmarks) can wait until every one is ready.
        return JSONResponse({"status": "ready", "worker": os.getpid()})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/model", tags=["model"], summary="The loaded checkpoint: metadata, device, attribute names",
             response_model=ModelInfo, responses={401: ERRORS[401]})
    async def model_info(request: Request) -> ModelInfo:
        engine: Engine = request.state.engine
        return ModelInfo(
            checkpoint=engine.checkpoint.name, device=str(engine.device), inference_mode=engine.mode,
            attribute_names=list(engine.attribute_names), image_size=engine.image_size,
            default_attributes=dict(zip(engine.attribute_names, map(float, engine.default_attributes))),
            metadata=engine.meta.model_dump(mode="json"),
        )

    @app.post("/attributes", tags=["model"], summary="Face photo → attribute probabilities",
              response_model=AttributesResponse,
              responses={k: ERRORS[k] for k in (401, 413, 415, 422, 503)},
              openapi_extra=_multipart(image=IMAGE_PART, box=BOX_PART))
    async def attributes(request: Request) -> AttributesResponse:
        engine = ready_engine(request)
        image, fields = await read_upload(request)
        face = await face_from_upload(request, image, fields.get("box"))
        encoded = await engine.encode(face.pixels)
        probabilities = dict(zip(engine.attribute_names, map(float, encoded.probabilities)))
        return AttributesResponse(
            probabilities=probabilities, present=[n for n, p in probabilities.items() if p >= 0.5],
            **face_fields(face),
        )

    @app.post("/generate", tags=["model"], summary="Attributes → average face and random faces",
              response_model=GenerateResponse,
              responses={200: IMAGE_RESPONSE} | {k: ERRORS[k] for k in (401, 413, 422, 503)})
    async def generate(request: Request, body: GenerateRequest) -> Any:
        engine = ready_engine(request)
        check_names(engine, body.attributes, "attributes")
        if body.n > settings.max_faces:
            raise RequestValidationError([{"loc": ("n",), "msg": f"must be at most {settings.max_faces}"}])
        if body.zeta > settings.max_zeta:
            raise RequestValidationError([{"loc": ("zeta",), "msg": f"must be at most {settings.max_zeta}"}])
        seed = body.seed if body.seed is not None else secrets.randbits(63)
        w = engine.attribute_vector(body.attributes)
        result = await engine.generate(GenerateJob(w, body.n, body.zeta, seed))
        if media_type := _image_type(request):
            image = result.average if body.n == 0 else grid([result.average, *result.faces])
            return Response(await run_in_threadpool(encode_image, image, media_type), media_type=media_type)
        # PNG compression is CPU work: off the event loop, like decoding.
        encoded = await run_in_threadpool(lambda: [png_base64(f) for f in [result.average, *result.faces]])
        return GenerateResponse(
            attributes=dict(zip(engine.attribute_names, map(float, w))), seed=seed, zeta=body.zeta,
            average_face=encoded[0], faces=encoded[1:],
        )

    @app.post("/edit", tags=["model"], summary="Face photo + attribute changes → edited face",
              response_model=EditResponse,
              responses={200: IMAGE_RESPONSE} | {k: ERRORS[k] for k in (401, 413, 415, 422, 503)},
              openapi_extra=_multipart(image=IMAGE_PART, changes=CHANGES_PART, box=BOX_PART))
    async def edit(request: Request) -> Any:
        engine = ready_engine(request)
        image, fields = await read_upload(request, "changes")
        try:
            parsed = EditChanges.model_validate({"changes": parse_json(fields["changes"])}).changes
        except ValidationError as e:
            raise RequestValidationError(e.errors()) from None
        except ValueError as e:  # after ValidationError, which is a ValueError too
            raise RequestValidationError([{"loc": ("changes",), "msg": f"not valid JSON ({e})"}]) from None
        check_names(engine, parsed, "changes")
        face = await face_from_upload(request, image, fields.get("box"))
        encoded = await engine.encode(face.pixels)
        w = np.where(encoded.probabilities >= 0.5, 1.0, -1.0).astype(np.float32)
        w_prime = w.copy()
        for name, value in parsed.items():
            w_prime[engine.attribute_names.index(name)] = value
        means = await asyncio.gather(
            engine.generate(GenerateJob(w, 0, 0.0, 0)), engine.generate(GenerateJob(w_prime, 0, 0.0, 0))
        )
        x_mean, x_prime_mean = means[0].average, means[1].average
        delta = x_prime_mean.astype(np.int16) - x_mean.astype(np.int16)
        edited = np.clip(face.pixels.astype(np.int16) + delta, 0, 255).astype(np.uint8)
        if media_type := _image_type(request):
            return Response(await run_in_threadpool(encode_image, edited, media_type), media_type=media_type)
        images = await run_in_threadpool(lambda: [png_base64(i) for i in (face.pixels, x_mean, x_prime_mean, edited)])
        names = engine.attribute_names
        return EditResponse(
            probabilities=dict(zip(names, map(float, encoded.probabilities))),
            attributes=dict(zip(names, map(float, w))), edited_attributes=dict(zip(names, map(float, w_prime))),
            **face_fields(face), input_face=images[0], x_mean=images[1], x_prime_mean=images[2], edited_face=images[3],
        )

    return app
