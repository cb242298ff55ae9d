"""Validation metrics of a model on one split: the objective, the appendix's bounds and attribute accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from jmvae.model.baselines import CVAE, VAE, AttributeClassifier, Model
from jmvae.model.bounds import cvae_log_px_given_w, importance_weighted_bounds, vae_log_px
from jmvae.model.jmvae import JMVAE, TERM_NAMES
from jmvae.model.preprocess import denormalise, normalise

from .data import FaceArrays


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]  # what `evaluate` returns
    bounds: dict[str, np.ndarray]  # each importance-weighted bound of `metrics` per example, (n,), in nats


def evaluate(
    model: Model,
    split: FaceArrays,
    train_prevalence: np.ndarray,
    alpha: float,
    k: int = 10,
    n_w: int = 10,
    max_examples: int = 1000,
    batch_size: int = 250,
    seed: int = 0,
) -> dict[str, float]:
    """evaluate_examples' means alone."""
    return evaluate_examples(model, split, train_prevalence, alpha, k, n_w, max_examples, batch_size, seed).metrics


@torch.inference_mode()
def evaluate_examples(
    model: Model,
    split: FaceArrays,
    train_prevalence: np.ndarray,
    alpha: float,
    k: int = 10,
    n_w: int = 10,
    max_examples: int = 1000,
    batch_size: int = 250,
    seed: int = 0,
) -> Evaluation:
    """Means over the first `max_examples` of `split` (nats; sums over all pixel values and attributes), named as
    in training/metrics.py's METRICS.

    A VAE baseline gets its objective and log p(x) (q(z|x)); a CVAE baseline its objective and log p(x|w); the
    attribute classifier attr_acc_classifier and attr_auc_classifier.
    For a JMVAE, all bounds, and attr_acc_* and attr_auc_*: means over attributes of the accuracy and ROC AUC of
    p(w|z) at the mean of q(z|x), for both ways of inferring from the image alone (the AUC over attributes with
    both classes present), and attr_*_served for the service's answer (JMVAE.attribute_probabilities: q(z|x) over
    six views of the face); attr_acc_majority predicts each attribute's majority class in training.
    The bounds are also kept per example, for their spread over the examples (jmvae eval --out's Table 1).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    n = min(len(split), max_examples)
    sums: dict[str, torch.Tensor] = {}  # on the device, weighted by batch size
    scores: dict[str, list[np.ndarray]] = {}
    bounds: dict[str, list[torch.Tensor]] = {}
    majority = torch.from_numpy(train_prevalence >= 0.5).to(device)
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        x = normalise(torch.from_numpy(np.array(split.images[rows])).to(device))  # a copy: the cache is read-only
        w = torch.from_numpy(split.attributes[rows]).to(device).float()
        batch, estimates, predictions = batch_scores(model, x, w, alpha, k, n_w, generator, majority)
        for name, values in estimates.items():  # per example, for the spread over the examples
            bounds.setdefault(name, []).append(values.double().cpu())
        for name, value in batch.items():
            sums[name] = sums[name] + value * len(x) if name in sums else value * len(x)
        if predictions:  # one read back to the host per batch: every source's logits at once
            logits = torch.stack([p.float() for p in predictions.values()]).cpu().numpy()
            for source, part in zip(predictions, logits, strict=True):
                scores.setdefault(source, []).append(part)
    model.train(was_training)
    if not n:
        return Evaluation({}, {})
    names = list(sums)
    metrics = {name: total / n for name, total in zip(names, torch.stack(list(sums.values())).tolist())}
    labels = split.attributes[:n] > 0
    for mode, parts in scores.items():
        aucs = roc_auc(np.concatenate(parts), labels)
        metrics[f"attr_auc_{mode}"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    return Evaluation(metrics, {name: torch.cat(parts).numpy() for name, parts in bounds.items()})


def batch_scores(
    model: Model,
    x: torch.Tensor,
    w: torch.Tensor,
    alpha: float,
    k: int,
    n_w: int,
    generator: torch.Generator | None,
    majority: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One batch of `evaluate`, all on the model's device: means over the batch of the objective's terms, bounds
    and accuracies as 0-dim float32 tensors, each importance-weighted bound per example (B,), and each prediction
    source's attribute logits (B, A)."""
    terms = model(x, w, alpha=alpha, beta=1.0, generator=generator).as_tensor()
    batch = {name: value for name, value in zip(TERM_NAMES, terms, strict=True) if name != "loss"}
    estimates: dict[str, torch.Tensor] = {}
    if isinstance(model, VAE):
        estimates["log_px_single"] = vae_log_px(model, x, k=k, generator=generator)
    elif isinstance(model, CVAE):
        estimates["log_px_given_w"] = cvae_log_px_given_w(model, x, w, k=k, generator=generator)
    predictions: dict[str, torch.Tensor] = {}
    if isinstance(model, JMVAE):
        found = importance_weighted_bounds(model, x, w, k=k, n_w=n_w, generator=generator)
        estimates = {
            name: getattr(found, name) for name in ("log_px_multiple", "log_px_single", "log_pxw", "log_px_given_w")
        }
        predictions = {mode: model.decode_attributes(model.infer(x=x, mode=mode).mean) for mode in ("kl", "zero")}
        # What POST /attributes answers: the same q(z|x), averaged over views of the face.
        predictions["served"] = torch.logit(model.attribute_probabilities(x, mode="kl").double()).float()
    elif isinstance(model, AttributeClassifier):
        predictions = {"classifier": model.logits(x)}
    present = w > 0
    for source, logits in predictions.items():
        batch[f"attr_acc_{source}"] = ((logits > 0) == present).float().mean()
    if predictions:
        batch["attr_acc_majority"] = (majority == present).float().mean()
    batch |= {name: values.mean() for name, values in estimates.items()}
    return {name: value.float() for name, value in batch.items()}, estimates, predictions


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC AUC per column, as the Mann–Whitney U statistic with tied scores given their average rank; NaN where
    a column has only one class."""
    out = np.full(scores.shape[1], np.nan)
    for j in range(scores.shape[1]):
        positive = labels[:, j].astype(bool)
        n_pos = int(positive.sum())
        n_neg = len(positive) - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        _, inverse, counts = np.unique(scores[:, j], return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]
        out[j] = (ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return out


@torch.inference_mode()
def coherence(
    model: JMVAE, classifier: AttributeClassifier, split: FaceArrays, max_examples: int = 1000, batch_size: int = 250
) -> dict[str, float]:
    """Do generated faces show the attributes they were generated from? Each example's attributes → mean of
    q(z|w) → average face, quantised to uint8 as the service sends it → the classifier's logits, scored against
    those attributes (coherence_auc, coherence_acc). The classifier's own scores on the real images of the same
    examples, the attr_auc_classifier and attr_acc_classifier that `evaluate` gives the classifier, say how far to
    trust it."""
    model.eval()
    classifier.eval()
    device = next(model.parameters()).device
    n = min(len(split), max_examples)
    generated, real = [], []
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        w = torch.from_numpy(split.attributes[rows]).to(device).float()
        faces = normalise(denormalise(model.decode_image(model.q_attributes(w).mean)))
        x = normalise(torch.from_numpy(np.array(split.images[rows])).to(device))
        both = torch.stack([classifier.logits(faces), classifier.logits(x)]).float().cpu().numpy()  # one read
        generated.append(both[0])
        real.append(both[1])
    labels = split.attributes[:n] > 0
    metrics = {}
    for auc, acc, parts in (
        ("coherence_auc", "coherence_acc", generated),
        ("attr_auc_classifier", "attr_acc_classifier", real),
    ):
        logits = np.concatenate(parts)
        metrics[auc] = float(np.nanmean(roc_auc(logits, labels)))
        metrics[acc] = float(((logits > 0) == labels).mean())
    return metrics
