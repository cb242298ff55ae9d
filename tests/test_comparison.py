"""Like with like: mismatches() names each way a baseline's setup differs from the checkpoint's, and nothing else."""

import pytest
from tiny_configs import TINY_MODEL

from jmvae.model.comparison import Setup, mismatches
from jmvae.model.preprocess import Preprocessing

REFERENCE = Setup(model=TINY_MODEL, preprocessing=Preprocessing(image_size=16), content_key="ab" * 32)


def _with(model: dict | None = None, preprocessing: dict | None = None, **changes: object) -> Setup:
    return REFERENCE.model_copy(
        update={
            "model": TINY_MODEL.model_copy(update=model or {}),
            "preprocessing": REFERENCE.preprocessing.model_copy(update=preprocessing or {}),
            **changes,
        }
    )


@pytest.mark.parametrize(
    "other, expected",
    [
        (_with({"latent_dim": 7}), ["model latent_dim 7 vs 6"]),
        (_with({"conv_channels": (8, 32)}), ["model conv_channels [8, 32] vs [8, 16]"]),
        (_with({"image_sigma": 0.5}), ["σ 0.5 vs 0.1"]),
        (_with({"image_likelihood": "gaussian-learned"}), ["image likelihood gaussian-learned vs gaussian-fixed"]),
        (_with(preprocessing={"crop": "aligned"}), ["preprocessing crop aligned vs detector"]),
        (_with(content_key="cd" * 32), ["training data content key cdcdcdcdcdcd vs abababababab"]),
        (_with({"latent_dim": 7, "image_sigma": 0.5}), ["σ 0.5 vs 0.1", "model latent_dim 7 vs 6"]),
    ],
)
def test_each_difference_is_named(other: Setup, expected: list[str]) -> None:
    assert mismatches(REFERENCE, other) == expected


def test_a_nested_preprocessing_difference_names_its_leaf() -> None:
    detection = REFERENCE.preprocessing.detection.model_copy(update={"min_neighbors": 4})
    assert mismatches(REFERENCE, _with(preprocessing={"detection": detection})) == [
        "preprocessing detection.min_neighbors 4 vs 3"
    ]


def test_what_does_not_change_a_bound_is_not_a_difference() -> None:
    # The kind is what is compared; a fixed σ never reads its floor.
    assert mismatches(REFERENCE, _with({"kind": "vae", "min_image_sigma": 0.05})) == []
    learned = _with({"image_likelihood": "gaussian-learned"})
    assert (
        mismatches(learned, learned.model_copy(update={"model": learned.model.model_copy(update={"kind": "cvae"})}))
        == []
    )
    assert mismatches(learned, _with({"image_likelihood": "gaussian-learned", "min_image_sigma": 0.05})) == [
        "σ floor 0.05 vs 0.01"
    ]
