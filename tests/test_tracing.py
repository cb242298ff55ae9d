"""OpenTelemetry tracing over real HTTP, recorded by the SDK's own in-memory exporter: a span per request with its
steps as children, the caller's W3C traceparent continued, health, readiness and metrics left out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from service_support import image_bytes, running_server

from jmvae.service.settings import Settings
from jmvae.service.tracing import configured

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process: where the service's steps find their tracer
    return exporter


@pytest.fixture(scope="module")
def client(tiny_checkpoint: Path, exporter: InMemorySpanExporter) -> Iterator[httpx.Client]:
    settings = Settings(checkpoint=tiny_checkpoint, max_batch_wait_ms=0)
    with running_server(settings, tracer_provider=trace.get_tracer_provider()) as url:
        with httpx.Client(base_url=url, timeout=30) as c:
            yield c


def _trace_of(exporter: InMemorySpanExporter, trace_id: int) -> list:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def test_a_request_is_one_span_with_its_steps_as_children(client: httpx.Client, exporter: InMemorySpanExporter) -> None:
    photo = image_bytes(np.random.default_rng(0).integers(0, 256, (120, 100, 3), dtype=np.uint8))
    exporter.clear()
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    answer = client.post(
        "/edit",
        files={"image": ("x.png", photo)},
        data={"changes": '{"Smiling": 2}'},
        headers={"traceparent": traceparent},
    )
    assert answer.status_code == 200, answer.text
    spans = _trace_of(exporter, int(TRACE_ID, 16))
    (request,) = [s for s in spans if s.kind == trace.SpanKind.SERVER]
    assert request.parent is not None and request.parent.span_id == int(PARENT_ID, 16)  # the caller's trace goes on
    children = [s for s in spans if s.parent is not None and s.parent.span_id == request.context.span_id]
    names = sorted(s.name for s in children)
    # /edit: one image through the model, two attribute vectors (each its queue wait and model run), one answer.
    assert names == sorted(
        ["decode", "face detection", "queue wait", "model"] * 1 + ["queue wait", "model"] * 2 + ["encode"]
    ), names
    for span in children:
        assert request.start_time <= span.start_time <= span.end_time <= request.end_time, span.name
    assert {s.attributes["jmvae.path"] for s in children if s.name == "model"} == {"image", "attributes"}


def test_health_readiness_and_metrics_are_not_traced(client: httpx.Client, exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200
    assert exporter.get_finished_spans() == ()
    assert client.post("/generate", json={"n": 1}).status_code == 200
    assert {s.name for s in exporter.get_finished_spans()} >= {"queue wait", "model", "encode"}


@pytest.mark.unit
def test_tracing_is_on_only_when_otel_is_configured() -> None:
    assert not configured({})
    assert not configured({"JMVAE_API_KEY": "x"})
    assert configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"})
