"""The training command end to end on synthetic data: checkpoints, reproducibility, resume, signals, DDP."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_configs import write_tiny_run

from jmvae.cli import main
from jmvae.model.checkpoint import Checkpoint, load_model, read_checkpoint, save_checkpoint
from jmvae.model.preprocess import normalise
from jmvae.training.augment import augment
from jmvae.training.config import load_config
from jmvae.training.metrics import FIELDS, unknown
from jmvae.training.report import FIGURE_ATTRIBUTES
from jmvae.training.synthetic import RENDERED_ATTRIBUTES, synthetic_dataset

# The tiny run, wider (steps of an epoch: 300 / 50 = 6) and with room to learn the attributes.
TRAINING = {
    "val_k": 3,
    "val_n_w": 3,
    "val_max_examples": 100,
    "log_every": 2,
    "model": {"latent_dim": 16, "conv_channels": [16, 32, 32], "dense_units": 128, "attribute_units": 64},
    "synthetic": {"n_train": 300, "n_val": 100},
}


@pytest.fixture(scope="module")
def tiny_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_run(tmp_path_factory.mktemp("config") / "tiny.toml", TRAINING)


def _train_args(out: Path, config: Path, *extra: str) -> list[str]:
    return ["train", "--data", "synthetic", "--out", str(out), "--config", str(config), *extra]


def _train(out: Path, config: Path, *extra: str) -> int:
    return main(_train_args(out, config, *extra))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).model_state


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, tiny_toml: Path) -> Path:
    """Three uninterrupted epochs: what every interrupted-and-resumed run must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference")
    assert _train(out, tiny_toml, "--epochs", "3") == 0
    return out


