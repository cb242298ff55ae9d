"""Training speed of JMVAE-kl, our trainer against MultiVae's JMVAE, on the same data, networks and device.

    .venv/bin/python bench/train_speed.py --data /path/to/celeba [--device auto|cpu|cuda] [--json FILE]

In one run: (a) images/s of our trainer per batch size and of MultiVae's JMVAE (bench/multivae_jmvae.py in
bench/.venv-multivae, built by bench/setup_multivae.sh) per batch size, (b) a profile of our training loop, and (c)
the validation bounds both reach after a fixed training time. Both sides train the paper's networks (or
--model-config) with the same α, learning rate, seed (hence initial weights), warm-up length and images per epoch.

Our side runs through the Trainer's public API: `fit()` one epoch at a time, each epoch's images/s read from the
train record the loop itself writes to metrics.jsonl (validation and checkpoint saving are outside it). MultiVae's
side times its BaseTrainer.train_step (its epoch loop, without its per-epoch model copy). The configurations take
turns epoch by epoch, so that on a shared machine a change of load falls on all of them. The first epoch of each
carries the warm-up (allocator, cuDNN autotuning, torch.compile) and is reported apart.

The bound phase evaluates both with training/evaluate.py on the same validation images (k importance samples; nats
per image, summed over all 3·64·64 pixel values and 40 attributes): our model as the trainer's own validation does,
MultiVae's from a weight snapshot after each epoch, which is possible because its networks are ours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from gpu_sampler import GpuUtilisation
from torch.profiler import ProfilerActivity, profile

from jmvae.model.config import ModelConfig
from jmvae.model.device import resolve_device
from jmvae.model.jmvae import JMVAE
from jmvae.training.config import TrainConfig
from jmvae.training.data import FaceArrays, FaceDataset
from jmvae.training.evaluate import evaluate
from jmvae.training.sources import load_dataset
from jmvae.training.trainer import METRICS, Trainer

ROOT = Path(__file__).resolve().parent.parent
MULTIVAE_PYTHON = ROOT / "bench" / ".venv-multivae" / "bin" / "python"
# Bounds compared between the two sides (named as in training/metrics.py).
BOUNDS = ("elbo", "log_pxw", "log_px_single")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {message}", file=sys.stderr, flush=True)


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def subset(dataset: FaceDataset, n_train: int | None, n_val: int) -> FaceDataset:
    """The first n_train training images (all when None) and the first n_val validation images; no test split."""
    train, val = dataset.split("train"), dataset.split("val")
    rows = slice(None, n_train)
    empty = FaceArrays.empty(train.images.shape[1], train.attributes.shape[1])
    splits = {
        "train": FaceArrays(train.images[rows], train.attributes[rows]),
        "val": FaceArrays(val.images[:n_val], val.attributes[:n_val]) if n_val else empty,
        "test": empty,
    }
    return FaceDataset(dataset.name, dataset.content_key, dataset.attribute_names, splits)


class Ours:
    """Our Trainer, advanced one epoch per call through its public API: fit() trains up to config.epochs and
    keeps its state in memory between calls."""

    name = "ours"

    def __init__(self, config: TrainConfig, dataset: FaceDataset, device: torch.device) -> None:
        self.run_dir = tempfile.TemporaryDirectory()
        self.trainer = Trainer(config.model_copy(update={"epochs": 1}), Path(self.run_dir.name), dataset, device)
        self.batch_size, self.device = config.batch_size, device
        self.images_per_epoch = self.trainer.steps_per_epoch * config.batch_size
        self.precision = "bf16 autocast" if self.trainer.autocast == torch.bfloat16 else "fp32"
        self.gpu = GpuUtilisation(device.index or 0)

    def records(self, kind: str) -> list[dict[str, Any]]:
        with open(self.trainer.run_dir / METRICS) as f:
            return [r for r in map(json.loads, f) if r["kind"] == kind]

    def train_epoch(self, sample_gpu: bool = False) -> float:
        """Seconds of the training loop, as the loop measured them."""
        trainer = self.trainer
        trainer.config = trainer.config.model_copy(update={"epochs": trainer.epoch + 1})
        if sample_gpu:
            with self.gpu:
                trainer.fit()
        else:
            trainer.fit()
        # log_every is above the steps of an epoch, so each train record covers exactly one whole epoch.
        return self.images_per_epoch / self.records("train")[-1]["images_per_s"]

    def validation(self) -> dict[str, float]:
        val = self.records("val")[-1]
        return {name: val[name] for name in BOUNDS}

    def close(self) -> None:
        self.run_dir.cleanup()


class MultiVae:
    """bench/multivae_jmvae.py as a worker process in its own venv; its log goes to a temporary file."""

    name = "multivae"
    precision = "fp32"  # its BaseTrainer has no mixed precision

    def __init__(self, args: argparse.Namespace, data: Path, batch_size: int) -> None:
        command = [
            str(args.multivae_python),
            str(ROOT / "bench" / "multivae_jmvae.py"),
            "--data",
            str(data),
            "--model-config",
            args.model_config,
            "--device",
            args.resolved_device.type,
            "--batch-size",
            str(batch_size),
            "--alpha",
            str(args.alpha),
            "--warmup",
            str(args.warmup_epochs),
            "--lr",
            str(args.lr),
            "--seed",
            str(args.seed),
            "--threads",
            str(torch.get_num_threads()),
        ]
        self.log: IO[str] = tempfile.TemporaryFile("w+")
        # Its per-epoch progress bars would only fill the log.
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=os.environ | {"TQDM_DISABLE": "1"},
        )
        self.batch_size = batch_size
        self.info = self._read()
        self.images_per_epoch: int = self.info["images_per_epoch"]
        self.gpu_means: list[tuple[float, float]] = []  # (seconds, mean utilisation) per sampled epoch

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.log.seek(0)
            sys.stderr.write(self.log.read()[-5000:])
            raise SystemExit(f"bench/multivae_jmvae.py exited with status {self.process.wait()}")
        return json.loads(line)

    def request(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def train_epoch(self, sample_gpu: bool = False) -> float:
        reply = self.request(cmd="epoch")
        if sample_gpu and reply["gpu_utilisation_percent"] is not None:
            self.gpu_means.append((reply["seconds"], reply["gpu_utilisation_percent"]))
        return reply["seconds"]

    @property
    def gpu_mean(self) -> float | None:
        seconds = sum(s for s, _ in self.gpu_means)
        return sum(s * u for s, u in self.gpu_means) / seconds if seconds else None

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()
        self.log.close()


def speed(contestants: list[Ours | MultiVae], epochs: int) -> tuple[list[dict[str, Any]], list[float]]:
    """Round-robin epochs; the first round is the warm-up."""
    times: list[list[float]] = [[] for _ in contestants]
    loads: list[float] = []
    for round_ in range(epochs):
        loads.append(os.getloadavg()[0])
        for contestant, seconds in zip(contestants, times):
            seconds.append(contestant.train_epoch(sample_gpu=round_ > 0))
            log(f"{contestant.name} batch {contestant.batch_size}, epoch {round_ + 1}: {seconds[-1]:.1f} s")
    rows = []
    for contestant, seconds in zip(contestants, times):
        gpu = contestant.gpu.mean if isinstance(contestant, Ours) else contestant.gpu_mean
        rows.append(
            {
                "trainer": contestant.name,
                "batch_size": contestant.batch_size,
                "precision": contestant.precision,
                "images_per_epoch": contestant.images_per_epoch,
                "first_epoch_seconds": seconds[0],
                "steady_epoch_seconds": seconds[1:],
                "images_per_s": contestant.images_per_epoch * len(seconds[1:]) / sum(seconds[1:]),
                "gpu_utilisation_percent": gpu,
            }
        )
    return rows, loads


def profile_loop(
    config: TrainConfig, dataset: FaceDataset, device: torch.device, steps: int, trace: Path | None
) -> dict[str, Any]:
    """Where one short epoch of our loop spends its time, after an unprofiled warm-up epoch of the same size."""
    ours = Ours(config, subset(dataset, steps * config.batch_size, 0), device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        ours.train_epoch()
        with profile(activities=activities) as prof:
            loop_seconds = ours.train_epoch()
    finally:
        ours.close()
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    events = prof.key_averages()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    top = sorted(events, key=lambda e: getattr(e, sort), reverse=True)[:15]
    total_cpu = sum(e.self_cpu_time_total for e in events)
    total_device = sum(e.self_device_time_total for e in events)
    return {
        "batch_size": config.batch_size,
        "steps": steps,
        "loop_seconds": loop_seconds,
        "sorted_by": sort,
        "self_cpu_ms_total": total_cpu / 1e3,
        "self_device_ms_total": total_device / 1e3,
        "top": [
            {
                "op": e.key,
                "calls": e.count,
                "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "self_cpu_share": e.self_cpu_time_total / total_cpu if total_cpu else None,
                "self_device_ms": e.self_device_time_total / 1e3,
                "self_device_share": e.self_device_time_total / total_device if total_device else None,
            }
            for e in top
        ],
    }


def bound(
    args: argparse.Namespace, config: TrainConfig, dataset: FaceDataset, data: Path, device: torch.device
) -> dict[str, Any]:
    """Both trainers, taking turns by epoch, until each has trained `--bound-seconds`; the bounds after each epoch
    (evaluation outside the training clock)."""
    ours, peer = Ours(config, dataset, device), MultiVae(args, data, config.batch_size)
    points: dict[str, list[dict[str, Any]]] = {"ours": [], "multivae": []}
    clock = {"ours": 0.0, "multivae": 0.0}
    evaluated = JMVAE(config.model).to(device)
    prevalence = (dataset.split("train").attributes > 0).mean(axis=0)
    with tempfile.TemporaryDirectory() as snapshots:
        try:
            while min(clock.values()) < args.bound_seconds:
                if clock["ours"] < args.bound_seconds:
                    clock["ours"] += ours.train_epoch()
                    points["ours"].append(
                        {"epoch": ours.trainer.epoch, "train_seconds": clock["ours"]} | ours.validation()
                    )
                if clock["multivae"] < args.bound_seconds:
                    clock["multivae"] += peer.train_epoch()
                    path = peer.request(cmd="snapshot", path=f"{snapshots}/weights.npz")["path"]
                    with np.load(path) as weights:
                        evaluated.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
                    metrics = evaluate(
                        evaluated,
                        dataset.split("val"),
                        prevalence,
                        config.alpha,
                        k=config.val_k,
                        n_w=config.val_n_w,
                        max_examples=config.val_max_examples,
                        seed=config.seed,
                    )
                    points["multivae"].append(
                        {"epoch": len(points["multivae"]) + 1, "train_seconds": clock["multivae"]}
                        | {name: metrics[name] for name in BOUNDS}
                    )
                log(f"bound: ours {clock['ours']:.0f} s, MultiVae {clock['multivae']:.0f} s of training")
            own = peer.request(cmd="own_log_pxw", k=config.val_k)["own_log_pxw"]
        finally:
            ours.close()
            peer.close()
    common = min(p[-1]["train_seconds"] for p in points.values())
    return {
        "batch_size": config.batch_size,
        "points": points,
        "summary": {
            "convention": f"nats per image, k = {config.val_k} importance samples, {len(dataset.split('val'))} "
            "validation images; sums over all pixel values and attributes",
            "common_train_seconds": common,
            "at_common_time": {
                side: next((p for p in reversed(ps) if p["train_seconds"] <= common + 1e-9), None)
                for side, ps in points.items()
            },
            "multivae_log_pxw_final": {
                "our_bounds_code": points["multivae"][-1]["log_pxw"],
                "its_compute_joint_nll": own,
            },
        },
    }


def write_handover(dataset: FaceDataset, folder: Path) -> None:
    """The same uint8 faces and int8 attributes for MultiVae's process, as .npy files."""
    for split in ("train", "val"):
        arrays = dataset.split(split)
        np.save(folder / f"{split}_images.npy", np.asarray(arrays.images))
        np.save(folder / f"{split}_attributes.npy", np.asarray(arrays.attributes))


