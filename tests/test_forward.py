"""The served model's tensor work (service/forward.py): the CPU path as the model computes it, the capture buckets,
and reduced precision within its stated tolerance of fp32."""

import numpy as np
import pytest
import torch

from jmvae.model.preprocess import denormalise, normalise
from jmvae.service.engine import Engine, GenerateJob
from jmvae.service.forward import buckets
from jmvae.service.metrics import ServiceMetrics
from jmvae.service.settings import Settings
from jmvae.training.synthetic import synthetic_dataset

# What JMVAE_PRECISION=bf16 or fp16 promises against fp32 (service/settings.py, docs/service.md).
PROBABILITY_TOLERANCE = 0.03
GREY_LEVEL_TOLERANCE = 8


def test_buckets_are_powers_of_two_up_to_the_largest_batch() -> None:
    assert buckets(1) == [1]
    assert buckets(32) == [1, 2, 4, 8, 16, 32]
    assert buckets(544) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]  # 32 jobs of 1 + 16 faces


@pytest.fixture(scope="module")
def engines() -> dict[str, Engine]:
    return {p: Engine.load(Settings(device="cpu", precision=p), ServiceMetrics()) for p in ("fp32", "bf16")}


@pytest.fixture(scope="module")
def faces() -> list[np.ndarray]:
    return list(synthetic_dataset(n_train=0, n_val=0, n_test=24, seed=3, image_size=64).split("test").images)


def _jobs(engine: Engine) -> list[GenerateJob]:
    settings = [{"Smiling": 2.0, "Male": -1.0}, {"Eyeglasses": 2.0}, {}, {"Blond_Hair": 2.0, "Male": 2.0}]
    return [GenerateJob(engine.attribute_vector(s), n=3, zeta=1.0, seed=i) for i, s in enumerate(settings)]


def test_the_cpu_path_computes_what_the_model_does(engines: dict[str, Engine], faces: list) -> None:
    engine = engines["fp32"]
    model = engine.model
    with torch.inference_mode():
        expected = model.attribute_probabilities(normalise(torch.from_numpy(np.stack(faces))), mode=engine.mode)
        jobs = _jobs(engine)
        q = model.infer(w=torch.from_numpy(np.stack([j.attributes for j in jobs])), mode=engine.mode)
        average = denormalise(model.decode_image(q.mean)).numpy()
    got = np.stack([e.probabilities for e in engine.encode_batch(faces)])
    # The served networks have their batch norms folded in: the same function up to float rounding.
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    generated = engine.generate_batch(jobs)
    served = np.stack([g.average for g in generated]).astype(np.int16)
    assert np.abs(served - average).max() <= 1
    assert [g.faces.shape[0] for g in generated] == [3] * 4
    # The same seed gives the same faces alone as in a batch.
    np.testing.assert_array_equal(engine.generate_batch(jobs[1:2])[0].faces, generated[1].faces)


def test_bf16_answers_stay_within_the_stated_tolerance_of_fp32(engines: dict[str, Engine], faces: list) -> None:
    fp32, bf16 = engines["fp32"], engines["bf16"]
    exact = np.stack([e.probabilities for e in fp32.encode_batch(faces)])
    reduced = np.stack([e.probabilities for e in bf16.encode_batch(faces)])
    assert not np.array_equal(exact, reduced)  # bf16 ran: the answers moved
    assert np.abs(exact - reduced).max() <= PROBABILITY_TOLERANCE
    jobs = _jobs(fp32)
    for a, b in zip(fp32.generate_batch(jobs), bf16.generate_batch(jobs), strict=True):
        for x, y in ((a.average, b.average), (a.faces, b.faces)):
            assert np.abs(x.astype(np.int16) - y.astype(np.int16)).max() <= GREY_LEVEL_TOLERANCE