@pytest.mark.unit
def test_config_file_and_overrides(tmp_path: Path, tiny_toml: Path) -> None:
    config = load_config(tiny_toml, {"epochs": 7, "model": {"latent_dim": 4}})
    assert config.epochs == 7 and config.model.latent_dim == 4 and config.model.dense_units == 128
    as_json = tmp_path / "c.json"
    as_json.write_text(json.dumps({"alpha": 0.0, "model": {"latent_dim": 9}}))
    assert load_config(as_json).alpha == 0.0
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [")
    with pytest.raises(ValueError, match="bad.toml"):
        load_config(bad)
    with pytest.raises(ValueError, match="image_size"):
        load_config(None, {"model": {"image_size": 32}})  # preprocessing still 64
    with pytest.raises(ValueError, match="unknown_knob"):
        load_config(None, {"unknown_knob": 1})


def test_run_writes_checkpoints_metrics_and_config(reference_run: Path, capsys) -> None:
    files = {p.name for p in reference_run.iterdir()}
    assert {"final.safetensors", "last.safetensors", "metrics.jsonl", "config.json"} <= files
    records = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 3]
    assert train[-1]["step"] == 18 and train[0]["beta"] < 1.0 == train[-1]["beta"]
    assert {"loss", "log_px", "log_pw", "kl_prior", "kl_image", "kl_attributes", "images_per_s"} <= train[0].keys()
    assert {"elbo", "log_pxw", "log_px_given_w", "attr_acc_kl"} <= val[0].keys()
    assert not [(r["kind"], unknown(r)) for r in records if unknown(r)]  # every name in training/metrics.py
    model, meta = load_model(reference_run / "final.safetensors")
    assert meta.epoch == 3 and meta.step == 18 and meta.metrics["elbo"] == val[-1]["elbo"]
    assert meta.data["name"] == "synthetic" and meta.data["sizes"]["train"] == 300
    assert meta.training["epochs"] == 3 and meta.preprocessing.image_size == 32
    assert len(meta.attribute_names) == 40
    assert not read_checkpoint(reference_run / "final.safetensors").state_tensors  # final: weights only
    assert main(["info", str(reference_run / "final.safetensors")]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 18


def test_eval_command(reference_run: Path, capsys) -> None:
    checkpoint = str(reference_run / "final.safetensors")
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                checkpoint,
                "--data",
                "synthetic",
                "--split",
                "val",
                "--k",
                "3",
                "--max-examples",
                "40",
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["examples"] == 40 and "summed over all" in report["convention"]
    for key in ("log_px_multiple", "log_px_single", "log_pxw", "log_px_given_w", "attr_acc_kl", "attr_acc_majority"):
        assert isinstance(report[key], float) and math.isfinite(report[key]), (key, report[key])
    assert 0 <= report["attr_acc_kl"] <= 1 and not unknown(report)


@pytest.mark.parametrize(
    "augmentation",
    [{"hflip": True}, {"jitter_scale": 0.07, "jitter_shift": 0.016}, {"rotate": 10.0}, {"colour": 0.2}],
    ids=["hflip", "jitter", "rotate", "colour"],
)
def test_augmentation_changes_training_but_stays_reproducible(
    tmp_path: Path, tiny_toml: Path, augmentation: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the trainer's batches became: each face's output is its input (True), its mirror image (False), or
    # neither (None); faces that are their own mirror image say nothing and are left out.
    seen: list[bool | None] = []

    def watched(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        out = augment(x, *args, **kwargs)
        seen.extend(
            torch.equal(o, f) if torch.equal(o, f) or torch.equal(o, f.flip(-1)) else None
            for o, f in zip(out, x)
            if not torch.equal(f, f.flip(-1))
        )
        return out

    monkeypatch.setattr("jmvae.training.trainer.augment", watched)
    for name in ("a", "b"):
        config = write_tiny_run(tmp_path / f"{name}.toml", TRAINING, augmentation)
        assert _train(tmp_path / name, config, "--epochs", "1") == 0
    if "hflip" in augmentation:  # a share of the faces mirrored, the others as they were, nothing else
        assert None not in seen and True in seen and False in seen, seen
    else:  # jitter, rotation and colour change every face
        assert seen and set(seen) == {None}, seen
    _assert_same_weights(tmp_path / "a" / "final.safetensors", tmp_path / "b" / "final.safetensors")
    flipped = _weights(tmp_path / "a" / "final.safetensors")["joint_encoder.head.linear.weight"]
    plain_run = tmp_path / "plain"
    assert _train(plain_run, tiny_toml, "--epochs", "1") == 0
    assert not torch.equal(flipped, _weights(plain_run / "final.safetensors")["joint_encoder.head.linear.weight"])


@pytest.mark.unit
def test_hflip_mirrors_a_random_share_of_the_faces_and_leaves_the_others_as_they_were() -> None:
    faces = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert not any(torch.equal(f, f.flip(-1)) or torch.equal(f, f.flip(-2)) for f in faces)  # no face is symmetric

    def mirrored(seed: int) -> list[bool]:
        out = augment(faces, torch.Generator().manual_seed(seed), hflip=True, shift=0)
        assert out.shape == faces.shape
        flipped = [torch.equal(o, f.flip(-1)) for o, f in zip(out, faces)]  # left-right, not upside down
        kept = [torch.equal(o, f) for o, f in zip(out, faces)]
        assert all(a != b for a, b in zip(flipped, kept)), "every face comes out as itself or its mirror image"
        return flipped

    chosen = mirrored(0)
    assert 16 <= sum(chosen) <= 48, chosen  # about half, each face drawn on its own
    assert mirrored(0) == chosen and mirrored(1) != chosen  # the step's generator decides which
    assert torch.equal(augment(faces, torch.Generator().manual_seed(0), hflip=False, shift=0), faces)


@pytest.mark.unit
def test_jitter_reframes_each_face_within_its_range_and_stays_reproducible() -> None:
    from jmvae.training.augment import jitter

    faces = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    none = jitter(faces, torch.Generator().manual_seed(0), 0.0, 0.0)
    torch.testing.assert_close(none, faces, atol=1e-5, rtol=0)
    out = jitter(faces, torch.Generator().manual_seed(0), 0.07, 0.016)
    torch.testing.assert_close(out, jitter(faces, torch.Generator().manual_seed(0), 0.07, 0.016), atol=0, rtol=0)
    change = (out - faces).abs().flatten(1).mean(1)
    assert (change > 1e-3).all() and change.std() > 1e-3  # every face moved, each by its own draw
    # A box 7% larger at most: the centre pixel's 2x2 neighbourhood stays within reach (16 px * 0.07 / 2 < 1).
    centre = faces[..., 7:9, 7:9]
    lower, upper = centre.amin((-2, -1)), centre.amax((-2, -1))
    assert ((out[..., 7, 7] >= lower - 0.35) & (out[..., 7, 7] <= upper + 0.35)).float().mean() > 0.9


@pytest.mark.unit
def test_reframe_turns_each_face_by_its_own_angle() -> None:
    from jmvae.model.preprocess import reframe

    faces = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    angles = torch.tensor([0.0, math.pi / 2, -math.pi / 2])
    out = reframe(faces, torch.ones(3), torch.zeros(3, 2), angles)
    torch.testing.assert_close(out[0], faces[0], atol=1e-5, rtol=0)
    # A quarter turn of the sampling grid is a quarter turn of the pixels, one way or the other by its sign.
    turned = {k: torch.rot90(faces[1], k, (-2, -1)) for k in (1, -1)}
    matches = [k for k, face in turned.items() if torch.allclose(out[1], face, atol=1e-4)]
    assert len(matches) == 1
    torch.testing.assert_close(out[2], torch.rot90(faces[2], -matches[0], (-2, -1)), atol=1e-4, rtol=0)


@pytest.mark.unit
def test_rotate_and_colour_draw_per_face_stay_in_range_and_reproduce() -> None:
    from jmvae.training.augment import recolour

    faces = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    for kwargs in ({"rotate": 10.0}, {"colour": 0.2}):
        out = augment(faces, torch.Generator().manual_seed(0), hflip=False, shift=0, **kwargs)
        again = augment(faces, torch.Generator().manual_seed(0), hflip=False, shift=0, **kwargs)
        assert torch.equal(out, again) and out.shape == faces.shape
        change = (out - faces).abs().flatten(1).mean(1)
        assert (change > 1e-4).all() and change.std() > 1e-4, kwargs  # every face, each by its own draw
    out = recolour(faces, torch.Generator().manual_seed(0), 0.2)
    assert 0 <= out.min() and out.max() <= 1
    # Brightness at most e^0.2 either way before contrast and saturation: the mean stays within e^±0.4 of itself.
    ratio = out.mean((1, 2, 3)) / faces.mean((1, 2, 3))
    assert (ratio > math.exp(-0.4)).all() and (ratio < math.exp(0.4)).all()
    grey = faces[:, :1].expand(-1, 3, -1, -1)  # a grey face stays grey: saturation scales colour, not luma
    recoloured = recolour(grey, torch.Generator().manual_seed(0), 0.2)
    torch.testing.assert_close(recoloured[:, 0], recoloured[:, 2], atol=1e-5, rtol=0)


def test_shift_moves_each_face_by_at_most_shift_pixels_and_stays_reproducible(tmp_path: Path, tiny_toml: Path) -> None:
    faces = torch.rand(64, 3, 16, 16)
    shifted = augment(faces, torch.Generator().manual_seed(0), hflip=False, shift=3)
    again = augment(faces, torch.Generator().manual_seed(0), hflip=False, shift=3)
    assert torch.equal(shifted, again) and shifted.is_contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(faces, (3, 3, 3, 3), mode="replicate")
    offsets = set()
    for face, out in zip(padded, shifted):
        found = [
            (dy, dx) for dy in range(7) for dx in range(7) if torch.equal(face[:, dy : dy + 16, dx : dx + 16], out)
        ]
        assert found, "every output is a crop of its own padded face"
        offsets.add(found[0])
    assert len(offsets) > 10  # offsets are drawn per face, not per batch
    config = write_tiny_run(tmp_path / "shift.toml", TRAINING, shift=3)
    assert _train(tmp_path / "a", config, "--epochs", "1") == 0
    assert _train(tmp_path / "b", config, "--epochs", "1") == 0
    _assert_same_weights(tmp_path / "a" / "final.safetensors", tmp_path / "b" / "final.safetensors")


def test_seeded_runs_are_reproducible(tmp_path: Path, tiny_toml: Path) -> None:
    for name in ("a", "b"):
        assert _train(tmp_path / name, tiny_toml, "--epochs", "1") == 0
    assert _train(tmp_path / "c", tiny_toml, "--epochs", "1", "--seed", "1") == 0
    _assert_same_weights(tmp_path / "a" / "final.safetensors", tmp_path / "b" / "final.safetensors")
    a, c = _weights(tmp_path / "a" / "final.safetensors"), _weights(tmp_path / "c" / "final.safetensors")
    assert not torch.equal(a["joint_encoder.head.linear.weight"], c["joint_encoder.head.linear.weight"])


def test_resume_gives_the_same_weights(tmp_path: Path, tiny_toml: Path, reference_run: Path) -> None:
    out = tmp_path / "run"
    assert _train(out, tiny_toml, "--epochs", "1") == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--no-progress"]) == 0
    _assert_same_weights(out / "final.safetensors", reference_run / "final.safetensors")


def test_resume_with_foreach_adam_gives_the_same_weights(
    tmp_path: Path, tiny_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's fused Adam and the foreach one both pair each weight with its moments in memory order, which
    for the channels-last convolutions a restore must keep: the foreach kernel resumes exactly too."""
    monkeypatch.setattr(
        "jmvae.training.trainer.adam",
        lambda parameters, lr, betas: torch.optim.Adam(parameters, lr=lr, betas=betas, foreach=True),
    )
    assert _train(tmp_path / "reference", tiny_toml, "--epochs", "2") == 0
    out = tmp_path / "run"
    assert _train(out, tiny_toml, "--epochs", "1") == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    _assert_same_weights(out / "final.safetensors", tmp_path / "reference" / "final.safetensors")


def test_ema_checkpoints_the_average_and_resumes_exactly(tmp_path: Path, reference_run: Path, capsys) -> None:
    """With ema the checkpoint's model is the moving average (and validation measures it, the live weights'
    metrics beside it); an interrupted run resumes both the average and the live weights exactly; the live weights
    follow the same path as without ema."""
    config = write_tiny_run(tmp_path / "ema.toml", TRAINING, ema=0.9)
    assert _train(tmp_path / "reference", config, "--epochs", "3") == 0
    out = tmp_path / "run"
    assert _train(out, config, "--epochs", "1") == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--no-progress"]) == 0
    _assert_same_weights(out / "final.safetensors", tmp_path / "reference" / "final.safetensors")

    last = read_checkpoint(tmp_path / "reference" / "last.safetensors")
    live = {k.removeprefix("live."): v for k, v in last.state_tensors.items() if k.startswith("live.")}
    plain = _weights(reference_run / "final.safetensors")
    assert live.keys() == plain.keys() == last.model_state.keys()
    assert all(torch.equal(live[k], plain[k]) for k in plain)  # the average does not change training
    name = "joint_encoder.head.linear.weight"
    assert not torch.allclose(last.model_state[name], live[name])
    assert last.model_state["attribute_encoder.features.0.1.num_batches_tracked"].item() == 18  # copied, not averaged

    val = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 3] and not unknown(val[-1])
    assert val[-1]["attr_auc_kl"] != val[-1]["live_attr_auc_kl"]
    saved = out / "config.json"  # edited by hand: the average cannot resume as the live weights
    saved.write_text(saved.read_text().replace('"ema": 0.9', '"ema": 0.0'))
    assert main(["train", "--out", str(out), "--resume", "--epochs", "4", "--no-progress"]) == 1
    assert "was trained with ema" in capsys.readouterr().err


@pytest.mark.unit
@pytest.mark.parametrize("implementation", ["fused", "foreach"])
def test_restored_adam_moments_take_their_parameters_layout(
    implementation: str, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Checkpoints store tensors in the default layout (save_checkpoint: .contiguous()); restored into channels-last
    weights as they were, the fused kernel would update the wrong entries. Restored, the moments take their
    weights' strides, and steps after the restore are exactly the uninterrupted ones."""
    from tiny_configs import TINY_MODEL

    from jmvae.model.jmvae import JMVAE
    from jmvae.training.trainer import _optimizer_from_checkpoint, _optimizer_to_checkpoint

    x, w = batch
    x = x.contiguous(memory_format=torch.channels_last)

    def build() -> tuple[JMVAE, torch.optim.Adam]:
        torch.manual_seed(0)
        model = JMVAE(TINY_MODEL).to(memory_format=torch.channels_last)
        return model, torch.optim.Adam(model.parameters(), lr=1e-2, **{implementation: True})

    def step(model: JMVAE, optimizer: torch.optim.Adam, seed: int) -> None:
        optimizer.zero_grad()
        model(x, w, generator=torch.Generator().manual_seed(seed)).loss.backward()
        optimizer.step()

    model, optimizer = build()
    for seed in range(2):
        step(model, optimizer, seed)
    tensors, saved = _optimizer_to_checkpoint(optimizer)
    resumed, resumed_optimizer = build()
    resumed.load_state_dict(model.state_dict())
    # As read back from a file: copies, in the default layout.
    stored = {k: v.clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    _optimizer_from_checkpoint(resumed_optimizer, stored, saved)
    for parameter in resumed.parameters():
        assert resumed_optimizer.state[parameter]["exp_avg"].stride() == parameter.stride()
    for seed in range(2, 4):
        step(model, optimizer, seed)
        step(resumed, resumed_optimizer, seed)
    assert any(p.ndim == 4 and not p.is_contiguous() for p in model.parameters())  # the case that needs the fix
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.unit
def test_a_checkpoint_of_the_per_parameter_adam_resumes_with_the_fused_kernel(
    tiny_model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """A checkpoint's param groups carry its optimiser's implementation flags; the running optimiser keeps its own."""
    from jmvae.training.trainer import _optimizer_from_checkpoint, _optimizer_to_checkpoint, adam

    loop = torch.optim.Adam(tiny_model.parameters(), foreach=False)
    tiny_model(*batch).loss.backward()
    loop.step()
    fused = adam(tiny_model.parameters(), 1e-3, (0.9, 0.999))
    _optimizer_from_checkpoint(fused, *_optimizer_to_checkpoint(loop))
    assert fused.param_groups[0]["fused"] is True and fused.param_groups[0]["foreach"] is None
    fused.step()  # the fused kernel accepts the restored state (its step counts as float32 tensors)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_no_host_reads_between_log_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ema: float) -> None:
    """Every read of a tensor's value on the host is a GPU sync. In the loop, the only one is at each log point:
    one epoch of 6 steps logged every 2 reads back 3 times, whatever the number of loss terms, with a moving
    average of the weights too."""
    from jmvae.training.trainer import Trainer

    reads: list[str] = []
    counting = False

    def counter(name: str) -> object:
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: object, **kwargs: object) -> object:
            if counting:
                reads.append(name)
            return original(self, *args, **kwargs)

        return counted

    for name in ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counter(name))
    train_epoch = Trainer._train_epoch

    def watched(self: Trainer, *args: object) -> bool:
        nonlocal counting
        counting = True
        try:
            return train_epoch(self, *args)
        finally:
            counting = False

    monkeypatch.setattr(Trainer, "_train_epoch", watched)
    assert _train(tmp_path / "run", write_tiny_run(tmp_path / "run.toml", TRAINING, ema=ema), "--epochs", "1") == 0
    assert reads == ["tolist"] * 3
    train = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())]
    assert [r["step"] for r in train if r["kind"] == "train"] == [2, 4, 6]


def test_a_non_finite_loss_stops_training_at_the_next_log_point(tmp_path: Path) -> None:
    from jmvae.training.config import TrainConfig
    from jmvae.training.synthetic import synthetic_dataset
    from jmvae.training.trainer import Trainer

    config = load_config(write_tiny_run(tmp_path / "nan.toml", TRAINING, lr=1e30, log_every=3))
    assert isinstance(config, TrainConfig)
    data = synthetic_dataset(n_train=300, n_val=0, n_test=0, seed=0, image_size=32)
    trainer = Trainer(config.model_copy(update={"epochs": 1}), tmp_path / "run", data, torch.device("cpu"))
    with pytest.raises(FloatingPointError, match=r"within steps (1-3|4-6); lower --lr"):
        trainer.fit()


def test_resume_of_a_run_written_before_the_metric_vocabulary(tmp_path: Path, tiny_toml: Path) -> None:
    """Run directories from before training/metrics.py named validation metrics val_<name>, in metrics.jsonl and
    in last.safetensors: such a run resumes, and goes on with today's names."""
    out = tmp_path / "run"
    assert _train(out, tiny_toml, "--epochs", "1") == 0
    log = out / "metrics.jsonl"
    old = [
        r if r["kind"] == "train" else {k if k in FIELDS else f"val_{k}": v for k, v in r.items()}
        for r in map(json.loads, log.read_text().splitlines())
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in old))
    last = read_checkpoint(out / "last.safetensors")
    meta = last.meta.model_copy(update={"metrics": {f"val_{k}": v for k, v in last.meta.metrics.items()}})
    save_checkpoint(out / "last.safetensors", Checkpoint(meta, last.model_state, last.state_tensors, last.state_json))
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[: len(old)] == old  # the old records are left as they were
    new_val = [r for r in records[len(old) :] if r["kind"] == "val"]
    assert [r["epoch"] for r in new_val] == [2] and not unknown(new_val[0])
    assert "val_elbo" in old[-1] and "elbo" in new_val[0]
    assert not unknown(load_model(out / "final.safetensors")[1].metrics)


