"""Validation metrics of a model on one split: the objective, the appendix's bounds and attribute accuracy."""

from __future__ import annotations

import numpy as np
import torch

from jmvae.model.bounds import importance_weighted_bounds
from jmvae.model.jmvae import JMVAE
from jmvae.model.preprocess import normalise

from .data import FaceArrays


@torch.inference_mode()
def evaluate(
    model: JMVAE,
    split: FaceArrays,
    train_prevalence: np.ndarray,
    alpha: float,
    k: int = 10,
    n_w: int = 10,
    max_examples: int = 1000,
    batch_size: int = 250,
    seed: int = 0,
) -> dict[str, float]:
    """Means over the first `max_examples` of `split` (nats; sums over all pixel values and attributes).

    attr_acc_* is the mean over attributes of the accuracy of p(w|z) at the mean of q(z|x), for both ways of
    inferring from the image alone; attr_acc_majority predicts each attribute's majority class in training.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    n = min(len(split), max_examples)
    sums: dict[str, float] = {}
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        x = normalise(torch.from_numpy(np.array(split.images[rows])).to(device))  # a copy: the cache is read-only
        w = torch.from_numpy(split.attributes[rows]).to(device).float()
        terms = model(x, w, alpha=alpha, beta=1.0, generator=generator).as_floats()
        bounds = importance_weighted_bounds(model, x, w, k=k, n_w=n_w, generator=generator)
        batch = {f"val_{name}": value for name, value in terms.items() if name != "loss"}
        batch |= {f"val_{name}": float(getattr(bounds, name).mean()) for name in
                  ("log_px_multiple", "log_px_single", "log_pxw", "log_px_given_w")}
        present = w > 0
        for mode in ("kl", "zero"):
            logits = model.decode_attributes(model.infer(x=x, mode=mode).mean)
            batch[f"val_attr_acc_{mode}"] = float(((logits > 0) == present).float().mean())
        majority = torch.from_numpy(train_prevalence >= 0.5).to(device)
        batch["val_attr_acc_majority"] = float((majority == present).float().mean())
        for name, value in batch.items():
            sums[name] = sums.get(name, 0.0) + value * len(x)
    model.train(was_training)
    return {name: total / n for name, total in sums.items()} if n else {}
