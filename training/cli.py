"""The training commands of `jmvae` (jmvae.cli): train, eval, info and export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from jmvae.model.checkpoint import read_checkpoint


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "data": args.data,
        "epochs": args.epochs,
        "alpha": args.alpha,
        "device": args.device,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "cache_dir": args.cache_dir,
        "workers": args.workers,
        "compile": args.compile,
        "progress": False if args.no_progress else None,
        "model": {"kind": args.model} if args.model else None,
        "gan": {} if args.gan else None,  # merged into a [gan] table of --config, or GanConfig's defaults
    }
    return {k: v for k, v in pairs.items() if v is not None}


def _train(args: argparse.Namespace) -> int:
    # Imported here so `jmvae --help` and `jmvae info` stay fast.
    import torch

    from jmvae.model.device import resolve_device

    from .config import load_config, resumed_config
    from .distributed import init_distributed, shutdown_distributed
    from .sources import load_dataset
    from .trainer import Trainer, TrainingInterrupted

    run_dir: Path = args.out
    overrides = _train_overrides(args)
    if args.resume:
        if args.config:
            raise ValueError("--resume reads RUN_DIR/config.json; --config cannot be given with it")
        config = resumed_config(run_dir, overrides)
    else:
        if (run_dir / "last.safetensors").exists():
            raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        config = load_config(args.config, overrides)
    device = resolve_device(config.device)
    ctx = init_distributed(device)
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)
    try:
        dataset = load_dataset(config)
        trainer = Trainer(config, run_dir, dataset, device, ctx)
        try:
            final = trainer.fit(resume=args.resume)
        except TrainingInterrupted as e:
            print(f"jmvae train: {e}", file=sys.stderr)
            return 128 + e.signum
    finally:
        shutdown_distributed(ctx)
    if ctx.is_main:
        print(json.dumps({"checkpoint": str(final), "epoch": trainer.epoch, "step": trainer.step} | trainer.metrics))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import numpy as np

    from jmvae.model.checkpoint import load_model
    from jmvae.model.comparison import Setup, mismatches
    from jmvae.model.device import resolve_device
    from jmvae.model.jmvae import JMVAE

    from .config import TrainConfig, evaluation_config
    from .evaluate import evaluate
    from .metrics import CONVENTION, UNITS
    from .report import write_report
    from .sources import load_dataset

    device = resolve_device(args.device)
    model, meta = load_model(args.checkpoint, device)
    saved = TrainConfig.model_validate(meta.training)
    # The checkpoint's own preprocessing, so the data is cropped exactly as in training (and, for crop = detector,
    # as the service crops uploads), unless --crop asks for the other crop.
    preprocessing = meta.preprocessing.model_copy(update={"crop": args.crop or meta.preprocessing.crop})
    crop = {"crop": "none (synthetic faces are drawn framed)" if args.data == "synthetic" else preprocessing.crop}
    config = evaluation_config(
        saved, args.data, preprocessing, args.max_examples, args.seed, args.cache_dir, not args.no_progress
    )
    dataset = load_dataset(config)
    if args.out is not None:
        if not isinstance(model, JMVAE):
            raise ValueError("--out writes the JMVAE report and figures; baselines print their metrics only")
        extras, mismatched = {}, {}
        for flag, kind in (("classifier", "classifier"), ("vae", "vae"), ("cvae", "cvae")):
            path = getattr(args, flag)
            if path is not None:
                extras[flag], extra_meta = load_model(path, device)
                if extra_meta.model.kind != kind or extra_meta.model.image_size != meta.model.image_size:
                    raise ValueError(
                        f"--{flag} {path}: a {extra_meta.model.kind} at {extra_meta.model.image_size} px, "
                        f"expected a {kind} at {meta.model.image_size} px"
                    )
                # The classifier only judges generated faces; a baseline's bounds must be in the checkpoint's terms.
                differences = mismatches(Setup.of(meta), Setup.of(extra_meta)) if kind != "classifier" else []
                if differences and not args.allow_mismatch:
                    raise ValueError(
                        f"--{flag} {path} is not like with like with {args.checkpoint}: {'; '.join(differences)} "
                        "(--allow-mismatch evaluates it anyway, its row marked)"
                    )
                if differences:
                    mismatched[kind] = "; ".join(differences)
        report = write_report(
            model,
            meta,
            dataset.split(args.split),
            args.out,
            k=args.k,
            n_w=args.nw,
            max_examples=args.max_examples,
            seed=args.seed,
            classifier=extras.get("classifier"),
            baselines=tuple(extras[b] for b in ("vae", "cvae") if b in extras),
            crop=crop["crop"],
            mismatched=mismatched,
        )
        print(
            json.dumps(
                {"out": str(args.out)}
                | crop
                | ({"mismatches": mismatched} if mismatched else {})
                | {k: v for k, v in report.items() if "/" not in k},
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    prevalence = np.array([meta.data["attribute_prevalence"][n] for n in meta.attribute_names])
    metrics = evaluate(
        model,
        dataset.split(args.split),
        prevalence,
        meta.alpha,
        k=args.k,
        n_w=args.nw,
        max_examples=args.max_examples,
        seed=args.seed,
    )
    print(
        json.dumps(
            {"checkpoint": str(args.checkpoint), "data": args.data, "split": args.split}
            | crop
            | {
                "examples": min(len(dataset.split(args.split)), args.max_examples),
                "units": UNITS,
                "convention": CONVENTION,
            }
            | metrics,
            indent=2,
            ensure_ascii=False,
        )
    )
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    import shlex

    from .reproduce import reproduce, reproduce_config
    from .trainer import TrainingInterrupted

    overrides = {
        k: v
        for k, v in {
            "data": args.data,
            "epochs": args.epochs,
            "device": args.device,
            "cache_dir": args.cache_dir,
            "progress": False if args.no_progress else None,
        }.items()
        if v is not None
    }
    config = reproduce_config(args.out, args.config, overrides, args.resume)
    flags = {"--config": args.config, "--epochs": args.epochs, "--device": args.device, "--cache-dir": args.cache_dir}
    command = ["jmvae", "reproduce", "--data", args.data, "--out", str(args.out)]
    command += [a for flag, value in flags.items() if value is not None for a in (flag, str(value))]
    command += [
        a
        for flag, value in (
            ("--k", args.k),
            ("--nw", args.nw),
            ("--max-examples", args.max_examples),
            ("--seed", args.seed),
        )
        for a in (flag, str(value))
    ]
    command += [flag for flag, on in (("--no-progress", args.no_progress), ("--resume", args.resume)) if on]
    try:
        report = reproduce(
            config, args.out, shlex.join(command), k=args.k, n_w=args.nw, max_examples=args.max_examples, seed=args.seed
        )
    except TrainingInterrupted as e:
        print(f"jmvae reproduce: {e}", file=sys.stderr)
        return 128 + e.signum
    print(json.dumps({"out": str(args.out)} | {k: v for k, v in report.items() if "/" not in k}, indent=2))
    return 0


def _info(args: argparse.Namespace) -> int:
    checkpoint = read_checkpoint(args.checkpoint)
    print(checkpoint.meta.model_dump_json(indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from jmvae.model.checkpoint import export_checkpoint

    meta = export_checkpoint(
        args.checkpoint,
        args.out,
        {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype],
    )
    print(json.dumps({"checkpoint": str(args.out), "bytes": args.out.stat().st_size, "epoch": meta.epoch}))
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """train, eval, info and export, onto the `jmvae` command's sub-parsers (jmvae.cli)."""

    train = commands.add_parser("train", help="train a model and write checkpoints into RUN_DIR")
    train.add_argument("--data", help="CelebA root (img_align_celeba/, list_attr_celeba.txt, ...) or 'synthetic'")
    train.add_argument("--out", type=Path, required=True, metavar="RUN_DIR")
    train.add_argument("--config", type=Path, help="TOML or JSON file of TrainConfig fields")
    train.add_argument("--epochs", type=int)
    train.add_argument("--alpha", type=float, help="JMVAE-kl weight α; 0 trains plain JMVAE")
    train.add_argument(
        "--model",
        choices=["jmvae", "vae", "cvae", "classifier"],
        help="JMVAE (default), the paper's VAE / CVAE baseline on the same networks, or the attribute "
        "classifier that `jmvae eval --classifier` scores generated faces with",
    )
    train.add_argument(
        "--gan",
        action="store_true",
        help="add the paper's GAN combination: a discriminator against decoded faces (see [gan] in "
        "the config for its weight and learning rate)",
    )
    train.add_argument("--device", choices=["auto", "cpu", "cuda"])
    train.add_argument("--seed", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--cache-dir", type=Path)
    train.add_argument("--workers", type=int)
    train.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    train.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last.safetensors")
    train.set_defaults(func=_train)

    evaluation = commands.add_parser("eval", help="validation metrics of a checkpoint on a data split")
    evaluation.add_argument("--checkpoint", type=Path, required=True)
    evaluation.add_argument("--data", required=True, help="CelebA root or 'synthetic'")
    evaluation.add_argument("--split", choices=["train", "val", "test"], default="val")
    evaluation.add_argument("--k", type=int, default=10, help="importance samples of the bounds")
    evaluation.add_argument("--nw", type=int, default=10, help="prior samples for log p(w)")
    evaluation.add_argument("--max-examples", type=int, default=1000)
    evaluation.add_argument("--seed", type=int, default=0)
    evaluation.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    evaluation.add_argument("--cache-dir", type=Path)
    evaluation.add_argument(
        "--crop",
        choices=["detector", "aligned"],
        help="how CelebA faces are cropped: around each image's detected face, as the service "
        "crops uploads, or CelebA's fixed aligned box; default: the checkpoint's own crop",
    )
    evaluation.add_argument("--no-progress", action="store_true")
    evaluation.add_argument("--out", type=Path, help="write metrics.json, report.md and the figures here")
    evaluation.add_argument(
        "--classifier",
        type=Path,
        help="with --out: a `--model classifier` checkpoint that scores generated faces (coherence_auc)",
    )
    evaluation.add_argument("--vae", type=Path, help="with --out: a VAE baseline for Table 1")
    evaluation.add_argument("--cvae", type=Path, help="with --out: a CVAE baseline for Table 1")
    evaluation.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="evaluate a baseline whose networks, likelihood, preprocessing or training data differ from the "
        "checkpoint's, its Table 1 row marked, instead of refusing it",
    )
    evaluation.set_defaults(func=_eval)

    repro = commands.add_parser(
        "reproduce",
        help="train JMVAE-kl, the VAE and CVAE baselines and the coherence classifier with one configuration, "
        "then evaluate them together into OUT/report.md",
    )
    repro.add_argument("--data", required=True, help="CelebA root or 'synthetic'")
    repro.add_argument("--out", type=Path, required=True, metavar="OUT")
    repro.add_argument("--config", type=Path, help="TOML or JSON file of TrainConfig fields, for all four models")
    repro.add_argument("--epochs", type=int, help="epochs of each model (raise it on --resume to train on)")
    repro.add_argument("--device", choices=["auto", "cpu", "cuda"])
    repro.add_argument("--cache-dir", type=Path)
    repro.add_argument("--k", type=int, default=10, help="importance samples of the bounds")
    repro.add_argument("--nw", type=int, default=10, help="prior samples for log p(w)")
    repro.add_argument("--max-examples", type=int, default=1000, help="examples of the evaluated split")
    repro.add_argument("--seed", type=int, default=0, help="seed of the evaluation (training's is in the config)")
    repro.add_argument("--no-progress", action="store_true")
    repro.add_argument(
        "--resume", action="store_true", help="continue OUT: skip finished models, resume the interrupted one"
    )
    repro.set_defaults(func=_reproduce)

    info = commands.add_parser("info", help="validate a checkpoint and print its metadata")
    info.add_argument("checkpoint", type=Path)
    info.set_defaults(func=_info)
    export = commands.add_parser("export", help="write a compact weights-only copy of a checkpoint (fp16 default)")
    export.add_argument("checkpoint", type=Path)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    export.set_defaults(func=_export)
