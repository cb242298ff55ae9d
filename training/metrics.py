"""The one vocabulary of the numbers training and evaluation write.

The same name means the same quantity wherever it appears: in what `evaluate` returns, in the train and val
records of RUN_DIR/metrics.jsonl (a record's "kind" says which data its numbers are on, so names carry no
"val_" prefix), in a checkpoint's metadata, in what `jmvae train` and `jmvae eval` print, in `jmvae eval --out`'s
metrics.json and report.md, and in docs/training.md ("Metric names", a copy of `markdown()` that
tests/test_metrics.py checks); the model card's rows are what `jmvae eval` prints under these names
(tests/test_default_model.py). Log-likelihoods and KL divergences are in nats per image (CONVENTION).

Run directories and checkpoints written before this vocabulary named every validation metric "val_<name>":
drop the prefix for today's name. CheckpointMeta does so when it reads an old checkpoint; an old run's
metrics.jsonl is never read back, so `jmvae train --resume` appends records with today's names after its old ones.
"""

from __future__ import annotations

from collections.abc import Iterable

UNITS = "nats per image"
CONVENTION = (
    "log-likelihoods in nats per image, summed over all 3·S·S pixel values and all attributes (the paper's code "
    "averaged the image term over the 3 channels, so its Table 1 is on another scale); accuracies and ROC AUC "
    "of image → attributes through the mean of q(z|x) and p(w|z)"
)
# A name ending in this stands for one entry per attribute: attr_auc_kl/Smiling, fig1a_average_p/Bald, ...
PER_ATTRIBUTE = "/<attribute>"
# A name starting with this is another name's metric, of the live weights when a run averages them (`ema`).
LIVE = "live_"

METRICS: dict[str, str] = {
    # The objective's terms (model/jmvae.py, ObjectiveTerms): batch means over log_every steps in train
    # records, means over the examples in val records and `jmvae eval`.
    "loss": "what the optimiser minimises: −(Eq. 2) with the warm-up weight β on the prior KL (train records only)",
    "elbo": "log_px + log_pw − kl_prior, without warm-up: Eq. 1, the bound on log p(x, w) (a baseline's: on what "
    "it models)",
    "log_px": "E_q(z|x,w)[log p(x|z)], one sample: the objective's image term",
    "log_pw": "E_q(z|x,w)[log p(w|z)], one sample: the objective's attribute term",
    "kl_prior": "KL(q(z|x,w) ‖ p(z))",
    "kl_image": "KL(q(z|x,w) ‖ q(z|x)), JMVAE-kl's image term",
    "kl_attributes": "KL(q(z|x,w) ‖ q(z|w)), JMVAE-kl's attribute term",
    # The appendix's importance-weighted bounds (model/bounds.py), k samples.
    "log_px_multiple": "log p(x), proposal q(z|x,w)",
    "log_px_single": "log p(x), proposal q(z|x) (the VAE baseline: its own q(z|x))",
    "log_pxw": "log p(x, w), proposal q(z|x,w)",
    "log_px_given_w": "log p(x|w) = log p(x, w) − log p(w), log p(w) from N_w prior samples (the CVAE baseline: "
    "its own bound, proposal q(z|x,w))",
    # Image → attributes, means over the attributes (ROC AUC over those with both classes present).
    "attr_acc_kl": "accuracy of p(w|z) at the mean of q(z|x) (JMVAE-kl)",
    "attr_auc_kl": "ROC AUC of p(w|z) at the mean of q(z|x) (JMVAE-kl)",
    "attr_acc_zero": "accuracy through the joint encoder with zeros for w (JMVAE-zero)",
    "attr_auc_zero": "ROC AUC through the joint encoder with zeros for w (JMVAE-zero)",
    "attr_acc_served": "accuracy of what POST /attributes answers: q(z|x) over six views of the face",
    "attr_auc_served": "ROC AUC of what POST /attributes answers: q(z|x) over six views of the face",
    "attr_acc_classifier": "accuracy of the attribute classifier (`--model classifier`) on the real images",
    "attr_auc_classifier": "ROC AUC of the attribute classifier (`--model classifier`) on the real images",
    "attr_acc_majority": "accuracy of predicting each attribute's majority class in training",
    "attr_acc_kl" + PER_ATTRIBUTE: "attr_acc_kl of one attribute (`jmvae eval --out`)",
    "attr_auc_kl" + PER_ATTRIBUTE: "attr_auc_kl of one attribute (`jmvae eval --out`)",
    # `jmvae eval --out` with the Table 1 baselines and the classifier, on the same examples.
    "vae_log_px_single": "log_px_single of the `--vae` baseline",
    "cvae_log_px_given_w": "log_px_given_w of the `--cvae` baseline",
    "coherence_auc": "ROC AUC of the `--classifier` on average faces generated from each example's attributes "
    "(mean of q(z|w), quantised to uint8), against those attributes",
    "coherence_acc": "accuracy of the same",
    "fig1a_typical_p" + PER_ATTRIBUTE: "the classifier's probability of the attribute on Figure 1(a)'s typical face",
    "fig1a_average_p" + PER_ATTRIBUTE: "the classifier's probability of the attribute on its row's average face",
    "fig1a_random_share" + PER_ATTRIBUTE: "the share of its row's random faces the classifier reads as having it",
    # `jmvae eval --out` with the baselines: how far to trust a difference in Table 1.
    **{
        f"{bound}_se": f"standard error of {bound} over the examples (`jmvae eval --out`)"
        for bound in (
            "log_px_multiple",
            "log_px_single",
            "log_pxw",
            "log_px_given_w",
            "vae_log_px_single",
            "cvae_log_px_given_w",
        )
    },
    "log_px_multiple_minus_vae": "log_px_multiple minus the `--vae` baseline's log p(x), mean of the per-example "
    "differences on the same examples",
    "log_px_single_minus_vae": "log_px_single minus the `--vae` baseline's log p(x), the same way",
    "log_px_given_w_minus_cvae": "log_px_given_w minus the `--cvae` baseline's log p(x|w), the same way",
    **{
        f"{lead}_se": f"standard error of {lead} over the examples"
        for lead in ("log_px_multiple_minus_vae", "log_px_single_minus_vae", "log_px_given_w_minus_cvae")
    },
    LIVE + "<name>": "`ema`: the metric <name> of the live weights in val records and checkpoints, where <name> "
    "alone is the moving average's",
    # Train records only.
    "images_per_s": "training images per second over the record's steps, all processes together",
    "g_adv": "`--gan`: the decoder's adversarial loss −log D(fake), before its weight",
    "d_loss": "`--gan`: the discriminator's loss, binary cross-entropy of real vs decoded faces",
    "d_real": "`--gan`: mean D(real), the discriminator's probability that a training face is real",
    "d_fake": "`--gan`: mean D(fake), its probability that a decoded face is real",
}

