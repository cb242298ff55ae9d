"""The synthetic faces: shapes, determinism, attribute consistency, and that exactly the rendered attributes show."""

from __future__ import annotations

import time

import numpy as np
import pytest

from jmvae.training.data import CELEBA_ATTRIBUTES, SPLITS
from jmvae.training.synthetic import RENDERED_ATTRIBUTES, render_faces, sample_attributes, synthetic_dataset

COL = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}
HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
UNRENDERED = tuple(name for name in CELEBA_ATTRIBUTES if name not in RENDERED_ATTRIBUTES)
# Toggling No_Beard alone draws nothing: the drawing shows it through Mustache and Goatee.
DRAWN_DIRECTLY = tuple(name for name in RENDERED_ATTRIBUTES if name != "No_Beard")

N_FIT, N_HELD_OUT = 1500, 500
MIN_RENDERED_ACCURACY = 0.85  # balanced accuracy: a rare attribute can't pass by predicting "absent"
MAX_UNRENDERED_ACCURACY = 0.62


@pytest.fixture(scope="module")
def many_attributes() -> np.ndarray:
    return sample_attributes(20_000, np.random.default_rng(7)) > 0


def test_sample_attributes_shape_dtype_values() -> None:
    a = sample_attributes(300, np.random.default_rng(0))
    assert a.shape == (300, len(CELEBA_ATTRIBUTES)) and a.dtype == np.int8
    assert set(np.unique(a).tolist()) == {-1, 1}
    assert len(RENDERED_ATTRIBUTES) >= 12 and set(RENDERED_ATTRIBUTES) <= set(CELEBA_ATTRIBUTES)


def test_attributes_are_consistent(many_attributes: np.ndarray) -> None:
    on = {name: many_attributes[:, COL[name]] for name in CELEBA_ATTRIBUTES}
    hair = np.stack([on[name] for name in HAIR_COLOURS], axis=1)
    assert hair.sum(axis=1).max() == 1
    assert not (on["Bald"] & (hair.any(axis=1) | on["Bangs"] | on["Wearing_Hat"])).any()
    assert (on["No_Beard"] == ~(on["Mustache"] | on["Goatee"])).all()
    male, female = on["Male"], ~on["Male"]
    for name in ("Mustache", "Goatee", "Wearing_Necktie", "Bald"):
        assert on[name][female].mean() < 0.05 < 0.15 < on[name][male].mean(), name
    for name in ("Wearing_Lipstick", "Heavy_Makeup"):
        assert on[name][male].mean() < 0.05 < 0.3 < on[name][female].mean(), name
    assert on["Mouth_Slightly_Open"][on["Smiling"]].mean() > on["Mouth_Slightly_Open"][~on["Smiling"]].mean() + 0.2


@pytest.mark.parametrize("name", RENDERED_ATTRIBUTES)
def test_rendered_attribute_prevalence_is_learnable(many_attributes: np.ndarray, name: str) -> None:
    assert 0.10 <= many_attributes[:, COL[name]].mean() <= 0.90


def test_unrendered_attributes_are_independent_noise(many_attributes: np.ndarray) -> None:
    corr = np.corrcoef(many_attributes.T.astype(float))
    rendered = [COL[name] for name in RENDERED_ATTRIBUTES]
    for name in UNRENDERED:
        others = np.delete(corr[COL[name]], COL[name])
        # with 20,000 rows an independent pair's correlation has a standard deviation of about 0.007
        assert np.abs(others).max() < 0.04, name
    assert np.abs(corr[np.ix_(rendered, rendered)] - np.eye(len(rendered))).max() > 0.3  # the sampler does correlate


