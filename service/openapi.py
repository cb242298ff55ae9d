"""What the OpenAPI document says beyond what FastAPI reads from the routes: the error answers, the image
answers, and the multipart bodies the routes read themselves."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fastapi import FastAPI

from .encoding import IMAGE_MEDIA_TYPES
from .schemas import ErrorBody

# The interactive docs (routes/docs.py) and where their scripts are served: open without the API key, as the
# web page is (middleware.py).
DOCS_PATHS = ("/docs", "/redoc")
DOCS_ASSETS_URL = "/static-docs"
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        401: "missing or wrong API key",
        413: "upload too large (bytes or pixels)",
        409: "a reload is already in progress",
        415: "not a JPEG, PNG or WebP image",
        422: "invalid input: the detail names the field and the problem (POST /admin/reload: the checkpoint "
        "file was refused, and the served model keeps serving)",
        503: "not ready yet, the queue is full, or the request's deadline passed in the queue: retry after "
        "Retry-After seconds",
    }.items()
}
IMAGE_RESPONSE: dict[str, Any] = {
    "content": {media: {} for media in IMAGE_MEDIA_TYPES},
    "description": "JSON by default; one image with Accept: image/png (lossless), image/jpeg or image/webp "
    "(quality 90)",
}
IMAGE_OK: dict[int | str, dict[str, Any]] = {200: IMAGE_RESPONSE}
IMAGE_PART: dict[str, Any] = {
    "type": "string",
    "format": "binary",
    "description": "a JPEG, PNG or WebP photo with one face",
}
OPTIONAL_PARTS = ("box",)  # form parts an upload may leave out
BOX_PART: dict[str, Any] = {
    "type": "string",
    "description": "optional: the face's box in the photo's pixels, as "
    "JSON; the crop is it grown ×1.3, and no face detection runs",
    "examples": ['{"left": 140, "top": 95, "width": 210, "height": 210}'],
}
CHANGES_PART: dict[str, Any] = {
    "type": "string",
    "description": 'JSON object of attribute values, e.g. {"Smiling": 2}',
    "examples": ['{"Smiling": 2, "Eyeglasses": 1}'],
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: ERRORS[status] for status in statuses}


def multipart(**parts: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a form read by `read_form`: FastAPI documents only bodies it reads itself."""
    required = [name for name in parts if name not in OPTIONAL_PARTS]
    schema = {"type": "object", "properties": parts, "required": required, "additionalProperties": False}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def declare_bearer_key(app: FastAPI, open_paths: Collection[str]) -> None:
    """Declares the API key (middleware.py checks it) as an HTTP bearer scheme that every operation but those on
    `open_paths` requires, so that the docs' "Authorize" takes the key and their "Try it out" sends it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # FastAPI keeps it in app.openapi_schema
            schema.setdefault("components", {})["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
            for path, operations in schema["paths"].items():
                for operation in operations.values() if path not in open_paths else ():
                    operation["security"] = [{"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
