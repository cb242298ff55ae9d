"""One vocabulary of metric names (training/metrics.py): what the evaluator emits is in it, docs/training.md holds
it verbatim, and the pages name metrics only by it. The records, outputs and reports of real runs are checked
against it where the tests make them (test_training.py, test_gan.py, test_baselines.py)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from jmvae.model.baselines import create_model
from jmvae.model.config import ModelConfig
from jmvae.model.jmvae import JMVAE
from jmvae.training.data import FaceArrays
from jmvae.training.evaluate import coherence, evaluate
from jmvae.training.metrics import FIELDS, LIVE, METRICS, PER_ATTRIBUTE, family, markdown, unknown

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "training.md"
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "service" / "default_model" / "MODEL_CARD.md",
]
# A backticked word that looks like a metric's name (or one of the old spellings: val_*, log_p_x_*, *_mean).
METRIC_LIKE = re.compile(
    r"`((?:val_)?(?:log_p|kl_|elbo|attr_|coherence_|classifier_|majority_|vae_|cvae_|fig1a_)"
    r"[\w/<>]*)`"
)


def _split(n: int = 24, size: int = 16) -> FaceArrays:
    rng = np.random.default_rng(0)
    return FaceArrays(
        rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        np.where(rng.random((n, 40)) < 0.3, 1, -1).astype(np.int8),
    )


def test_the_docs_hold_the_code_table() -> None:
    table = markdown()
    text = DOCS.read_text()
    if table not in text:
        start = text.find("| name | meaning |")
        shown = text[start : start + len(table)] if start >= 0 else ""
        diff = "\n".join(
            difflib.unified_diff(
                shown.splitlines(),
                table.splitlines(),
                "docs/training.md",
                "jmvae.training.metrics.markdown()",
                lineterm="",
            )
        )
        pytest.fail(
            "docs/training.md's metric tables differ from training/metrics.py; paste "
            f"jmvae.training.metrics.markdown() in:\n{diff}",
            pytrace=False,
        )


def test_one_rule_for_the_names() -> None:
    assert not METRICS.keys() & FIELDS.keys()  # a val record is fields | metrics: no name may shadow another
    for name in [*METRICS, *FIELDS]:
        assert re.fullmatch(r"[a-z][a-z0-9_]*(/<attribute>)?", name) or name == LIVE + "<name>", name
        assert not name.startswith("val_"), name  # a record's "kind" says train or val, not the name
    assert all(name.endswith(PER_ATTRIBUTE) for name in METRICS if "/" in name)
    assert family("attr_auc_kl/Smiling") == "attr_auc_kl/<attribute>" and unknown(["attr_auc/Smiling"])
    assert family("live_attr_auc_kl/Smiling") == LIVE + "<name>" and unknown(["live_attr_auc", "live_epoch"])
    assert all(meaning.strip() for meaning in [*METRICS.values(), *FIELDS.values()])


def test_the_objective_terms_are_in_the_vocabulary(tiny_model: JMVAE, batch) -> None:
    x, w = batch
    assert not unknown(tiny_model(x, w, alpha=0.1, beta=1.0).as_floats())


@pytest.mark.parametrize("kind", ["jmvae", "vae", "cvae", "classifier"])
def test_evaluate_emits_only_the_vocabulary(tiny_config: ModelConfig, kind: str) -> None:
    torch.manual_seed(0)
    model = create_model(tiny_config.model_copy(update={"kind": kind}))
    metrics = evaluate(model, _split(), np.full(40, 0.3), alpha=0.1, k=2, n_w=2, batch_size=10)
    assert metrics and not unknown(metrics)
    expected = {
        "jmvae": {
            "log_px_multiple",
            "log_px_single",
            "log_pxw",
            "log_px_given_w",
            "attr_auc_kl",
            "attr_auc_zero",
            "attr_auc_served",
            "attr_acc_majority",
        },
        "vae": {"log_px_single", "elbo"},
        "cvae": {"log_px_given_w", "elbo"},
        "classifier": {"attr_acc_classifier", "attr_auc_classifier", "attr_acc_majority"},
    }[kind]
    assert expected <= metrics.keys()


def test_coherence_emits_only_the_vocabulary(tiny_model: JMVAE, tiny_config: ModelConfig) -> None:
    classifier = create_model(tiny_config.model_copy(update={"kind": "classifier"}))
    metrics = coherence(tiny_model, classifier, _split(), batch_size=10)  # type: ignore[arg-type]
    assert metrics.keys() == {"coherence_auc", "coherence_acc", "attr_auc_classifier", "attr_acc_classifier"}


def test_the_pages_name_metrics_by_the_vocabulary() -> None:
    found = {
        (page.relative_to(ROOT).as_posix(), name) for page in PAGES for name in METRIC_LIKE.findall(page.read_text())
    }
    assert len(found) > 10, found  # the extraction found the names the pages use
    wrong = sorted(f"{page}: `{name}`" for page, name in found if unknown([name]))
    assert not wrong, "names that training/metrics.py does not define:\n" + "\n".join(wrong)
