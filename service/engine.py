"""The model behind the HTTP API: one loaded checkpoint, two batched model paths, warm-up and readiness."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jmvae.model.attributes import AttributePrior
from jmvae.model.checkpoint import CheckpointMeta, load_jmvae
from jmvae.model.device import resolve_device
from jmvae.model.jmvae import JMVAE

from .batching import Batcher, BatchStats
from .forward import DeviceForward
from .metrics import ServiceMetrics
from .settings import Settings
from .tracing import record_batch

DEFAULT_CHECKPOINT = Path(__file__).parent / "default_model" / "jmvae-default.safetensors"


@dataclass(frozen=True)
class Encoded:
    """Image path output for one face."""

    probabilities: np.ndarray  # (A,) float32, p(w_i = 1 | x), JMVAE.attribute_probabilities


@dataclass(frozen=True)
class GenerateJob:
    attributes: np.ndarray  # (A,) float32 in [-2, 2]
    n: int
    zeta: float
    seed: int


@dataclass(frozen=True)
class Generated:
    average: np.ndarray  # (S, S, 3) uint8, decoded from the mean of q(z|w)
    faces: np.ndarray  # (n, S, S, 3) uint8, decoded from z = mean + σ ⊙ ε, ε ~ N(0, ζ I)


class Engine:
    """Owns the model; every forward pass runs on one worker thread, off the event loop."""

    def __init__(
        self,
        model: JMVAE,
        meta: CheckpointMeta,
        attribute_prior: AttributePrior,
        checkpoint: Path,
        device: torch.device,
        settings: Settings,
        metrics: ServiceMetrics,
    ) -> None:
        self.model = model
        self.meta = meta
        self.checkpoint = checkpoint
        self.device = device
        self.settings = settings
        self.metrics = metrics
        self.mode = meta.default_inference_mode
        self.attribute_names = meta.attribute_names
        # Attributes a request leaves out take their most likely value given the ones it sets; with none set, the
        # majority values: a typical face.
        self.attribute_prior = attribute_prior
        self.default_attributes = attribute_prior.typical
        self.ready = False
        self.forward = DeviceForward(
            model, self.mode, device, settings.precision, settings.max_batch_size, settings.max_faces
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jmvae-model")
        wait = settings.max_batch_wait_ms / 1000.0
        self.image_path: Batcher[np.ndarray, Encoded] = Batcher(
            "image",
            self.encode_batch,
            self._executor,
            settings.max_batch_size,
            wait,
            settings.max_queue,
            self._observe,
            record_batch,
            upstream_wait_s=settings.upstream_wait_ms / 1000.0,
            # While the crops under way keep every core this process may use busy, the model's wait idles none.
            upstream_busy=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        )
        self.attribute_path: Batcher[GenerateJob, Generated] = Batcher(
            "attributes",
            self.generate_batch,
            self._executor,
            settings.max_batch_size,
            wait,
            settings.max_queue,
            self._observe,
            record_batch,
        )

    @classmethod
    def load(cls, settings: Settings, metrics: ServiceMetrics) -> Engine:
        """Loads and validates the checkpoint; raises CheckpointError with a one-line reason."""
        device = resolve_device(settings.device)
        checkpoint = settings.checkpoint or DEFAULT_CHECKPOINT
        model, meta = load_jmvae(checkpoint, device)  # checks the attribute statistics too
        prior = AttributePrior.from_summary(meta.data, meta.attribute_names)
        return cls(model, meta, prior, checkpoint, device, settings, metrics)

    @property
    def image_size(self) -> int:
        return self.meta.model.image_size

    @property
    def version(self) -> str:
        """Which model this is, for X-Model-Version: the weights' sha256 the checkpoint records (and load_jmvae
        checks), shortened; any change of the weights changes it, and reading it costs nothing."""
        return self.meta.tensors_sha256[:12]

    # Lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        # Here, not in __init__: a model loaded beside the served one (a reload) takes the gauges when it serves.
        self.metrics.track(
            {"image": lambda: self.image_path.depth, "attributes": lambda: self.attribute_path.depth},
            self._device_memory,
        )
        self.image_path.start()
        self.attribute_path.start()

    async def warm_up(self) -> None:
        """Captures the CUDA graphs (on CUDA), then runs each path at batch sizes 1 and max before declaring
        readiness (allocator, kernels, caches)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.capture)
        face = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        job = GenerateJob(self.default_attributes, n=1, zeta=1.0, seed=0)
        for _ in range(self.settings.warmup_batches):
            for size in {1, self.settings.max_batch_size}:
                await loop.run_in_executor(self._executor, self.encode_batch, [face] * size)
                await loop.run_in_executor(self._executor, self.generate_batch, [job] * size)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.image_path.stop()
        await self.attribute_path.stop()
        self._executor.shutdown(wait=True)

    @torch.inference_mode()
    def capture(self) -> None:
        """On CUDA, captures the model paths' graphs (service/forward.py); on the model thread, or by a caller that
        runs the batch paths itself (bench/peers/common.py)."""
        self.forward.capture()

    # Public operations -----------------------------------------------------------------------------------
    async def encode(self, face: np.ndarray, deadline: float | None = None) -> Encoded:
        """`deadline` (time.monotonic()): when its batch must have started, else DeadlineExceeded."""
        return await self.image_path.submit(face, deadline)

    async def generate(self, job: GenerateJob, deadline: float | None = None) -> Generated:
        return await self.attribute_path.submit(job, deadline)

    def attribute_vector(self, values: dict[str, float]) -> np.ndarray:
        w = np.full(len(self.attribute_names), np.nan, np.float32)
        for name, value in values.items():
            w[self.attribute_names.index(name)] = value
        return self.attribute_prior.complete(w)

    # Batched model paths: on the model thread via the batchers, or called by a server that batches itself ------
    @torch.inference_mode()
    def encode_batch(self, faces: Sequence[np.ndarray]) -> list[Encoded]:
        return [Encoded(p) for p in self.forward.probabilities(faces)]

    @torch.inference_mode()
    def generate_batch(self, jobs: Sequence[GenerateJob]) -> list[Generated]:
        latent_dim = self.meta.model.latent_dim
        # Per-request generator on the CPU: the same seed gives the same faces whatever the batch and device.
        noise = [torch.randn((job.n, latent_dim), generator=torch.Generator().manual_seed(job.seed)) for job in jobs]
        w = np.stack([job.attributes for job in jobs])
        images = self.forward.faces(w, noise, [math.sqrt(job.zeta) for job in jobs])
        averages, rest = images[: len(jobs)], images[len(jobs) :]
        out, start = [], 0
        for i, job in enumerate(jobs):
            out.append(Generated(averages[i], rest[start : start + job.n]))
            start += job.n
        return out

    # Metrics ---------------------------------------------------------------------------------------------
    def _observe(self, path: str, stats: BatchStats) -> None:
        self.metrics.observe_batch(path, stats)

    def _device_memory(self) -> float:
        if self.device.type == "cuda":
            return float(torch.cuda.memory_allocated(self.device))
        with open(f"/proc/{os.getpid()}/statm") as f:
            return float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
