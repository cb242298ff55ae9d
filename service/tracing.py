"""Optional OpenTelemetry tracing (`pip install 'jmvae[tracing]'`), on when any standard OTEL_* variable is set
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER, ...) and OTEL_SDK_DISABLED is not true.

A span per request (OpenTelemetry's ASGI middleware: W3C `traceparent` from nginx continues the caller's trace),
with children for decoding the upload, face detection, the wait in the batch queue, the model and encoding the
answer. Health, readiness and metrics are not traced. Without the extra or the variables, every call here is a
no-op and nothing is imported.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the benchmark's peers import the core (and so this) where FastAPI is not installed
    from fastapi import FastAPI

NOT_TRACED = "/healthz$,/readyz$,/metrics$"  # OpenTelemetry's excluded_urls: patterns searched in the URL
TRACER = "jmvae.service"


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Any OTEL_* variable set, tracing not disabled, and the SDK installed."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    wanted = any(name.startswith("OTEL_") for name in environ)
    return wanted and importlib.util.find_spec("opentelemetry.sdk") is not None


def install(app: FastAPI, tracer_provider: Any = None) -> bool:
    """Traces `app`'s requests, with `tracer_provider`, else (when `configured()`) one from the environment that
    exports over OTLP and becomes the process's provider. Returns whether tracing is on."""
    if tracer_provider is None:
        if not configured():
            return False
        tracer_provider = _provider_from_environment()
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app.add_middleware(
        OpenTelemetryMiddleware,
        excluded_urls=NOT_TRACED,
        tracer_provider=tracer_provider,
        exclude_spans=["receive", "send"],  # one span per ASGI message would drown the steps
    )
    return True


def _provider_from_environment() -> Any:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "jmvae")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # endpoint, headers: OTEL_EXPORTER_OTLP_*
    trace.set_tracer_provider(provider)  # the core's steps find it through OpenTelemetry's API
    return provider


@cache
def _api() -> Any:
    # Looked up once: without the extra, a search of sys.path per step would cost every request.
    if importlib.util.find_spec("opentelemetry") is None:
        return None
    from opentelemetry import trace

    return trace


def _tracer() -> Any:
    trace = _api()
    if trace is None or not trace.get_current_span().is_recording():  # only inside a traced request
        return None
    return trace.get_tracer(TRACER)


@contextmanager
def step(name: str) -> Iterator[None]:
    """A child span of the request being traced, around one step; nothing when none is."""
    tracer = _tracer()
    if tracer is None:
        yield
        return
    with tracer.start_as_current_span(name):
        yield


def record_batch(path: str, enqueued_ns: int, started_ns: int, finished_ns: int, size: int) -> None:
    """The queue wait and the model run of one item, as spans after the fact (the batch ran on another thread,
    for several requests at once); called in the submitter's context."""
    tracer = _tracer()
    if tracer is None:
        return
    attributes = {"jmvae.path": path, "jmvae.batch_size": size}
    tracer.start_span("queue wait", start_time=enqueued_ns, attributes=attributes).end(end_time=started_ns)
    tracer.start_span("model", start_time=started_ns, attributes=attributes).end(end_time=finished_ns)
