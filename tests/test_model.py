import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from jmvae.model.config import ModelConfig
from jmvae.model.distributions import DiagGaussian, standard_normal_log_prob
from jmvae.model.jmvae import JMVAE
from jmvae.model.networks import fold_batch_norms


def test_default_config_is_the_papers_celeba_network() -> None:
    model = JMVAE(ModelConfig())
    convs = [m for m in model.image_encoder.features.conv if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    norms = [m for m in model.image_encoder.features.conv if isinstance(m, torch.nn.BatchNorm2d)]
    assert [n.num_features for n in norms] == [128, 256, 256]  # none on the first convolution
    assert model.image_encoder.features.dense[0].out_features == 1024
    assert model.joint_encoder.attributes[0].out_features == 512
    assert model.image_encoder.head.linear.out_features == 2 * 128


def test_config_rejects_image_size_not_divisible() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(image_size=60)


def test_shapes_and_inference_modes(tiny_model: JMVAE, batch) -> None:
    x, w = batch
    tiny_model.eval()
    for q in (tiny_model.q_joint(x, w), tiny_model.q_image(x), tiny_model.q_attributes(w)):
        assert q.mean.shape == q.logvar.shape == (12, 6)
    z = tiny_model.q_joint(x, w).rsample()
    assert tiny_model.decode_image(z).shape == (12, 3, 16, 16)
    assert tiny_model.decode_attributes(z).shape == (12, 40)
    assert tiny_model.decode_image(torch.zeros(5, 12, 6)).shape == (5, 12, 3, 16, 16)
    image = tiny_model.decode_image(z)
    assert image.min() >= 0 and image.max() <= 1

    torch.testing.assert_close(tiny_model.infer(x=x, mode="kl").mean, tiny_model.q_image(x).mean)
    torch.testing.assert_close(tiny_model.infer(w=w, mode="kl").mean, tiny_model.q_attributes(w).mean)
    torch.testing.assert_close(tiny_model.infer(x=x, mode="zero").mean, tiny_model.q_joint(x, torch.zeros_like(w)).mean)
    torch.testing.assert_close(tiny_model.infer(w=w, mode="zero").mean, tiny_model.q_joint(torch.zeros_like(x), w).mean)
    torch.testing.assert_close(tiny_model.infer(x=x, w=w).mean, tiny_model.q_joint(x, w).mean)
    with pytest.raises(ValueError):
        tiny_model.infer()
    with pytest.raises(ValueError, match="mode"):
        tiny_model.infer(x=x, mode="bogus")  # type: ignore[arg-type]


def test_folding_batch_norms_keeps_every_network_s_function(tiny_model: JMVAE, batch) -> None:
    x, w = batch
    torch.manual_seed(0)
    with torch.no_grad():  # statistics and affine terms far from the identity, so that a wrong fold shows
        for norm in (m for m in tiny_model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.normal_()
            norm.bias.normal_()
    tiny_model.eval()
    folded = fold_batch_norms(tiny_model)
    assert isinstance(folded, JMVAE) and not folded.training
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny_model.modules())  # the original is untouched
    with torch.no_grad():
        z = tiny_model.q_joint(x, w).mean
        pairs = [
            (tiny_model.q_joint(x, w).mean, folded.q_joint(x, w).mean),
            (tiny_model.q_image(x).logvar, folded.q_image(x).logvar),
            (tiny_model.q_attributes(w).mean, folded.q_attributes(w).mean),
            (tiny_model.decode_image(z), folded.decode_image(z)),
            (tiny_model.decode_attributes(z), folded.decode_attributes(z)),
        ]
    for expected, got in pairs:
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_closed_form_kl_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    q = DiagGaussian(torch.randn(1, 5, generator=g), torch.randn(1, 5, generator=g) * 0.5)
    p = DiagGaussian(torch.randn(1, 5, generator=g), torch.randn(1, 5, generator=g) * 0.5)
    z = q.rsample(400_000, generator=g)
    mc_pq = (q.log_prob(z) - p.log_prob(z)).mean()
    mc_prior = (q.log_prob(z) - standard_normal_log_prob(z)).mean()
    assert float(q.kl(p)) == pytest.approx(float(mc_pq), abs=0.03)
    assert float(q.kl_standard_normal()) == pytest.approx(float(mc_prior), abs=0.03)
    assert float(q.kl(q)) == pytest.approx(0.0, abs=1e-6)


def test_log_prob_matches_torch_distributions() -> None:
    q = DiagGaussian(torch.randn(3, 4), torch.randn(3, 4))
    z = torch.randn(3, 4)
    expected = Normal(q.mean, q.std).log_prob(z).sum(-1)
    torch.testing.assert_close(q.log_prob(z), expected)


def test_log_likelihoods_sum_over_every_value(tiny_model: JMVAE, batch) -> None:
    x, w = batch
    mean = torch.rand_like(x)
    expected = Normal(mean, 0.1).log_prob(x).sum(dim=(1, 2, 3))  # all 3·16·16 values, no per-channel mean
    torch.testing.assert_close(tiny_model.image_log_likelihood(x, mean), expected)
    logits = torch.randn(12, 40)
    expected_w = Bernoulli(logits=logits).log_prob((w > 0).float()).sum(-1)
    torch.testing.assert_close(tiny_model.attribute_log_likelihood(w, logits), expected_w)


def test_learned_sigma_is_a_parameter_with_a_floor(tiny_config: ModelConfig, batch) -> None:
    config = ModelConfig.model_validate(
        tiny_config.model_dump() | {"image_likelihood": "gaussian-learned", "image_sigma": 0.2, "min_image_sigma": 0.05}
    )
    model = JMVAE(config)
    assert "image_likelihood.log_sigma" in dict(model.named_parameters())
    x, _ = batch
    with torch.no_grad():
        model.image_likelihood.log_sigma.fill_(math.log(1e-6))
    floor = Normal(x, 0.05).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(model.image_log_likelihood(x, x), floor)
    assert "image_likelihood.log_sigma" not in dict(
        JMVAE(config.model_copy(update={"image_likelihood": "gaussian-fixed"})).named_parameters()
    )


def test_objective_terms_and_gradients(tiny_model: JMVAE, batch) -> None:
    x, w = batch
    terms = tiny_model(x, w, alpha=0.1, beta=0.5, generator=torch.Generator().manual_seed(0))
    expected = -(terms.log_px + terms.log_pw - 0.5 * terms.kl_prior - 0.1 * (terms.kl_image + terms.kl_attributes))
    torch.testing.assert_close(terms.loss, expected)
    assert terms.kl_prior > 0 and terms.kl_image > 0 and terms.kl_attributes > 0
    terms.loss.backward()
    assert tiny_model.image_encoder.head.linear.weight.grad.abs().sum() > 0
    assert tiny_model.attribute_encoder.head.linear.weight.grad.abs().sum() > 0

    tiny_model.zero_grad(set_to_none=True)
    plain = tiny_model(x, w, alpha=0.0)  # Eq. 1: the unimodal encoders take no part
    assert float(plain.kl_image) == 0.0 and float(plain.kl_attributes) == 0.0
    plain.loss.backward()
    assert tiny_model.image_encoder.head.linear.weight.grad is None
    assert tiny_model.joint_encoder.head.linear.weight.grad.abs().sum() > 0


def test_seeded_forward_is_deterministic(tiny_model: JMVAE, batch) -> None:
    x, w = batch
    a = tiny_model(x, w, generator=torch.Generator().manual_seed(3)).loss
    b = tiny_model(x, w, generator=torch.Generator().manual_seed(3)).loss
    c = tiny_model(x, w, generator=torch.Generator().manual_seed(4)).loss
    assert a.item() == b.item() != c.item()


def test_served_attribute_probabilities_average_six_views(tiny_model, batch) -> None:
    from jmvae.model.jmvae import ATTRIBUTE_VIEW_ZOOMS
    from jmvae.model.preprocess import reframe

    x, _ = batch
    tiny_model.eval()
    with torch.inference_mode():
        served = tiny_model.attribute_probabilities(x)
        views = []
        for zoom in ATTRIBUTE_VIEW_ZOOMS:
            view = reframe(x, torch.full((len(x),), zoom), torch.zeros((len(x), 2)))
            views += [view, view.flip(-1)]
        expected = torch.stack(
            [torch.sigmoid(tiny_model.decode_attributes(tiny_model.infer(x=v).mean)) for v in views]
        ).mean(0)
        single = torch.sigmoid(tiny_model.decode_attributes(tiny_model.infer(x=x).mean))
        mirrored = tiny_model.attribute_probabilities(x.flip(-1))
    assert served.shape == (len(x), 40) and ((served > 0) & (served < 1)).all()
    torch.testing.assert_close(served, expected)
    torch.testing.assert_close(mirrored, served)  # the views of a mirrored face are the same six views
    assert (served - single).abs().max() > 1e-5  # not the single view


def test_reframe_is_the_identity_at_scale_one_and_moves_by_the_shift() -> None:
    from jmvae.model.preprocess import reframe

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(reframe(x, torch.ones(2), torch.zeros(2, 2)), x, atol=1e-5, rtol=0)
    # A box moved right by 1/16 of its side shows the face 1 pixel to the left; the last column repeats the edge.
    moved = reframe(x, torch.ones(2), torch.tensor([[1 / 16, 0.0], [1 / 16, 0.0]]))
    torch.testing.assert_close(moved[..., :-1], x[..., 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(moved[..., -1], x[..., -1], atol=1e-5, rtol=0)
