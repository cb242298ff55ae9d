"""Completing a partial attribute vector from the training data's pairwise counts."""

import numpy as np
import pytest

from jmvae.model.attributes import AttributePrior
from jmvae.training.data import CELEBA_ATTRIBUTES
from jmvae.training.report import FIGURE_ATTRIBUTES, figure_rows
from jmvae.training.synthetic import synthetic_dataset

NAN = np.nan


def _prior(rows: list[list[int]]) -> AttributePrior:
    present = (np.array(rows) > 0).astype(np.int64)
    return AttributePrior(len(present), present.sum(axis=0), present.T @ present)


# Attribute 0 is rare (2 of 6); attribute 1 comes with it and only with it; attribute 2 is common and unrelated.
ROWS = [[1, 1, 1], [1, 1, 1], [-1, -1, 1], [-1, -1, 1], [-1, -1, -1], [-1, -1, 1]]


def test_nothing_set_gives_the_majority_values() -> None:
    prior = _prior(ROWS)
    np.testing.assert_array_equal(prior.typical, [-1, -1, 1])
    np.testing.assert_array_equal(prior.complete([NAN, NAN, NAN]), prior.typical)


def test_unset_attributes_follow_the_set_ones() -> None:
    prior = _prior(ROWS)
    np.testing.assert_array_equal(prior.complete([2, NAN, NAN]), [2, 1, 1])  # 1 comes with 0; 2 stays common
    np.testing.assert_array_equal(prior.complete([NAN, 1, NAN]), [1, 1, 1])
    np.testing.assert_array_equal(prior.complete([-1, NAN, -0.5]), [-1, -1, -0.5])  # set values are kept as given
    # 0 means unknown: it is kept, and it informs nothing.
    np.testing.assert_array_equal(prior.complete([0, NAN, NAN]), [0, -1, 1])


def test_a_pair_never_seen_together_stays_finite() -> None:
    prior = _prior([[1, -1], [-1, 1], [-1, 1]])
    assert np.isfinite(prior.shift_present).all() and np.isfinite(prior.shift_absent).all()
    np.testing.assert_array_equal(prior.complete([1, NAN]), [1, -1])


def test_pair_counts_must_match_the_attributes() -> None:
    with pytest.raises(ValueError, match="3×3"):
        AttributePrior(10, np.ones(3), np.ones((2, 2)))


def test_a_training_summary_completes_like_its_data() -> None:
    """The synthetic faces' rules: facial hair is (almost) only male and sets No_Beard to -1."""
    dataset = synthetic_dataset(2000, 0, 0, seed=0, image_size=16)
    prior = AttributePrior.from_summary(dataset.summary(), CELEBA_ATTRIBUTES)
    index = CELEBA_ATTRIBUTES.index
    assert prior.typical[index("Male")] == -1 and prior.typical[index("No_Beard")] == 1
    w = np.full(len(CELEBA_ATTRIBUTES), NAN)
    w[index("Mustache")] = 2
    completed = prior.complete(w)
    assert completed[index("Male")] == 1 and completed[index("No_Beard")] == -1 and completed[index("Mustache")] == 2


def test_a_summary_without_pair_counts_completes_with_the_majority() -> None:
    """Checkpoints written before the counts were recorded keep their old behaviour."""
    summary = synthetic_dataset(500, 0, 0, seed=0, image_size=16).summary()
    del summary["attribute_pair_counts"]
    prior = AttributePrior.from_summary(summary, CELEBA_ATTRIBUTES)
    w = np.full(len(CELEBA_ATTRIBUTES), NAN)
    w[CELEBA_ATTRIBUTES.index("Mustache")] = 2
    expected = np.where(np.array([summary["attribute_prevalence"][n] for n in CELEBA_ATTRIBUTES]) >= 0.5, 1.0, -1.0)
    expected[CELEBA_ATTRIBUTES.index("Mustache")] = 2
    np.testing.assert_array_equal(prior.complete(w), expected)


def test_figure_rows_are_what_generate_asks_for() -> None:
    names = list(CELEBA_ATTRIBUTES)
    prior = AttributePrior.from_summary(synthetic_dataset(2000, 0, 0, seed=0, image_size=16).summary(), names)
    rows = figure_rows(prior, names)
    assert [name for name, _ in rows] == ["typical", *FIGURE_ATTRIBUTES]
    np.testing.assert_array_equal(rows[0][1], prior.typical)
    bald = dict(rows)["Bald"]
    assert bald[names.index("Bald")] == 2 and bald[names.index("Male")] == 1 and bald[names.index("Bangs")] == -1
