"""Editing a face's attributes through the joint latent space (the paper's Section 4.4 and Figure 2):
x′ = x + x′_mean − x_mean, where x_mean and x′_mean are the faces decoded from the means of q(z|w) and q(z|w′),
w the attributes read from x and w′ the same with the requested changes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def read_attributes(probabilities: np.ndarray) -> np.ndarray:
    """w in CelebA's coding: 1 where p(w_i = 1 | x) ≥ 0.5, else −1; float32, same shape."""
    return np.where(probabilities >= 0.5, 1.0, -1.0).astype(np.float32)


def with_changes(w: np.ndarray, names: Sequence[str], changes: Mapping[str, float]) -> np.ndarray:
    """w′: a copy of w (A,) with the named attributes set to the given values."""
    w_prime = w.copy()
    for name, value in changes.items():
        w_prime[names.index(name)] = value
    return w_prime


def edit_face(face: np.ndarray, x_mean: np.ndarray, x_prime_mean: np.ndarray) -> np.ndarray:
    """x′ = x + x′_mean − x_mean on uint8 RGB faces of one shape (or broadcasting), clipped to [0, 255]."""
    delta = x_prime_mean.astype(np.int16) - x_mean.astype(np.int16)
    return np.clip(face.astype(np.int16) + delta, 0, 255).astype(np.uint8)
