import numpy as np
import pytest
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


def _split(n: int = 30) -> FaceArrays:
    rng = np.random.default_rng(2)
    return FaceArrays(
        rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
        np.where(rng.random((n, 40)) < 0.3, 1, -1).astype(np.int8),
    )


def test_batching_leaves_every_deterministic_score_as_it_was(tiny_model: JMVAE) -> None:
    """Memory is bounded by the batch, not the split; what does not depend on the bounds' random draws is the same
    in batches of 7 (the last one partial) as in one batch of all 30."""
    from jmvae.training.report import image_codes

    split, prevalence = _split(), np.full(40, 0.3)
    whole = evaluate(tiny_model, split, prevalence, alpha=0.1, k=2, n_w=2, batch_size=30)
    batched = evaluate(tiny_model, split, prevalence, alpha=0.1, k=2, n_w=2, batch_size=7)
    deterministic = [key for key in whole if key.startswith(("attr_acc", "attr_auc"))]
    assert len(deterministic) == 7  # kl, zero and served, accuracy and AUC, and the majority baseline
    for key in deterministic:
        assert abs(whole[key] - batched[key]) < 1e-6, key
    tiny_model.eval()
    for a, b in zip(image_codes(tiny_model, split, 30, 30), image_codes(tiny_model, split, 30, 7), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
        assert a.shape[0] == 30


def test_the_work_of_a_batch_stays_on_the_models_device(tiny_model: JMVAE) -> None:
    """On the meta device nothing is computed and a tensor from any other device raises: each batch's scores and
    the figure's faces are made from the model's device alone (what CUDA needs), before the one read back."""
    from jmvae.training.evaluate import batch_scores
    from jmvae.training.report import attribute_faces

    model = tiny_model.to("meta").eval()
    x = torch.rand(5, 3, 16, 16, device="meta")
    w = torch.ones(5, 40, device="meta")
    majority = torch.zeros(40, dtype=torch.bool, device="meta")
    with torch.inference_mode():
        scalars, bounds, logits = batch_scores(model, x, w, 0.1, 2, 2, None, majority)
        faces = attribute_faces(model, np.zeros((3, 40), np.float32), seed=0, n_random=2)
    assert {"log_pxw", "attr_acc_kl", "attr_acc_served", "attr_acc_majority"} <= scalars.keys()
    assert bounds.keys() == {"log_px_multiple", "log_px_single", "log_pxw", "log_px_given_w"}
    assert {t.device.type for t in [*scalars.values(), *bounds.values(), *logits.values(), faces]} == {"meta"}
    assert faces.shape == (3, 3, 3, 16, 16)
    with pytest.raises(RuntimeError, match="device"):  # the detector works: a CPU tensor in a meta model's pass
        batch_scores(model, torch.rand(5, 3, 16, 16), w, 0.1, 2, 2, None, majority)