def test_dataset_shapes_metadata_and_empty_split() -> None:
    ds = synthetic_dataset(n_train=12, n_val=5, n_test=0, seed=1)
    assert ds.name == "synthetic" and ds.attribute_names == CELEBA_ATTRIBUTES
    assert set(ds.splits) == set(SPLITS)
    for split, n in (("train", 12), ("val", 5), ("test", 0)):
        arrays = ds.split(split)
        assert arrays.images.shape == (n, 64, 64, 3) and arrays.images.dtype == np.uint8
        assert arrays.attributes.shape == (n, len(CELEBA_ATTRIBUTES)) and arrays.attributes.dtype == np.int8
    assert len(ds.content_key) == 64 and int(ds.content_key, 16) >= 0
    assert ds.summary()["sizes"] == {"train": 12, "val": 5, "test": 0}
    small = synthetic_dataset(n_train=3, n_val=0, n_test=0, image_size=32)
    assert small.split("train").images.shape == (3, 32, 32, 3)
    assert small.split("val").images.shape == (0, 32, 32, 3)


def test_images_use_the_full_range_and_are_not_blank() -> None:
    images = synthetic_dataset(n_train=50, n_val=0, n_test=0).split("train").images
    assert images.min() < 30 and images.max() > 225
    assert images.reshape(50, -1).std(axis=1).min() > 20


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    a, b = synthetic_dataset(20, 4, 4, seed=5), synthetic_dataset(20, 4, 4, seed=5)
    c = synthetic_dataset(20, 4, 4, seed=6)
    assert a.content_key == b.content_key != c.content_key
    for split in SPLITS:
        assert np.array_equal(a.split(split).images, b.split(split).images)
        assert np.array_equal(a.split(split).attributes, b.split(split).attributes)
        assert not np.array_equal(a.split(split).images, c.split(split).images)
    assert not np.array_equal(a.split("train").attributes, c.split("train").attributes)
    keys = {synthetic_dataset(n_train=2, n_val=1, n_test=1, seed=5, image_size=s).content_key for s in (32, 64)}
    keys.add(synthetic_dataset(n_train=3, n_val=1, n_test=1, seed=5).content_key)
    assert len(keys) == 3


def test_splits_are_distinct_and_independent_of_other_split_sizes() -> None:
    a, b = synthetic_dataset(10, 6, 6, seed=2), synthetic_dataset(30, 6, 6, seed=2)
    assert np.array_equal(a.split("val").images, b.split("val").images)
    assert np.array_equal(a.split("test").attributes, b.split("test").attributes)
    assert not np.array_equal(a.split("val").images, a.split("test").images)


def test_nuisance_varies_images_beyond_their_attributes() -> None:
    rows = sample_attributes(8, np.random.default_rng(0))
    first, again = render_faces(rows, np.random.default_rng(1)), render_faces(rows, np.random.default_rng(1))
    other = render_faces(rows, np.random.default_rng(2))
    assert np.array_equal(first, again)
    per_image_change = np.abs(first.astype(int) - other.astype(int)).reshape(8, -1).mean(axis=1)
    assert per_image_change.min() > 5
    twins = render_faces(np.repeat(rows[:1], 4, axis=0), np.random.default_rng(3)).astype(int)
    for i in range(1, 4):
        assert np.abs(twins[0] - twins[i]).mean() > 5


def test_render_rejects_wrong_attribute_width() -> None:
    with pytest.raises(ValueError):
        render_faces(np.ones((2, 39), np.int8), np.random.default_rng(0))


def _base_row() -> np.ndarray:
    """A consistent row with every drawn attribute off: a woman with (auburn) hair and no beard."""
    row = np.full(len(CELEBA_ATTRIBUTES), -1, np.int8)
    row[COL["No_Beard"]] = 1
    return row


@pytest.mark.parametrize("name", DRAWN_DIRECTLY)
def test_each_rendered_attribute_changes_the_drawing(name: str) -> None:
    off, on = _base_row(), _base_row()
    on[COL[name]] = 1
    images = [render_faces(row[None], np.random.default_rng(11))[0].astype(int) for row in (off, on)]
    changed = np.abs(images[0] - images[1]).max(axis=2) > 20  # same rng, so the same noise: any change is drawn
    assert changed.sum() >= 15, f"{name} changes only {changed.sum()} pixels"


