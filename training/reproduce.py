"""`jmvae reproduce`: the paper's evaluation in one command. JMVAE-kl, its VAE and CVAE baselines and the coherence
classifier trained with one configuration, then evaluated together on the same examples into one report.

Each model is an ordinary run directory (OUT/jmvae, OUT/vae, ...), trained by the same Trainer as `jmvae train`
from OUT/config.json, so a reproduce is exactly the `jmvae train` and `jmvae eval` commands its report lists, and an
interrupted one resumes as those would: finished models are skipped, the interrupted one continues from its
last.safetensors.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from jmvae.model.baselines import CVAE, VAE, AttributeClassifier
from jmvae.model.checkpoint import CheckpointMeta, load_model, now_iso, read_checkpoint
from jmvae.model.comparison import Setup, mismatches
from jmvae.model.device import resolve_device
from jmvae.model.jmvae import JMVAE

from .config import CONFIG_FILE, TrainConfig, evaluation_config, load_config, resumed_config
from .data import FaceDataset
from .report import write_report
from .sources import load_dataset
from .trainer import FINAL, LAST, Trainer

# In training order: JMVAE-kl first, so a reproduce stopped early still holds the model the report is about.
MODELS = ("jmvae", "vae", "cvae", "classifier")
LOG = "reproduce.jsonl"  # one record per invocation: its command, what it trained, how long it took


def reproduce_config(out: Path, config_file: Path | None, overrides: dict[str, Any], resume: bool) -> TrainConfig:
    """The one configuration every model of OUT trains with: a new one from --config and the flags, or, with
    resume, OUT/config.json with flags that change only how (not what) is trained."""
    if resume:
        if config_file is not None:
            raise ValueError("--resume reads OUT/config.json; --config cannot be given with it")
        if not (out / CONFIG_FILE).is_file():
            raise ValueError(f"{out} holds no reproduce to resume (no {CONFIG_FILE})")
        config = resumed_config(out, overrides)
    else:
        if (out / CONFIG_FILE).exists():
            raise ValueError(f"{out} already holds a reproduce; pass --resume to continue it or choose another --out")
        config = load_config(config_file, overrides)
    if config.gan is not None:
        raise ValueError("reproduce trains the paper's Table 1 models, without the GAN term; drop [gan] from --config")
    # Every model takes its networks and likelihood from [model]; its kind is set per model.
    return model_config(config, "jmvae")


def model_config(config: TrainConfig, kind: str) -> TrainConfig:
    """The configuration with model.kind = kind: what `jmvae train --config OUT/config.json --model kind` reads."""
    return config.model_copy(update={"model": config.model.model_copy(update={"kind": kind})})


def reproduce(
    config: TrainConfig,
    out: Path,
    command: str,
    k: int = 10,
    n_w: int = 10,
    max_examples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Trains what OUT lacks of MODELS, then writes OUT/report.md, metrics.json and the figures; returns the
    report's metrics. Raises TrainingInterrupted (state saved) after a signal, ValueError when a model already in
    OUT was not trained like the others."""
    started, started_at = time.perf_counter(), now_iso()
    device = resolve_device(config.device)
    dataset = load_dataset(config)
    _check_existing(config, out, dataset)  # before anything in OUT changes
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n")
    trained: dict[str, int] = {}
    progress = _Progress(config, out)
    try:
        for kind in MODELS:
            trained[kind] = progress.train(kind, dataset, device)
    finally:
        _log(out, {"command": command, "started_at": started_at, "trained_epochs": trained}, started)
    return _evaluate(config, out, device, k, n_w, max_examples, seed)