def test_resume_guards(tmp_path: Path, tiny_toml: Path, reference_run: Path, capsys) -> None:
    assert _train(reference_run, tiny_toml) == 1
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--out", str(reference_run), "--resume", "--alpha", "0.5"]) == 1
    assert "cannot change alpha" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume"]) == 1
    assert "config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_saves_and_resume_matches(tmp_path: Path, tiny_toml: Path, reference_run: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "jmvae.cli", *_train_args(out, tiny_toml, "--epochs", "3")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "state saved" in err
    state = read_checkpoint(out / "last.safetensors").state_json
    assert 0 < state["step"] < 18
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    _assert_same_weights(out / "final.safetensors", reference_run / "final.safetensors")


@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_from_the_last_epoch_and_matches(
    tmp_path: Path, tiny_toml: Path, reference_run: Path
) -> None:
    """SIGKILL gives no chance to save: the steps since the last whole epoch are lost and trained again."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "jmvae.cli", *_train_args(out, tiny_toml, "--epochs", "3")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"

    def logged_steps() -> list[int]:
        lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []  # whole lines only
        return [r["step"] for r in map(json.loads, lines) if r["kind"] == "train"]

    deadline = time.monotonic() + 120
    while proc.poll() is None and not any(step > 6 for step in logged_steps()):  # 6 steps an epoch
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=60)
    if (out / "final.safetensors").exists():
        pytest.skip("the run finished before the kill")
    saved = read_checkpoint(out / "last.safetensors").state_json
    if saved["step"] >= max(logged_steps()):
        pytest.skip("the kill landed between epochs, not inside one")
    assert saved["step"] % 6 == 0
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    _assert_same_weights(out / "final.safetensors", reference_run / "final.safetensors")


@pytest.mark.slow
def test_image_to_attribute_accuracy_beats_majority(tmp_path: Path) -> None:
    # σ = 0.3 weighs the image term less than the default, so 8 short epochs leave room for the attributes.
    config = write_tiny_run(
        tmp_path / "more-data.toml", TRAINING, synthetic={"n_train": 2000}, model={"image_sigma": 0.3}
    )
    out = tmp_path / "run"
    assert _train(out, config, "--epochs", "8") == 0
    model, meta = load_model(out / "final.safetensors")
    data = synthetic_dataset(n_train=0, n_val=0, n_test=500, seed=99, image_size=32).split("test")
    columns = [meta.attribute_names.index(n) for n in RENDERED_ATTRIBUTES]
    present = data.attributes[:, columns] > 0
    with torch.inference_mode():
        z = model.infer(x=normalise(torch.from_numpy(data.images)), mode="kl").mean
        predicted = (model.decode_attributes(z)[:, columns] > 0).numpy()
    accuracy = (predicted == present).mean(axis=0)
    train_prevalence = np.array([meta.data["attribute_prevalence"][n] for n in RENDERED_ATTRIBUTES])
    majority = ((train_prevalence >= 0.5) == present).mean(axis=0)
    assert accuracy.mean() > majority.mean() + 0.05, (accuracy, majority)
    assert (accuracy > majority + 0.1).sum() >= 4, (accuracy, majority)  # e.g. Male, hair colour, skin, lipstick


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path: Path, tiny_toml: Path) -> None:
    out = tmp_path / "ddp"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "jmvae.cli",
        *_train_args(out, tiny_toml, "--epochs", "1", "--device", "cpu"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train and all(r["processes"] == 2 for r in train) and train[-1]["step"] == 6
    model, meta = load_model(out / "final.safetensors")
    assert meta.step == 6


@pytest.fixture(scope="module")
def companions(tmp_path_factory: pytest.TempPathFactory, tiny_toml: Path) -> dict[str, Path]:
    """The attribute classifier and the Table 1 baselines, trained by the package on the same data."""
    out = tmp_path_factory.mktemp("companions")
    more_data = write_tiny_run(out / "more-data.toml", TRAINING, synthetic={"n_train": 2000})
    for kind, config, epochs in (("classifier", more_data, "3"), ("vae", tiny_toml, "1"), ("cvae", tiny_toml, "1")):
        assert _train(out / kind, config, "--epochs", epochs, "--model", kind) == 0
    return {kind: out / kind / "final.safetensors" for kind in ("classifier", "vae", "cvae")}


def test_eval_report_writes_every_key_and_figure(
    reference_run: Path, companions: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "report"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(reference_run / "final.safetensors"),
                "--data",
                "synthetic",
                "--k",
                "2",
                "--nw",
                "2",
                "--max-examples",
                "40",
                "--out",
                str(out),
                "--no-progress",
                *(a for kind, path in companions.items() for a in (f"--{kind}", str(path))),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["units"] == "nats per image" and "summed over all" in metrics["convention"]
    for key in (
        "log_px_multiple",
        "log_px_single",
        "log_px_given_w",
        "log_pxw",
        "attr_acc_kl",
        "attr_auc_kl",
        "attr_acc_majority",
        "attr_auc_kl/Smiling",
        "attr_acc_kl/Male",
        "vae_log_px_single",
        "cvae_log_px_given_w",
        "coherence_auc",
        "coherence_acc",
        "attr_auc_classifier",
    ):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), (key, metrics[key])
    assert not unknown(metrics)  # every name in training/metrics.py
    # The judge must be able to judge: it reads the 21 rendered attributes off real synthetic faces (the other 19
    # are noise, at 0.5).
    assert metrics["attr_auc_classifier"] > 0.6
    assert 0.0 <= metrics["coherence_auc"] <= 1.0
    for name in FIGURE_ATTRIBUTES:  # every row of Figure 1(a) scored
        for key in ("fig1a_typical_p", "fig1a_average_p", "fig1a_random_share"):
            assert 0.0 <= metrics[f"{key}/{name}"] <= 1.0, (key, name)
    from PIL import Image

    def pixels(figure: str) -> np.ndarray:
        with Image.open(out / figure) as image:
            return np.asarray(image.convert("RGB"))

    for figure in ("fig1a_attribute_faces.png", "fig2_edit.png"):
        colours = np.unique(pixels(figure).reshape(-1, 3), axis=0)
        assert len(colours) > 10, figure  # faces, not a blank canvas
    pca_colours = {tuple(c) for c in np.unique(pixels("fig1b_latent_pca.png").reshape(-1, 3), axis=0)}
    assert {(200, 40, 40), (40, 80, 200)} <= pca_colours  # points with and without the attribute
    assert pixels("fig2_edit.png").shape[1] == 2 * (4 * 32 + 3 * 2)  # x, x_mean, x′_mean, x′
    report = (out / "report.md").read_text()
    assert "fig1a_attribute_faces.png" in report and "| attr_auc_kl |" in report and "| Eyeglasses |" in report
    vae = f"{metrics['vae_log_px_single']:.1f} ± {metrics['vae_log_px_single_se']:.1f}"
    assert f"| VAE | {vae} | — |" in report and "Coherence:" in report
    named = re.findall(r"^\| (\S+) \| (?:-?[\d.]+(?:e[-+]?\d+)?|nan) \|$", report, re.MULTILINE)
    assert len(named) > 10 and not unknown(named)  # report.md's table of metrics, by the same names
    assert f"| Bald | {metrics['fig1a_typical_p/Bald']:.2f} | {metrics['fig1a_average_p/Bald']:.2f} |" in report


def test_eval_refuses_a_companion_of_the_wrong_kind(
    reference_run: Path, companions: dict[str, Path], tmp_path: Path, capsys
) -> None:
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(reference_run / "final.safetensors"),
                "--data",
                "synthetic",
                "--max-examples",
                "10",
                "--out",
                str(tmp_path),
                "--no-progress",
                "--classifier",
                str(companions["vae"]),
            ]
        )
        != 0
    )
    assert "expected a classifier" in capsys.readouterr().err