@pytest.mark.parametrize("name", UNRENDERED)
def test_unrendered_attribute_leaves_the_drawing_unchanged(name: str) -> None:
    off, on = _base_row(), _base_row()
    on[COL[name]] = 1
    images = [render_faces(row[None], np.random.default_rng(11)) for row in (off, on)]
    assert np.array_equal(images[0], images[1])


def _features(images: np.ndarray) -> np.ndarray:
    """Block means (and their squares, so middle colours like brown hair are separable) plus coarser block max/min,
    which tolerate the few pixels of position jitter that small features such as eyes move by."""
    x = images.astype(np.float64) / 255
    n = len(x)
    fine = x.reshape(n, 16, 4, 16, 4, 3).mean(axis=(2, 4))
    coarse = x.reshape(n, 8, 8, 8, 8, 3)
    parts = (fine, fine**2, coarse.max(axis=(2, 4)), coarse.min(axis=(2, 4)))
    return np.concatenate([p.reshape(n, -1) for p in parts], axis=1)


@pytest.fixture(scope="module")
def held_out_balanced_accuracy() -> dict[str, float]:
    """Per attribute, balanced accuracy on held-out faces of a ridge-regression classifier on pixel features."""
    rng = np.random.default_rng(2024)
    attributes = sample_attributes(N_FIT + N_HELD_OUT, rng)
    features = _features(render_faces(attributes, rng))
    fit, held_out = features[:N_FIT], features[N_FIT:]
    mean, std = fit.mean(axis=0), fit.std(axis=0) + 1e-3
    fit, held_out = (fit - mean) / std, (held_out - mean) / std
    y = attributes > 0
    y_fit, y_held_out = y[:N_FIT], y[N_FIT:]
    # Ridge regression in its dual form (fewer samples than features), all 40 attributes at once. Targets of
    # +1/n_pos and -1/n_neg weigh both classes equally however rare one is.
    gram = fit @ fit.T
    targets = np.where(y_fit, 1 / y_fit.sum(axis=0), -1 / (~y_fit).sum(axis=0))
    alpha = np.linalg.solve(gram + 0.01 * np.trace(gram) / N_FIT * np.eye(N_FIT), targets)
    fit_scores, held_out_scores = gram @ alpha, held_out @ fit.T @ alpha

    def class_mean(mask: np.ndarray) -> np.ndarray:
        return np.where(mask, fit_scores, 0).sum(axis=0) / mask.sum(axis=0)

    predicted = held_out_scores > (class_mean(y_fit) + class_mean(~y_fit)) / 2  # midway between the classes
    recall = (predicted & y_held_out).sum(axis=0) / y_held_out.sum(axis=0)
    specificity = (~predicted & ~y_held_out).sum(axis=0) / (~y_held_out).sum(axis=0)
    return dict(zip(CELEBA_ATTRIBUTES, ((recall + specificity) / 2).tolist()))


@pytest.mark.parametrize("name", RENDERED_ATTRIBUTES)
def test_rendered_attribute_is_visible(held_out_balanced_accuracy: dict[str, float], name: str) -> None:
    assert held_out_balanced_accuracy[name] >= MIN_RENDERED_ACCURACY


def test_unrendered_attributes_are_not_predictable(held_out_balanced_accuracy: dict[str, float]) -> None:
    accuracies = [held_out_balanced_accuracy[name] for name in UNRENDERED]
    assert max(accuracies) <= MAX_UNRENDERED_ACCURACY
    assert np.mean(accuracies) <= 0.55


def test_rendering_is_fast() -> None:
    rows = sample_attributes(500, np.random.default_rng(0))
    start = time.perf_counter()
    render_faces(rows, np.random.default_rng(0))
    # About 0.15 s on one core; the bound leaves room for a loaded CI machine but not for a 10x regression.
    assert time.perf_counter() - start < 2.0
