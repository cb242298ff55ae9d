"""`jmvae eval --out DIR`: the paper's evaluation of one checkpoint as metrics.json, report.md and figures."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from jmvae.model.attributes import AttributePrior
from jmvae.model.baselines import CVAE, VAE, AttributeClassifier
from jmvae.model.checkpoint import CheckpointMeta
from jmvae.model.editing import edit_face, read_attributes
from jmvae.model.jmvae import JMVAE
from jmvae.model.preprocess import denormalise, normalise
from jmvae.model.render import grid

from .data import FaceArrays
from .evaluate import coherence, evaluate_examples, roc_auc
from .metrics import CONVENTION, UNITS

# The attributes of the paper's Figure 1 and of this project's visual checks.
FIGURE_ATTRIBUTES = ("Male", "Smiling", "Eyeglasses", "Blond_Hair", "Black_Hair", "Bald", "Mustache", "Wearing_Hat")
# Table 1's comparisons: JMVAE-kl's bound minus the baseline's, example by example on the same faces. Paired, the
# spread of the faces themselves cancels; what is left is the models' difference and both estimates' noise.
LEADS = {
    "log_px_multiple_minus_vae": ("log_px_multiple", "vae_log_px_single", "log p(x): JMVAE-kl, q(z\\|x,w) − VAE"),
    "log_px_single_minus_vae": ("log_px_single", "vae_log_px_single", "log p(x): JMVAE-kl, q(z\\|x) − VAE"),
    "log_px_given_w_minus_cvae": ("log_px_given_w", "cvae_log_px_given_w", "log p(x\\|w): JMVAE-kl − CVAE"),
}


def write_report(
    model: JMVAE,
    meta: CheckpointMeta,
    split: FaceArrays,
    out: Path,
    k: int = 10,
    n_w: int = 10,
    max_examples: int = 1000,
    seed: int = 0,
    classifier: AttributeClassifier | None = None,
    baselines: tuple[VAE | CVAE, ...] = (),
    crop: str | None = None,
    batch_size: int = 250,
    mismatched: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Writes out/metrics.json, out/report.md and the figures; returns the flat metrics, named as in
    training/metrics.py. With a classifier, the coherence of generation and Figure 1(a) scored; with VAE/CVAE
    baselines, their bounds on the same examples (Table 1 side by side), each bound with its standard error over
    the examples and JMVAE-kl's lead over the baseline, paired. `mismatched` names a baseline kind ("vae",
    "cvae") evaluated although it differs from the checkpoint (jmvae eval --allow-mismatch), and how; its row is
    marked.

    Everything runs on the model's device, `batch_size` examples at a time (memory bounded on a whole split), with
    one read back to the host per batch."""
    out.mkdir(parents=True, exist_ok=True)
    mismatched = dict(mismatched or {})
    device = next(model.parameters()).device
    prevalence = np.array([meta.data["attribute_prevalence"][n] for n in meta.attribute_names])
    result = evaluate_examples(
        model, split, prevalence, meta.alpha, k=k, n_w=n_w, max_examples=max_examples, batch_size=batch_size, seed=seed
    )
    metrics, bounds = dict(result.metrics), dict(result.bounds)
    for baseline in baselines:
        scores = evaluate_examples(
            baseline, split, prevalence, 0.0, k=k, max_examples=max_examples, batch_size=batch_size, seed=seed
        )
        own, name = (
            ("log_px_single", "vae_log_px_single")
            if isinstance(baseline, VAE)
            else ("log_px_given_w", "cvae_log_px_given_w")
        )
        metrics[name], bounds[name] = scores.metrics[own], scores.bounds[own]
    metrics |= _spread(bounds)
    if classifier is not None:
        metrics |= coherence(model, classifier, split, max_examples, batch_size)
    n = min(len(split), max_examples)
    labels = split.attributes[:n] > 0
    means, logits = image_codes(model, split, n, batch_size)
    aucs = roc_auc(logits, labels)
    accs = ((logits > 0) == labels).mean(axis=0)
    for name, auc, acc in zip(meta.attribute_names, aucs, accs):
        metrics[f"attr_auc_kl/{name}"] = float(auc)
        metrics[f"attr_acc_kl/{name}"] = float(acc)
    metrics |= {"examples": n, "k": k, "n_w": n_w}
    names = list(meta.attribute_names)
    rows = figure_rows(AttributePrior.from_summary(meta.data, names), names)
    faces = attribute_faces(model, np.stack([w for _, w in rows]), seed)
    if classifier is not None:
        metrics |= _figure_scores(classifier, faces, rows, names)
    _save(
        out / "fig1a_attribute_faces.png",
        _upscale(grid(list(denormalise(faces.flatten(0, 1)).cpu().numpy()), columns=faces.shape[1])),
    )
    _save(
        out / "fig1b_latent_pca.png",
        _latent_pca(means, labels[:, names.index("Male")] if "Male" in names else labels[:, 0]),
    )
    x = normalise(torch.from_numpy(np.array(split.images[: min(n, 6)])).to(device))
    _save(out / "fig2_edit.png", _upscale(grid(list(edit_pipeline(model, x, names)), columns=4)))
    header: dict[str, object] = {"units": UNITS, "convention": CONVENTION}
    if mismatched:
        header["mismatches"] = mismatched
    (out / "metrics.json").write_text(json.dumps(header | metrics, indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(_markdown(meta, metrics, names, crop or meta.preprocessing.crop, mismatched))
    return metrics


def _spread(bounds: dict[str, np.ndarray]) -> dict[str, float]:
    """Each bound's standard error over the examples (`<name>_se`), and the LEADS with theirs."""
    values = dict(bounds) | {lead: bounds[a] - bounds[b] for lead, (a, b, _) in LEADS.items() if {a, b} <= set(bounds)}
    spread = {lead: float(values[lead].mean()) for lead in LEADS if lead in values}
    for name, per_example in values.items():
        spread[f"{name}_se"] = (
            float(per_example.std(ddof=1) / np.sqrt(len(per_example))) if len(per_example) > 1 else float("nan")
        )
    return spread


def _cell(metrics: dict[str, float], key: str, sign: str = "") -> str:
    if key not in metrics:
        return "not evaluated"
    return f"{metrics[key]:{sign}.1f} ± {metrics[f'{key}_se']:.1f}" if f"{key}_se" in metrics else f"{metrics[key]:.1f}"


def _save(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path)


def figure_rows(prior: AttributePrior, names: list[str]) -> list[tuple[str, np.ndarray]]:
    """Figure 1(a)'s attribute vectors: the typical face, then per attribute A what `POST /generate` asks of the
    model for {A: 2}: A emphasised, every other attribute at its most likely value given A in the training data."""
    rows = [("typical", prior.typical)]
    for name in FIGURE_ATTRIBUTES:
        if name in names:
            w = np.full(len(names), np.nan, np.float32)
            w[names.index(name)] = 2.0
            rows.append((name, prior.complete(w)))
    return rows


@torch.inference_mode()
def image_codes(model: JMVAE, split: FaceArrays, n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The means of q(z|x) (n, D) and the logits of p(w|z) at them (n, A) for the first n examples, batch by batch
    on the model's device, each batch read back to the host once."""
    device = next(model.parameters()).device
    means, logits = [], []
    for start in range(0, n, batch_size):
        x = normalise(torch.from_numpy(np.array(split.images[start : min(start + batch_size, n)])).to(device))
        mean = model.q_image(x).mean
        both = torch.cat([mean, model.decode_attributes(mean)], dim=1).float().cpu().numpy()
        means.append(both[:, : mean.shape[1]])
        logits.append(both[:, mean.shape[1] :])
    return np.concatenate(means), np.concatenate(logits)


@torch.inference_mode()
def attribute_faces(model: JMVAE, w: np.ndarray, seed: int, n_random: int = 6) -> torch.Tensor:
    """Figure 1(a)'s faces, (rows, 1 + n_random, 3, S, S) in [0, 1] on the model's device: per attribute vector the
    average face (mean of q(z|w)), then random faces z = z_mean + σ ⊙ ε (ε drawn on the CPU, so that the figure
    is the same on every device)."""
    q = model.q_attributes(torch.from_numpy(w).to(next(model.parameters()).device))
    eps = torch.randn((n_random, *q.mean.shape), generator=torch.Generator().manual_seed(seed)).to(q.mean.device)
    z = torch.cat([q.mean[None], q.mean[None] + q.std[None] * eps]).transpose(0, 1)  # (rows, 1 + n_random, D)
    return model.decode_image(z)


@torch.inference_mode()
def _figure_scores(
    classifier: AttributeClassifier, faces: torch.Tensor, rows: list[tuple[str, np.ndarray]], names: list[str]
) -> dict[str, float]:
    """Does each row of Figure 1(a) show its attribute? The classifier's probability of A on the row's average face
    and on the typical face, and the share of the row's random faces it reads as having A (faces quantised to
    uint8, as the service sends them)."""
    probabilities = torch.sigmoid(classifier.logits(normalise(denormalise(faces.flatten(0, 1))))).cpu().numpy()
    probabilities = probabilities.reshape(*faces.shape[:2], -1)
    scores = {}
    for row, (name, _) in enumerate(rows[1:], start=1):
        column = names.index(name)
        scores[f"fig1a_typical_p/{name}"] = float(probabilities[0, 0, column])
        scores[f"fig1a_average_p/{name}"] = float(probabilities[row, 0, column])
        scores[f"fig1a_random_share/{name}"] = float((probabilities[row, 1:, column] > 0.5).mean())
    return scores


@torch.inference_mode()
def edit_pipeline(model: JMVAE, x: torch.Tensor, names: list[str]) -> np.ndarray:
    """Figure 2's tiles, uint8 (4N, S, S, 3): per row the input x (on the model's device), x_mean (its predicted
    attributes), x′_mean (Smiling toggled) and x′ = x + x′_mean − x_mean, by the service's own arithmetic
    (jmvae.model.editing)."""
    w = read_attributes(torch.sigmoid(model.decode_attributes(model.q_image(x).mean)).cpu().numpy())
    w_prime = w.copy()
    column = names.index("Smiling") if "Smiling" in names else 0
    w_prime[:, column] = -2.0 * w[:, column]
    both = model.q_attributes(torch.from_numpy(np.concatenate([w, w_prime])).to(x.device)).mean
    # x, x_mean and x′_mean read back to the host at once: (3, N, S, S, 3)
    faces = denormalise(torch.cat([x, model.decode_image(both)])).cpu().numpy().reshape(3, len(x), *x.shape[2:], 3)
    tiles = np.stack([*faces, edit_face(*faces)], axis=1)  # (N, 4, S, S, 3)
    return tiles.reshape(-1, *tiles.shape[2:])


def _latent_pca(means: np.ndarray, colour: np.ndarray, size: int = 480) -> np.ndarray:
    """Figure 1(b): the first two principal components of the means of q(z|x), coloured by an attribute."""
    centred = means - means.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    points = centred @ vt[:2].T
    span = np.abs(points).max() or 1.0
    xy = (points / span * 0.45 + 0.5) * size
    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    for (px, py), present in zip(xy, colour):
        draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=(200, 40, 40) if present else (40, 80, 200))
    return np.asarray(canvas)


def _upscale(image: np.ndarray, factor: int = 2) -> np.ndarray:
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def _markdown(
    meta: CheckpointMeta, metrics: dict[str, float], names: list[str], crop: str, mismatched: dict[str, str]
) -> str:
    learned = meta.model.image_likelihood == "gaussian-learned"
    sigma = (
        f"σ learned per pixel value from {meta.model.image_sigma:g}"
        if learned
        else f"fixed σ = {meta.model.image_sigma:g}"
    )
    lines = [
        "# jmvae evaluation",
        "",
        f"Checkpoint trained on `{meta.data.get('name')}` for {meta.epoch} epochs (α = {meta.alpha}); "
        f"{metrics['examples']} examples, k = {metrics['k']}, N_w = {metrics['n_w']}; faces cropped: {crop}.",
        "",
        f"Convention: {CONVENTION}; p(x|z) Gaussian on pixels in [0, 1], {sigma}.",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    for key in (
        "log_px_multiple",
        "log_px_single",
        "log_pxw",
        "log_px_given_w",
        "elbo",
        "attr_acc_kl",
        "attr_auc_kl",
        "attr_acc_majority",
        "attr_acc_zero",
        "attr_auc_zero",
        "attr_acc_served",
        "attr_auc_served",
        "vae_log_px_single",
        "cvae_log_px_given_w",
        "coherence_auc",
        "coherence_acc",
        "attr_auc_classifier",
        "attr_acc_classifier",
    ):
        if key in metrics:
            lines.append(f"| {key} | {metrics[key]:.4g} |")
    marks = {kind: f" (**not like with like**: {reason})" for kind, reason in mismatched.items()}
    lines += [
        "",
        "Table 1 of the paper, on these examples (— where a model does not define the quantity); ± the standard "
        "error over the examples:",
        "",
        "| model | log p(x) | log p(x\\|w) |",
        "| --- | --- | --- |",
        f"| VAE{marks.get('vae', '')} | {_cell(metrics, 'vae_log_px_single')} | — |",
        f"| CVAE{marks.get('cvae', '')} | — | {_cell(metrics, 'cvae_log_px_given_w')} |",
        f"| JMVAE-kl, q(z\\|x,w) (multiple) | {_cell(metrics, 'log_px_multiple')} | "
        f"{_cell(metrics, 'log_px_given_w')} |",
        f"| JMVAE-kl, q(z\\|x) (single) | {_cell(metrics, 'log_px_single')} | — |",
    ]
    if mismatched:
        lines += [
            "",
            "Marked rows were evaluated with `--allow-mismatch`: they differ from this checkpoint as their mark "
            "says, so their numbers do not compare with JMVAE-kl's.",
        ]
    if any(lead in metrics for lead in LEADS):
        lines += [
            "",
            "JMVAE-kl's lead over each baseline, example by example on the same faces: mean ± standard error of "
            "the per-example difference (the spread of the faces cancels; the importance-sampling noise of both "
            "bounds stays in it). Positive: JMVAE-kl is higher, as in the paper.",
            "",
            "| comparison | lead, nats per image |",
            "| --- | --- |",
        ]
        lines += [
            f"| {label}{marks.get(lead.rsplit('_', 1)[1], '')} | {_cell(metrics, lead, '+')} |"
            for lead, (_, _, label) in LEADS.items()
            if lead in metrics
        ]
    if "coherence_auc" in metrics:
        lines += [
            "",
            f"Coherence: average faces generated from each example's attributes, scored by the package's "
            f"attribute classifier: mean ROC AUC {metrics['coherence_auc']:.3f} (the classifier on the real "
            f"images of the same examples: {metrics['attr_auc_classifier']:.3f}).",
        ]
    lines += ["", "| attribute | accuracy | ROC AUC |", "| --- | --- | --- |"]
    lines += [f"| {n} | {metrics[f'attr_acc_kl/{n}']:.3f} | {metrics[f'attr_auc_kl/{n}']:.3f} |" for n in names]
    lines += [
        "",
        "## Figures",
        "",
        "Figure 1(a): the typical face (first row), then per attribute A the attribute vector `POST /generate` uses"
        " for {A: 2}: A emphasised, every other attribute at its most likely value given A in the training data"
        " (the typical value for checkpoints that predate the pair counts); average face, then random faces"
        " z = z_mean + σ ⊙ ε.",
        "",
        "![Figure 1(a)](fig1a_attribute_faces.png)",
        "",
    ]
    if any(key.startswith("fig1a_") for key in metrics):
        lines += [
            "Figure 1(a) scored by the classifier: its probability of A on the typical face and on the row's"
            " average face, and the share of the row's random faces it reads as having A.",
            "",
            "| attribute | typical face | average face | random faces |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {name} | {metrics[f'fig1a_typical_p/{name}']:.2f} | {metrics[f'fig1a_average_p/{name}']:.2f} | "
            f"{metrics[f'fig1a_random_share/{name}']:.2f} |"
            for name in FIGURE_ATTRIBUTES
            if f"fig1a_average_p/{name}" in metrics
        ]
        lines.append("")
    lines += [
        "Figure 1(b): the first two principal components of the means of q(z|x), red where Male.",
        "",
        "![Figure 1(b)](fig1b_latent_pca.png)",
        "",
        "Figure 2: input x, x_mean, x′_mean with Smiling toggled, and x′ = x + x′_mean − x_mean.",
        "",
        "![Figure 2](fig2_edit.png)",
        "",
    ]
    return "\n".join(lines)