def _evaluate(
    config: TrainConfig, out: Path, device: torch.device, k: int, n_w: int, max_examples: int, seed: int
) -> dict[str, float]:
    """What `jmvae eval --out OUT --vae --cvae --classifier` does with the four final checkpoints, on the data
    `jmvae eval` loads (the test split, val where there is none), and report.md's last section."""
    started = time.perf_counter()
    models = {kind: load_model(out / kind / FINAL, device) for kind in MODELS}
    (jmvae, meta), (vae, _), (cvae, _), (classifier, _) = (models[kind] for kind in MODELS)
    if not (
        isinstance(jmvae, JMVAE)
        and isinstance(vae, VAE)
        and isinstance(cvae, CVAE)
        and isinstance(classifier, AttributeClassifier)
    ):
        raise ValueError(f"{out}: a model directory holds a checkpoint of another kind")
    for kind in ("vae", "cvae"):  # jmvae eval's check, never waived here
        differences = mismatches(Setup.of(meta), Setup.of(models[kind][1]))
        if differences:
            raise ValueError(f"{out / kind / FINAL} differs from {out / 'jmvae' / FINAL}: {'; '.join(differences)}")
    saved = TrainConfig.model_validate(meta.training)
    dataset = load_dataset(
        evaluation_config(saved, config.data, meta.preprocessing, max_examples, seed, config.cache_dir, config.progress)
    )
    split = "test" if len(dataset.split("test")) else "val"
    tqdm.write(f"jmvae reproduce: evaluating the four models on {split}", file=sys.stderr)
    metrics = write_report(
        jmvae,
        meta,
        dataset.split(split),
        out,
        k=k,
        n_w=n_w,
        max_examples=max_examples,
        seed=seed,
        classifier=classifier,
        baselines=(vae, cvae),
        crop="none (synthetic faces are drawn framed)" if config.data == "synthetic" else meta.preprocessing.crop,
    )
    report = out / "report.md"
    metas = {kind: m for kind, (_, m) in models.items()}
    seconds = time.perf_counter() - started
    report.write_text(
        report.read_text() + _how_it_was_made(config, out, split, k, n_w, max_examples, seed, metas, seconds)
    )
    return metrics


def _check_existing(config: TrainConfig, out: Path, dataset: FaceDataset) -> None:
    """A model already in OUT must have been trained with this configuration on this data: its run's config.json
    may differ only in how it was trained, and its checkpoint in none of what mismatches() compares."""
    expected = Setup(model=config.model, preprocessing=config.preprocessing, content_key=dataset.content_key)
    for kind in MODELS:
        run_dir = out / kind
        path = next((run_dir / name for name in (FINAL, LAST) if (run_dir / name).is_file()), None)
        if path is None:
            continue
        meta = read_checkpoint(path).meta
        differences = mismatches(expected, Setup.of(meta))
        if differences:
            raise ValueError(
                f"{path} differs from this reproduce: {'; '.join(differences)}; move {run_dir} away to retrain it"
            )
        resumed_config(run_dir, model_config(config, kind).model_dump(mode="json"))
        if meta.epoch > config.epochs:
            raise ValueError(f"{path} has trained {meta.epoch} epochs, more than this reproduce's {config.epochs}")


