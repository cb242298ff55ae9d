"""Completing a partial attribute vector: the attributes a request leaves out, at their most likely values given
the ones it sets, by the training data's pairwise counts.

q(z|w) is fitted to the attribute combinations faces have. Filling the gaps with each attribute's majority value
(in CelebA a young woman with make-up) and then setting Bald or Male asks for combinations the data hardly has,
and q(z|w) follows the unchanged attributes: the face stays a woman's. Conditioning the gaps on what was set
(naive Bayes over the set attributes) asks for a bald man instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class AttributePrior:
    """Log-odds of each attribute being present, before and given each other attribute's presence or absence."""

    def __init__(self, examples: int, present: np.ndarray, pair_counts: np.ndarray | None = None) -> None:
        """Of `examples` training faces, `present[j]` have attribute j and `pair_counts[i, j]` both i and j. Without
        pair counts, no attribute informs another."""
        present = np.asarray(present, dtype=np.float64)
        if not (np.isfinite(present).all() and (present >= 0).all() and (present <= examples).all()):
            raise ValueError(f"attribute counts must lie in [0, {examples}] (the training faces)")
        # Laplace-smoothed, so a pair never seen together moves the odds a lot but finitely.
        self.base = _logit((present + 1) / (examples + 2))
        n = len(present)
        self.shift_present = self.shift_absent = np.zeros((n, n))
        if pair_counts is not None:
            counts = np.asarray(pair_counts, dtype=np.float64)
            if counts.shape != (n, n):
                raise ValueError(f"pair_counts must be {n}×{n}, got shape {counts.shape}")
            # Counts one data set can have: no pair more often than either of its attributes, and no more faces with
            # i or j than there are faces. Anything else would give probabilities outside (0, 1).
            if not (
                np.isfinite(counts).all()
                and (counts >= 0).all()
                and (counts <= np.minimum(present[:, None], present[None, :])).all()
                and (present[:, None] + present[None, :] - counts <= examples).all()
            ):
                raise ValueError("pair_counts are not the counts of one set of faces")
            given_present = (counts + 1) / (present[:, None] + 2)  # [i, j]: P(j | i present)
            given_absent = (present[None, :] - counts + 1) / (examples - present[:, None] + 2)  # P(j | i absent)
            self.shift_present = _logit(given_present) - self.base[None, :]
            self.shift_absent = _logit(given_absent) - self.base[None, :]

    @classmethod
    def from_summary(cls, data: Mapping[str, Any], names: Sequence[str]) -> AttributePrior:
        """From a checkpoint's data summary. Checkpoints written before the pair counts were recorded carry only
        each attribute's prevalence: they complete every request with the majority values, as they used to."""
        try:
            examples = int(data.get("sizes", {}).get("train", 0))
            if "attribute_pair_counts" in data and examples > 0:
                counts = np.asarray(data["attribute_pair_counts"], dtype=np.float64)
                if counts.shape != (len(names), len(names)):
                    raise ValueError(f"attribute_pair_counts must be {len(names)}×{len(names)}, got {counts.shape}")
                return cls(examples, np.diag(counts), counts)
            prevalence = data.get("attribute_prevalence", {})
            examples = max(examples, 1)
            return cls(examples, np.array([prevalence.get(name, 0.0) for name in names], np.float64) * examples)
        except (AttributeError, TypeError, ValueError) as e:  # a summary written by hand or damaged
            raise ValueError(f"unusable attribute statistics in the data summary: {e}") from None

    @property
    def typical(self) -> np.ndarray:
        """Each attribute at its majority value (ties count as present), in CelebA's coding."""
        return np.where(self.base >= 0, 1.0, -1.0).astype(np.float32)

    def complete(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """`values` in CelebA's coding with NaN where unset → the full vector: set values kept, each unset one at
        ±1 by the sign of its log-odds given the signs of the set ones (0 sets nothing)."""
        w = np.asarray(values, dtype=np.float32)
        unset = np.isnan(w)
        logodds = self.base + (w > 0) @ self.shift_present + (w < 0) @ self.shift_absent  # NaN compares False
        return np.where(unset, np.where(logodds >= 0, 1.0, -1.0), w).astype(np.float32)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)
