import numpy as np
import torch

from jmvae.model.jmvae import JMVAE
from jmvae.model.preprocess import normalise
from jmvae.training.data import FaceArrays
from jmvae.training.evaluate import evaluate


def test_evaluate_averages_exactly_the_first_max_examples(tiny_model: JMVAE) -> None:
    rng = np.random.default_rng(0)
    split = FaceArrays(
        rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8),
        np.where(rng.random((30, 40)) < 0.3, 1, -1).astype(np.int8),
    )
    prevalence = np.full(40, 0.3)
    # 20 examples in batches of 8: the last batch is partial and must not reach past example 20.
    metrics = evaluate(tiny_model, split, prevalence, alpha=0.1, k=2, n_w=2, max_examples=20, batch_size=8)
    assert tiny_model.training  # evaluate restores the mode it found
    tiny_model.eval()
    with torch.inference_mode():
        x = normalise(torch.from_numpy(split.images[:20]))
        present = torch.from_numpy(split.attributes[:20]) > 0
        logits = tiny_model.decode_attributes(tiny_model.q_image(x).mean)
    expected = float(((logits > 0) == present).float().mean())
    assert abs(metrics["attr_acc_kl"] - expected) < 1e-6
    assert abs(metrics["attr_acc_majority"] - float((~present).float().mean())) < 1e-6
    assert all(0.0 <= metrics[k] <= 1.0 for k in metrics if "acc" in k or "auc" in k)


def test_roc_auc_matches_the_pairwise_definition() -> None:
    from jmvae.training.evaluate import roc_auc

    rng = np.random.default_rng(1)
    labels = rng.random((60, 3)) < 0.4
    scores = np.round(rng.normal(size=(60, 3)) + labels, 1)  # rounded: ties must count one half
    labels[:, 2] = True  # one class only: undefined
    auc = roc_auc(scores, labels)
    for j in range(2):
        pos, neg = scores[labels[:, j], j], scores[~labels[:, j], j]
        pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
        assert abs(auc[j] - pairs) < 1e-12
    assert np.isnan(auc[2])
    assert roc_auc(np.array([[0.1], [0.9]]), np.array([[False], [True]]))[0] == 1.0
