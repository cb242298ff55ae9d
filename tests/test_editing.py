"""The edit arithmetic x′ = x + x′_mean − x_mean that POST /edit and the report's Figure 2 share."""

from __future__ import annotations

import numpy as np

from jmvae.model.editing import edit_face, read_attributes, with_changes


def test_read_attributes_codes_present_as_one_and_absent_as_minus_one() -> None:
    w = read_attributes(np.array([0.0, 0.49, 0.5, 0.97], np.float32))
    assert w.dtype == np.float32 and w.tolist() == [-1.0, -1.0, 1.0, 1.0]


def test_with_changes_sets_only_the_named_attributes_on_a_copy() -> None:
    w = np.array([-1.0, 1.0, -1.0], np.float32)
    w_prime = with_changes(w, ["Bald", "Male", "Smiling"], {"Smiling": 2.0, "Bald": 0.5})
    assert w_prime.tolist() == [0.5, 1.0, 2.0]
    assert w.tolist() == [-1.0, 1.0, -1.0]


def test_edit_face_adds_the_difference_of_the_means_without_wrapping() -> None:
    face = np.array([[[10, 250, 128]]], np.uint8)
    x_mean = np.array([[[100, 100, 100]]], np.uint8)
    x_prime_mean = np.array([[[50, 200, 100]]], np.uint8)
    # 10 − 50 clips at 0 and 250 + 100 at 255 (uint8 arithmetic would wrap to 216 and 94); no change stays put.
    assert edit_face(face, x_mean, x_prime_mean).tolist() == [[[0, 255, 128]]]
    assert edit_face(face, x_mean, x_mean).tolist() == face.tolist()