def replicate(dataset: FaceDataset, n: int) -> FaceDataset:
    """The training split tiled to n images (the CelebA subset or synthetic faces to CelebA's 162,770, say)."""
    train = dataset.split("train")
    tiled = FaceArrays(
        np.resize(train.images, (n, *train.images.shape[1:])),
        np.resize(train.attributes, (n, train.attributes.shape[1])),
    )
    splits = {name: tiled if name == "train" else dataset.split(name) for name in ("train", "val", "test")}
    return FaceDataset(dataset.name, dataset.content_key, dataset.attribute_names, splits)


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    ours = [r for r in rows if r["trainer"] == "ours"]
    peers = [r for r in rows if r["trainer"] == "multivae"]
    if not peers:
        return {}
    best, best_peer = max(ours, key=lambda r: r["images_per_s"]), max(peers, key=lambda r: r["images_per_s"])
    result = {
        f"ours best (batch {best['batch_size']}) / MultiVae best (batch {best_peer['batch_size']})": best[
            "images_per_s"
        ]
        / best_peer["images_per_s"]
    }
    for peer in peers:
        same = next((r for r in ours if r["batch_size"] == peer["batch_size"]), None)
        if same is not None:
            result[f"ours / MultiVae at batch {peer['batch_size']}"] = same["images_per_s"] / peer["images_per_s"]
    return result