# What a record or an output says about itself and the settings it was measured with, beside the metrics.
FIELDS: dict[str, str] = {
    "kind": "metrics.jsonl: train (a window of log_every training steps) or val (the validation split after an epoch)",
    "epoch": "the epoch a train record falls in, or the epochs completed at a val record or checkpoint",
    "step": "optimiser steps taken",
    "seconds": "wall-clock seconds of the validation",
    "beta": "the warm-up weight β on the prior KL",
    "lr": "the learning rate",
    "processes": "training processes (torchrun)",
    "checkpoint": "the checkpoint written or evaluated",
    "data": "the data evaluated: a CelebA root or synthetic",
    "split": "the split evaluated",
    "crop": "how the evaluated faces were cropped",
    "out": "the folder of metrics.json, report.md and the figures",
    "examples": "examples evaluated",
    "k": "importance samples of the bounds",
    "n_w": "prior samples for log p(w)",
    "units": "the units of the log-likelihoods",
    "convention": "what the log-likelihoods sum over",
    "mismatches": "metrics.json: each baseline evaluated with `--allow-mismatch` although it differs from the "
    "checkpoint, and how",
}


def family(name: str) -> str:
    """The vocabulary's entry for a name as written: attr_auc_kl/Smiling → attr_auc_kl/<attribute>, and
    live_attr_auc_kl → live_<name> (a known name after the prefix)."""
    if name.startswith(LIVE) and family(name.removeprefix(LIVE)) in METRICS:
        return LIVE + "<name>"
    return name.split("/", 1)[0] + PER_ATTRIBUTE if "/" in name else name


def unknown(names: Iterable[str]) -> list[str]:
    """The names, as written, that are neither a metric nor a field of this vocabulary."""
    return sorted(name for name in names if family(name) not in METRICS and name not in FIELDS)


def markdown() -> str:
    """docs/training.md's table of the metric names."""
    lines = ["| name | meaning |", "| --- | --- |"]
    lines += [f"| `{name}` | {meaning.replace('|', chr(92) + '|')} |" for name, meaning in METRICS.items()]
    lines += ["", "| field | meaning |", "| --- | --- |"]
    lines += [f"| `{name}` | {meaning.replace('|', chr(92) + '|')} |" for name, meaning in FIELDS.items()]
    return "\n".join(lines)
