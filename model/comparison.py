"""Whether two models' bounds measure the same thing: Table 1 compares like with like or not at all.

A log-likelihood in nats depends on the image likelihood it is computed under (σ = 0.1 and σ = 0.5 put the same
faces thousands of nats apart), on the networks, on how the faces were cropped and on the data the models learned
from. `mismatches` names every one of these that differs; `jmvae eval` refuses such a baseline (or marks its row
with --allow-mismatch) and `jmvae reproduce` refuses to resume into one.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from .checkpoint import CheckpointMeta
from .config import ModelConfig
from .preprocess import Preprocessing

# The image likelihood's fields, named apart from the networks' because they change what a nat means.
_LIKELIHOOD = ("image_likelihood", "image_sigma", "min_image_sigma")


class Setup(BaseModel):
    """What must agree between two models for their bounds to be compared: networks and image likelihood (the
    model's kind aside), preprocessing, and the training data's content key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelConfig
    preprocessing: Preprocessing
    content_key: str | None

    @classmethod
    def of(cls, meta: CheckpointMeta) -> Setup:
        return cls(model=meta.model, preprocessing=meta.preprocessing, content_key=meta.data.get("content_key"))


def mismatches(reference: Setup, other: Setup) -> list[str]:
    """Each way `other` differs from `reference`, as "what other's vs reference's"; empty when alike."""
    found = []
    ref_model, other_model = reference.model.model_dump(), other.model.model_dump()
    if ref_model["image_likelihood"] != other_model["image_likelihood"]:
        found.append(f"image likelihood {other_model['image_likelihood']} vs {ref_model['image_likelihood']}")
    learned = "learned" if ref_model["image_likelihood"] == "gaussian-learned" else "fixed"
    if ref_model["image_sigma"] != other_model["image_sigma"]:
        found.append(
            f"{'initial ' if learned == 'learned' else ''}σ {_show(other_model['image_sigma'])} vs "
            f"{_show(ref_model['image_sigma'])}"
        )
    # The floor only bounds a learned σ; a fixed σ never reads it.
    if learned == "learned" and ref_model["min_image_sigma"] != other_model["min_image_sigma"]:
        found.append(f"σ floor {_show(other_model['min_image_sigma'])} vs {_show(ref_model['min_image_sigma'])}")
    found += _fields("model", ref_model, other_model, skip=("kind", *_LIKELIHOOD))
    found += _fields("preprocessing", reference.preprocessing.model_dump(), other.preprocessing.model_dump())
    if reference.content_key != other.content_key:
        found.append(f"training data content key {_key(other.content_key)} vs {_key(reference.content_key)}")
    return found


def _fields(what: str, reference: dict[str, Any], other: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    ref, oth = _flat(reference), _flat(other)
    return [
        f"{what} {name} {_show(oth.get(name))} vs {_show(ref.get(name))}"
        for name in sorted(set(ref) | set(oth))
        if name.split(".")[0] not in skip and ref.get(name) != oth.get(name)
    ]


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted names (preprocessing.detection.min_neighbors), so a difference names its leaf."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{name}.")
        else:
            out[prefix + name] = value
    return out


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_show, value)) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _key(key: str | None) -> str:
    return "none" if key is None else key[:12]
