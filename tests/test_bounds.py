import math

import pytest
import torch

from jmvae.model.bounds import importance_weighted_bounds
from jmvae.model.jmvae import JMVAE


@pytest.fixture
def trained_a_little(tiny_model: JMVAE, batch) -> JMVAE:
    """A few steps so the posteriors are not the initialisation's; bounds then differ measurably with k."""
    x, w = batch
    opt = torch.optim.Adam(tiny_model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        opt.zero_grad()
        tiny_model(x, w, generator=g).loss.backward()
        opt.step()
    return tiny_model.eval()


def test_bound_is_above_the_elbo_and_tightens_with_k(trained_a_little: JMVAE, batch) -> None:
    model = trained_a_little
    x, w = batch
    x, w = x.repeat(20, 1, 1, 1), w.repeat(20, 1)  # 240 examples: the means below are stable
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        q = model.q_joint(x, w)
        z = q.rsample(50, generator=g)
        recon = model.image_log_likelihood(x, model.decode_image(z)).mean(0)
        recon = recon + model.attribute_log_likelihood(w, model.decode_attributes(z)).mean(0)
        elbo = float((recon - q.kl_standard_normal()).mean())
    by_k = {k: float(importance_weighted_bounds(model, x, w, k=k, generator=g).log_pxw.mean()) for k in (1, 10, 100)}
    assert by_k[1] == pytest.approx(elbo, abs=0.05 * abs(elbo))  # k = 1 is an unbiased ELBO estimate
    assert elbo < by_k[10] < by_k[100]


def test_all_bounds_are_consistent(trained_a_little: JMVAE, batch) -> None:
    x, w = batch
    b = importance_weighted_bounds(trained_a_little, x, w, k=20, n_w=30, generator=torch.Generator().manual_seed(1))
    for name in ("log_px_multiple", "log_px_single", "log_pxw", "log_pw", "log_px_given_w"):
        value = getattr(b, name)
        assert value.shape == (12,) and torch.isfinite(value).all(), name
    torch.testing.assert_close(b.log_px_given_w, b.log_pxw - b.log_pw)
    assert (b.log_pw <= 0).all()  # a probability of a discrete vector
    assert (b.log_pxw < b.log_px_multiple).all()  # log p(x,w) = log p(x) + log p(w|x) < log p(x), estimated


def test_large_k_runs_in_chunks(trained_a_little: JMVAE, batch) -> None:
    x, w = batch
    g = torch.Generator().manual_seed(2)
    # chunk = one batch: 1000 samples go through the decoder 12 at a time, never all at once.
    b = importance_weighted_bounds(trained_a_little, x, w, k=1000, n_w=1000, chunk=12, generator=g)
    assert torch.isfinite(b.log_pxw).all()
    small = importance_weighted_bounds(
        trained_a_little, x, w, k=1000, n_w=1000, chunk=4096, generator=torch.Generator().manual_seed(2)
    )
    # Same k, different chunking: the same estimator, so nearly the same values.
    assert float((b.log_pxw - small.log_pxw).abs().max()) < 0.05 * float(b.log_pxw.abs().mean())
    assert math.isfinite(float(b.log_px_given_w.mean()))


def test_rejects_bad_k(trained_a_little: JMVAE, batch) -> None:
    x, w = batch
    with pytest.raises(ValueError):
        importance_weighted_bounds(trained_a_little, x, w, k=0)