def report(result: dict[str, Any]) -> str:
    loads = ", ".join(f"{x:.1f}" for x in result["speed_load_per_round"])
    lines = [
        "Machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()),
        f"MultiVae side: torch {result['multivae_torch']}",
        "Command: " + result["command"],
        "",
        f"Speed ({result['data']['train_images']} training images; 1-minute load average at each round: {loads})",
        "",
        "| trainer | batch | precision | images/epoch | first epoch (s) | steady epochs (s) | images/s | GPU util % |",
        "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in result["speed"]:
        util = "–" if r["gpu_utilisation_percent"] is None else f"{r['gpu_utilisation_percent']:.0f}"
        steady = ", ".join(f"{s:.1f}" for s in r["steady_epoch_seconds"])
        lines.append(
            f"| {r['trainer']} | {r['batch_size']} | {r['precision']} | {r['images_per_epoch']} | "
            f"{r['first_epoch_seconds']:.1f}"
            f" | {steady} | {r['images_per_s']:.1f} | {util} |"
        )
    lines += ["", "Ratios: " + "; ".join(f"{k}: {v:.2f}×" for k, v in result["ratios"].items())]
    if "profile" in result:
        p = result["profile"]
        share = "self_device_share" if p["sorted_by"] == "self_device_time_total" else "self_cpu_share"
        lines += [
            "",
            f"Profile of our loop: {p['steps']} steps at batch {p['batch_size']} "
            f"(loop {p['loop_seconds']:.1f} s), top ops by {p['sorted_by']}",
            "",
            "| op | calls | self CPU ms | self device ms | share |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {e['op']} | {e['calls']} | {e['self_cpu_ms']:.0f} | {e['self_device_ms']:.0f} | {e[share]:.1%} |"
            for e in p["top"]
        ]
    if "bound" in result:
        b = result["bound"]
        summary = b["summary"]
        lines += [
            "",
            f"Bounds at batch {b['batch_size']} ({summary['convention']})",
            "",
            "| trainer | epoch | train s | " + " | ".join(BOUNDS) + " |",
            "| --- | ---: | ---: | " + " | ".join("---:" for _ in BOUNDS) + " |",
        ]
        for side, points in b["points"].items():
            lines += [
                f"| {side} | {p['epoch']} | {p['train_seconds']:.0f} | "
                + " | ".join(f"{p[name]:.1f}" for name in BOUNDS)
                + " |"
                for p in points
            ]
        lines += ["", f"At {summary['common_train_seconds']:.0f} s of training:"]
        for side, p in summary["at_common_time"].items():
            lines.append(
                f"- {side}: "
                + (
                    "no evaluation yet"
                    if p is None
                    else f"epoch {p['epoch']}, " + ", ".join(f"{name} {p[name]:.1f}" for name in BOUNDS)
                )
            )
        final = summary["multivae_log_pxw_final"]
        lines.append(
            f"- MultiVae's final log p(x,w): {final['our_bounds_code']:.1f} by our bounds code, "
            f"{final['its_compute_joint_nll']:.1f} by its own compute_joint_nll (same k)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CelebA root in its native layout, or 'synthetic'")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-sizes", default="100,256,512,1024", help="ours; the best of them is reported")
    parser.add_argument("--multivae-batch-sizes", default="100", help="'': ours only")
    parser.add_argument("--train-images", type=int, help="epoch = the first N training images (default: all)")
    parser.add_argument("--replicate", type=int, help="first tile the training split to N images")
    parser.add_argument("--epochs", type=int, default=3, help="per speed configuration, the first one untimed")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=2,
        help="KL warm-up length in epochs, both sides (short: a minutes-long bound run gets past it)",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="ours")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model")
    parser.add_argument("--model-config", default="{}", help="ModelConfig fields as JSON (default: the paper's)")
    parser.add_argument("--profile-steps", type=int, default=10, help="0: no profile")
    parser.add_argument("--trace", type=Path, help="also write the profile as a Chrome trace here")
    parser.add_argument("--bound-seconds", type=float, default=180.0, help="training time per side; 0: no bound phase")
    parser.add_argument("--bound-batch-size", type=int, default=100, help="both sides")
    parser.add_argument("--val-examples", type=int, default=1000)
    parser.add_argument("--val-k", type=int, default=10)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads, both sides (default: torch's, one per core); on a machine shared with "
        "other work, 1 avoids the stalls of threads waiting for a descheduled partner",
    )
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--multivae-python", type=Path, default=MULTIVAE_PYTHON)
    parser.add_argument("--json", type=Path, help="also write the full result as JSON here")
    args = parser.parse_args(argv)
    if (args.multivae_batch_sizes or args.bound_seconds > 0) and not args.multivae_python.exists():
        parser.error(f"{args.multivae_python} is missing: run bash bench/setup_multivae.sh")
    args.resolved_device = device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    base = TrainConfig(
        data=args.data,
        model=ModelConfig.model_validate_json(args.model_config),
        alpha=args.alpha,
        warmup_epochs=args.warmup_epochs,
        lr=args.lr,
        seed=args.seed,
        precision=args.precision,
        compile=args.compile,
        val_k=args.val_k,
        val_max_examples=args.val_examples,
        cache_dir=args.cache_dir,
        progress=False,
        log_every=10**9,  # one train record per epoch: its images_per_s is the epoch's
    )
    log(f"loading {args.data}")
    full = load_dataset(base)
    if args.replicate:
        full = replicate(full, args.replicate)
    speed_data = subset(full, args.train_images, 0)  # no validation split: fit() then skips validation
    bound_data = subset(full, args.train_images, args.val_examples)
    result: dict[str, Any] = {
        "command": shlex.join(["python", "bench/train_speed.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(device),
        "data": {
            "source": args.data,
            "train_images": len(speed_data.split("train")),
            "val_images": len(bound_data.split("val")),
        },
        "settings": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k not in ("resolved_device", "multivae_python", "json")
        },
    }
    n_train = len(speed_data.split("train"))
    with tempfile.TemporaryDirectory() as handover:
        write_handover(bound_data, Path(handover))
        contestants: list[Ours | MultiVae] = []
        try:
            for batch in map(int, args.batch_sizes.split(",")):
                if batch <= n_train:
                    contestants.append(Ours(base.model_copy(update={"batch_size": batch}), speed_data, device))
            for batch in (int(b) for b in args.multivae_batch_sizes.split(",") if b):
                if batch <= n_train:
                    contestants.append(MultiVae(args, Path(handover), batch))
            result["multivae_torch"] = next((c.info["torch"] for c in contestants if isinstance(c, MultiVae)), None)
            log(f"speed: {len(contestants)} configurations, {args.epochs} epochs each, taking turns")
            result["speed"], result["speed_load_per_round"] = speed(contestants, args.epochs)
        finally:
            for contestant in contestants:
                contestant.close()
            contestants.clear()  # frees their device copies of the data before the next phases
        result["ratios"] = ratios(result["speed"])

        if args.profile_steps:
            batch = int(args.batch_sizes.split(",")[0])
            log(f"profiling {args.profile_steps} steps at batch {batch}")
            result["profile"] = profile_loop(
                base.model_copy(update={"batch_size": batch}), speed_data, device, args.profile_steps, args.trace
            )

        if args.bound_seconds > 0:
            log(f"bounds: {args.bound_seconds:.0f} s of training per side at batch {args.bound_batch_size}")
            result["bound"] = bound(
                args, base.model_copy(update={"batch_size": args.bound_batch_size}), bound_data, Path(handover), device
            )

    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
