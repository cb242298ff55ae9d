"""Prometheus metrics of one app instance, in its own registry (no process-global collectors)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .batching import BatchStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "jmvae_requests", "HTTP requests answered", ["endpoint", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "jmvae_request_seconds",
            "HTTP request latency",
            ["endpoint", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "jmvae_batch_size",
            "items merged into one forward pass",
            ["path"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "jmvae_queue_wait_seconds",
            "time an item waited for its batch to start",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_time = Histogram(
            "jmvae_model_seconds",
            "time of one batched forward pass",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("jmvae_queue_depth", "items waiting per model path", ["path"], registry=self.registry)
        self.rejected = Counter(
            "jmvae_queue_rejections",
            "requests refused with 503 because a queue (or its path's admission limit) was full",
            ["path"],
            registry=self.registry,
        )
        self.deadline_exceeded = Counter(
            "jmvae_deadline_exceeded",
            "requests answered 503 because their deadline passed, or would have, before their batch started "
            "(never run)",
            ["path"],
            registry=self.registry,
        )
        self.device_memory = Gauge(
            "jmvae_device_memory_bytes",
            "memory in use on the model's device (CUDA allocator, or process RSS on CPU)",
            registry=self.registry,
        )

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        labels = (endpoint, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_refusal(self, code: str, path: str) -> None:
        """A request refused at admission (service/admission.py), counted with those its queue refuses."""
        (self.deadline_exceeded if code == "deadline_exceeded" else self.rejected).labels(path).inc()

    def observe_batch(self, path: str, stats: BatchStats) -> None:
        self.batch_size.labels(path).observe(stats.size)
        self.model_time.labels(path).observe(stats.model_s)
        for wait in stats.queue_wait_s:
            self.queue_wait.labels(path).observe(wait)

    def track(self, queue_depth: dict[str, Callable[[], float]], device_memory: Callable[[], float]) -> None:
        """Gauges read at scrape time."""
        for path, read in queue_depth.items():
            self.queue_depth.labels(path).set_function(read)
        self.device_memory.set_function(device_memory)
