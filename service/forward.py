"""The served model's tensor work on its device: both paths from host arrays to host arrays, one batch at a time.

Inputs travel as uint8 pixels or float32 attributes, are normalised on the device, run at the served precision
(autocast: fp32 weights, bf16 or fp16 matrix work) and come back once per batch, faces already as uint8. On CUDA
the host buffers are pinned and copied without blocking the thread, and each fixed-shape network (the image
encoder over six views, q(z|w), the decoder) is captured as a CUDA graph per batch-size bucket, so a batch costs
a few graph launches instead of hundreds of kernel launches from Python. On the CPU the same functions run eagerly
at each batch's own size (no padding, no capture).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from jmvae.model.jmvae import JMVAE, InferenceMode
from jmvae.model.networks import fold_batch_norms
from jmvae.model.preprocess import denormalise, normalise

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

Step = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


def buckets(largest: int) -> list[int]:
    """The captured batch sizes: powers of two, up to the first that holds `largest`."""
    sizes = [1]
    while sizes[-1] < largest:
        sizes.append(sizes[-1] * 2)
    return sizes


class Captured:
    """`step` as a CUDA graph per bucket of its input's first dimension. A call copies its (pinned host) input
    into the bucket's static input, pads with whatever the rows held before (each row's answer depends on its
    row alone: the networks run in eval mode), replays the graph and returns its outputs' first rows, which stay
    valid until the next call. A batch above the largest bucket runs `step` eagerly."""

    def __init__(
        self, step: Step, row: tuple[int, ...], dtype: torch.dtype, device: torch.device, largest: int
    ) -> None:
        self.step, self.device, self.sizes = step, device, buckets(largest)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        pool = torch.cuda.graph_pool_handle()  # one memory pool for all buckets, largest captured first
        for size in reversed(self.sizes):
            static = torch.zeros((size, *row), dtype=dtype, device=device)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # cuDNN and cuBLAS choose their kernels before the capture
                for _ in range(3):
                    step(static)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                outputs = step(static)
            self.graphs[size] = (graph, static, outputs)

    def __call__(self, host: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(host)
        if n > self.sizes[-1]:
            return self.step(host.to(self.device, non_blocking=True))
        graph, static, outputs = self.graphs[next(size for size in self.sizes if size >= n)]
        static[:n].copy_(host, non_blocking=True)
        graph.replay()
        return tuple(output[:n] for output in outputs)


def _served(model: JMVAE, device: torch.device) -> JMVAE:
    """The networks as served: batch norms folded into their layers, and on the CPU in channels-last layout, which
    oneDNN's convolutions run without converting layouts (docs/benchmarks.md, "Serving", item 13). CUDA keeps
    NCHW: not measured there."""
    served = fold_batch_norms(model)
    if device.type == "cuda":
        return served
    return served.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # accepted, not in the stubs


class DeviceForward:
    """The image path (faces → attribute probabilities) and the attribute path (attributes and noise → faces)."""

    def __init__(
        self, model: JMVAE, mode: InferenceMode, device: torch.device, precision: str, max_batch: int, max_faces: int
    ) -> None:
        self.model, self.mode, self.device = _served(model, device), mode, device
        self.dtype = PRECISIONS[precision]
        self.cuda = device.type == "cuda"
        self.max_batch = max_batch
        self.max_latents = max_batch * (1 + max_faces)  # the averages and every job's random faces
        size, names = model.config.image_size, model.config.n_attributes
        self._rows = {"encode": ((size, size, 3), torch.uint8), "posterior": ((names,), torch.float32)}
        self._rows["decode"] = ((model.config.latent_dim,), torch.float32)
        self.steps: dict[str, Step] = {"encode": self._encode, "posterior": self._posterior, "decode": self._decode}

    # The networks, on device tensors ------------------------------------------------------------------------
    def _precision(self) -> AbstractContextManager[object]:
        # No cast cache: a captured graph must not hold casts that autocast frees when its context ends.
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False)

    def _encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with self._precision():
            return (self.model.attribute_probabilities(normalise(pixels), mode=self.mode).float(),)

    def _posterior(self, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with self._precision():
            q = self.model.infer(w=w, mode=self.mode)
            return q.mean.float(), q.std.float()

    def _decode(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with self._precision():
            return (denormalise(self.model.decode_image(z)),)

    # Lifecycle -------------------------------------------------------------------------------------------------
    def capture(self) -> None:
        """On CUDA, every step as graphs for each bucket up to its largest batch; on the CPU nothing to do."""
        if not self.cuda:
            return
        largest = {"encode": self.max_batch, "posterior": self.max_batch, "decode": self.max_latents}
        for name, (row, dtype) in self._rows.items():
            eager = self.steps[name]
            self.steps[name] = Captured(eager, row, dtype, self.device, largest[name])

    # Host arrays in and out --------------------------------------------------------------------------------
    def _host(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        # Pinned memory comes from PyTorch's caching host allocator: after the first batches it is reused.
        return torch.empty(shape, dtype=dtype, pin_memory=self.cuda)

    def _run(self, name: str, host: torch.Tensor) -> tuple[torch.Tensor, ...]:
        step = self.steps[name]
        return step(host) if isinstance(step, Captured) else step(host.to(self.device, non_blocking=True))

    def _read(self, result: torch.Tensor) -> np.ndarray:
        """One copy back per batch; a copy of the (reused) pinned block, so that answers outlive the next batch."""
        if not self.cuda:
            return result.cpu().numpy()
        host = self._host(tuple(result.shape), result.dtype)
        host.copy_(result, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host.numpy().copy()

    def probabilities(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 (S, S, 3) faces → float32 (B, A) p(w_i = 1 | x), JMVAE.attribute_probabilities."""
        host = self._host((len(faces), *faces[0].shape), torch.uint8)
        pixels = host.numpy()
        for i, face in enumerate(faces):
            pixels[i] = face
        return self._read(self._run("encode", host)[0])

    def faces(self, w: np.ndarray, noise: Sequence[torch.Tensor], scales: Sequence[float]) -> np.ndarray:
        """Attribute vectors (B, A) → uint8 (B + Σn, S, S, 3): the faces decoded from the means of q(z|w), then for
        each b its z = mean_b + σ_b · scale_b · ε for every row ε of noise[b] (n_b, D)."""
        host = self._host(w.shape, torch.float32)
        host.numpy()[:] = w
        mean, std = self._run("posterior", host)
        latents = [mean]
        counts = [len(eps) for eps in noise]
        if sum(counts):
            eps = self._host((sum(counts), mean.shape[1]), torch.float32)
            torch.cat(list(noise), out=eps)
            rows = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(self.device)
            scale = torch.tensor(scales, dtype=torch.float32).to(self.device)[rows, None]
            eps_device = eps.to(self.device, non_blocking=True)
            latents.append(mean[rows] + std[rows] * scale * eps_device)
        z = torch.cat(latents)
        return self._read(self._run("decode", z)[0])
