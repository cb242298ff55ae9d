"""Strict readers of request bodies: standard JSON only, and multipart forms that never touch the disk."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from contextlib import aclosing
from typing import Any, NoReturn

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

# The forms here have one or two parts; a body of thousands of tiny parts is refused as it streams in.
MAX_FORM_PARTS = 8


def _refuse_constant(token: str) -> NoReturn:
    raise ValueError(f"{token} is not a JSON number; send a finite number")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)  # one, not one per call as json.loads(parse_constant=)


def parse_json(data: str | bytes) -> Any:
    """Standard JSON, or ValueError with a one-line reason.

    Python's json module accepts NaN, Infinity and -Infinity, which JSON lacks, and fails with RecursionError
    (a bug's exception, not the input's) on nesting deeper than the interpreter's recursion limit."""
    try:
        if isinstance(data, bytes):  # as json.loads reads bytes
            data = data.decode(json.detect_encoding(data), "surrogatepass")
        return _DECODER.decode(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None


class _StandardJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = parse_json(await self.body())
            except ValueError as e:
                # FastAPI turns a JSONDecodeError, and no other error, into its 422 for a malformed JSON body;
                # the 422 reports `msg`, so the reason goes there.
                raise json.JSONDecodeError(str(e), "", 0) from None
        return self._json


class StandardJSONRoute(APIRoute):
    """A route whose JSON body is read by `parse_json` (FastAPI's own reading is a plain `json.loads`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def standard_json(request: Request) -> Response:
            return await handler(_StandardJSONRequest(request.scope, request.receive))

        return standard_json


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": (field,), "msg": message}])


async def read_form(
    request: Request,
    file: str,
    fields: tuple[str, ...],
    max_bytes: int,
    max_field_bytes: int,
    optional: tuple[str, ...] = (),
) -> tuple[bytes, dict[str, str]]:
    """The one file part and the text fields of a multipart/form-data body: exactly one part per name in `file` and
    `fields`, at most one per name in `optional`, no others.

    The file is held in memory up to `max_bytes` (the body limit, enforced as the body streams in), where
    Starlette's own form reading spools any file over 1 MB to a temporary file: no upload is written to disk.
    Anything else is a RequestValidationError naming the part."""
    names = (file, *fields)
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "multipart/form-data":
        raise _invalid(
            "body",
            f"send multipart/form-data with the parts {', '.join(names)}, "
            f"not {media_type or 'a body without a content type'}",
        )
    try:
        async with aclosing(request.stream()) as stream:
            parser = MultiPartParser(
                request.headers,
                stream,
                max_files=MAX_FORM_PARTS,
                max_fields=MAX_FORM_PARTS,
                max_part_size=max_field_bytes,
            )
            # Read for each file part's SpooledTemporaryFile as the size past which it moves to disk.
            parser.spool_max_size = max_bytes
            form = await parser.parse()
    except MultiPartException as e:
        raise _invalid("body", f"invalid multipart body: {e.message}") from None
    except ClientDisconnect:  # nobody hears the answer, but it is the client's doing: not a server error
        raise _invalid("body", "the client disconnected before sending the whole body") from None
    try:
        _check_parts(form, names, optional)
        upload = form[file]
        if not isinstance(upload, UploadFile):
            raise _invalid(file, "must be a file part (one with a filename), not a text field")
        texts: dict[str, str] = {}
        for name in (*fields, *(n for n in optional if n in form)):
            text = form[name]
            if not isinstance(text, str):
                raise _invalid(name, "must be a text field, not a file part")
            texts[name] = text
        return await upload.read(), texts
    finally:
        await form.close()


def _check_parts(form: FormData, names: tuple[str, ...], optional: tuple[str, ...]) -> None:
    for name in names:  # first: a misnamed part is best reported as the missing one
        count = len(form.getlist(name))
        if count != 1:
            raise _invalid(name, "Field required" if count == 0 else f"send exactly one {name!r} part, not {count}")
    for name in optional:
        count = len(form.getlist(name))
        if count > 1:
            raise _invalid(name, f"send at most one {name!r} part, not {count}")
    unexpected = sorted(set(form) - set(names) - set(optional))
    if unexpected:
        raise _invalid(unexpected[0], f"unexpected part; send only {', '.join((*names, *optional))}")
