"""What a route needs, as typed FastAPI dependencies: the model slot from the app's lifespan, its engine, its core
(leased per request) only once it is ready, and the uploaded forms read strictly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from .bodies import parse_json, read_form
from .core import Core
from .deadlines import (
    MAX_TIMEOUT_HEADER_MS,
    TIMEOUT_HEADER,
    TIMEOUT_HEADER_DESCRIPTION,
    Deadline,
    arrival,
    deadline_for,
)
from .engine import Engine
from .errors import ServiceUnavailable
from .metrics import ServiceMetrics
from .middleware import MULTIPART_OVERHEAD, max_body_bytes
from .models import ModelSlot
from .openapi import OPTIONAL_PARTS
from .schemas import EditChanges


# Every dependency is `async def`, though none awaits: FastAPI runs a plain `def` one on its thread pool, a thread
# hop per dependency per request (two of them cost the attributes → face path a tenth of its throughput).
async def _slot(request: Request) -> ModelSlot:
    slot: ModelSlot = request.state.slot
    return slot


SlotDep = Annotated[ModelSlot, Depends(_slot)]


async def _engine(slot: SlotDep) -> Engine:
    return slot.core.engine


async def _metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.state.metrics
    return metrics


async def _ready_core(request: Request, slot: SlotDep) -> AsyncIterator[Core]:
    # Leased for the whole request: a reload stops this Core's engine only once the request is done with it.
    with slot.lease() as core:
        if not core.engine.ready:
            raise ServiceUnavailable("the model is warming up")
        request.state.model_version = core.engine.version  # the model that answers, for X-Model-Version
        yield core


EngineDep = Annotated[Engine, Depends(_engine)]  # ready or not: for /readyz and /model
MetricsDep = Annotated[ServiceMetrics, Depends(_metrics)]
CoreDep = Annotated[Core, Depends(_ready_core)]  # 503 while the model warms up, before the body is read


# Deadlines (issue 16) ----------------------------------------------------------------------------------------
TimeoutHeader = Annotated[
    int | None, Header(alias=TIMEOUT_HEADER, ge=1, le=MAX_TIMEOUT_HEADER_MS, description=TIMEOUT_HEADER_DESCRIPTION)
]


async def _deadline(request: Request, core: CoreDep, timeout_ms: TimeoutHeader = None) -> Deadline:
    """Bad header values (not a whole number, ≤ 0, over an hour) are 422s naming the header."""
    return Deadline(deadline_for(arrival(request.scope), timeout_ms, core.settings.request_timeout_ms), request.receive)


DeadlineDep = Annotated[Deadline, Depends(_deadline)]


@dataclass(frozen=True)
class Upload:
    photo: bytes
    box: str | None  # the `box` part's JSON, checked by the core


@dataclass(frozen=True)
class EditUpload(Upload):
    changes: dict[str, float]


async def _read(request: Request, core: Core, *fields: str) -> tuple[bytes, dict[str, str]]:
    return await read_form(
        request,
        "image",
        fields,
        max_bytes=max_body_bytes(core.settings),
        max_field_bytes=MULTIPART_OVERHEAD,
        optional=OPTIONAL_PARTS,
    )


async def _upload(request: Request, core: CoreDep) -> Upload:
    photo, fields = await _read(request, core)
    return Upload(photo, fields.get("box"))


async def _edit_upload(request: Request, core: CoreDep) -> EditUpload:
    photo, fields = await _read(request, core, "changes")
    try:
        changes = EditChanges.model_validate({"changes": parse_json(fields["changes"])}).changes
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None
    except ValueError as e:  # after ValidationError, which is a ValueError too
        raise RequestValidationError([{"loc": ("changes",), "msg": f"not valid JSON ({e})"}]) from None
    return EditUpload(photo, fields.get("box"), changes)


UploadDep = Annotated[Upload, Depends(_upload)]
EditUploadDep = Annotated[EditUpload, Depends(_edit_upload)]