class _Progress:
    """Trains the models one after another and says, after each epoch, which model and epoch it is on and an
    estimate of the time left: the epochs still to train, at the pace of the model in training (the baselines are
    cheaper than JMVAE-kl, so while it trains the estimate runs high)."""

    def __init__(self, config: TrainConfig, out: Path) -> None:
        self.config = config
        self.out = out
        self.pace: float | None = None  # seconds per epoch of the model in training, in this invocation
        self.kind = ""
        self.epoch_started = 0.0
        self.epochs_timed: list[float] = []

    def train(self, kind: str, dataset: FaceDataset, device: torch.device) -> int:
        """Trains `kind` to the configuration's epochs (resuming its run, skipping it when finished); returns the
        epochs trained now."""
        run_dir = self.out / kind
        epochs = self.config.epochs
        if (run_dir / FINAL).is_file() and read_checkpoint(run_dir / FINAL).meta.epoch == epochs:
            tqdm.write(f"jmvae reproduce: {kind} has trained its {epochs} epochs; skipped", file=sys.stderr)
            return 0
        trainer = Trainer(model_config(self.config, kind), run_dir, dataset, device)
        resume = (run_dir / LAST).is_file()
        self.kind, self.epochs_timed = kind, []
        first = read_checkpoint(run_dir / LAST).state_json.get("epoch", 0) if resume else 0
        tqdm.write(
            f"jmvae reproduce: {'resuming' if resume else 'training'} {kind} ({MODELS.index(kind) + 1}/{len(MODELS)}) "
            f"at epoch {first + 1}/{epochs}",
            file=sys.stderr,
        )
        self.epoch_started = time.perf_counter()
        trainer.fit(resume=resume, on_epoch=self._epoch_done)
        return trainer.epoch - first

    def _epoch_done(self, trainer: Trainer) -> None:
        now = time.perf_counter()
        self.epochs_timed.append(now - self.epoch_started)
        self.epoch_started = now
        pace = float(np.mean(self.epochs_timed))
        epochs = self.config.epochs
        later = MODELS[MODELS.index(self.kind) + 1 :]
        left = epochs - trainer.epoch + sum(epochs - _epochs_done(self.out / kind) for kind in later)
        tqdm.write(
            f"jmvae reproduce: {self.kind} ({MODELS.index(self.kind) + 1}/{len(MODELS)}) epoch {trainer.epoch}/{epochs}"
            f", {pace:.0f} s an epoch; about {_duration(left * pace)} left for the {left} epoch(s) to go at this pace",
            file=sys.stderr,
        )


def _epochs_done(run_dir: Path) -> int:
    for name in (FINAL, LAST):
        if (run_dir / name).is_file():
            return read_checkpoint(run_dir / name).meta.epoch
    return 0


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _log(out: Path, record: dict[str, Any], started: float) -> None:
    with open(out / LOG, "a") as f:
        f.write(json.dumps(record | {"seconds": round(time.perf_counter() - started, 1)}) + "\n")


def _how_it_was_made(
    config: TrainConfig,
    out: Path,
    split: str,
    k: int,
    n_w: int,
    max_examples: int,
    seed: int,
    metas: dict[str, CheckpointMeta],
    eval_seconds: float,
) -> str:
    """report.md's last section: what ran, as the reproduce invocations and as the equivalent jmvae commands."""
    records = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    final = {kind: str(out / kind / FINAL) for kind in MODELS}
    train = ["jmvae", "train", "--data", config.data, "--config", str(out / CONFIG_FILE)]
    trains = [shlex.join([*train, "--out", str(out / kind), "--model", kind]) for kind in MODELS]
    evaluate = ["jmvae", "eval", "--checkpoint", final["jmvae"], "--data", config.data, "--split", split]
    evaluate += ["--k", str(k), "--nw", str(n_w), "--max-examples", str(max_examples), "--seed", str(seed)]
    evaluate += ["--device", config.device, *(["--cache-dir", str(config.cache_dir)] if config.cache_dir else [])]
    evaluate += ["--out", str(out), "--vae", final["vae"], "--cvae", final["cvae"], "--classifier", final["classifier"]]
    lines = [
        "## How this was made",
        "",
        f"Every model trained {config.epochs} epoch(s) with the one configuration `{out / CONFIG_FILE}` (the model's "
        f"kind aside), seed {config.seed}, on `{config.data}`; evaluated on its {split} split. The invocations, "
        "with the epochs each trained and the wall-clock seconds of its training:",
        "",
        "```bash",
    ]
    lines += [
        f"{r['command']}  # {r['started_at']}: "
        + ", ".join(f"{kind} {n}" for kind, n in r["trained_epochs"].items())
        + f" epoch(s), {r['seconds']:.0f} s"
        for r in records
    ]
    lines += [
        "```",
        "",
        "They are these commands, which give the same checkpoints, metrics.json and figures (and report.md without "
        f"this section; the evaluation took {eval_seconds:.0f} s here):",
        "",
        "```bash",
        *trains,
        shlex.join(evaluate),
        "```",
        "",
        "| model | epochs | steps | package version | trained until |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {kind} | {m.epoch} | {m.step} | {m.package_version} | {m.created_at} |" for kind, m in metas.items()),
        "",
    ]
    return "\n".join(lines)
