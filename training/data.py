"""The in-memory dataset every data source produces and the trainer consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "val", "test")

# CelebA's 40 attributes in the order of list_attr_celeba.txt.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)


@dataclass(frozen=True)
class FaceArrays:
    """One split: preprocessed faces and their attributes, row-aligned."""

    images: np.ndarray  # (N, S, S, 3) uint8, RGB, already cropped and resized to the model's input size
    attributes: np.ndarray  # (N, A) int8 in {-1, 1}, CelebA's own coding

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, S, S, 3), got {self.images.dtype} {self.images.shape}")
        if self.attributes.dtype != np.int8 or self.attributes.ndim != 2:
            raise ValueError(f"attributes must be int8 (N, A), got {self.attributes.dtype} {self.attributes.shape}")
        if len(self.images) != len(self.attributes):
            raise ValueError(f"{len(self.images)} images but {len(self.attributes)} attribute rows")

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def empty(image_size: int, n_attributes: int) -> FaceArrays:
        return FaceArrays(np.zeros((0, image_size, image_size, 3), np.uint8), np.zeros((0, n_attributes), np.int8))


@dataclass(frozen=True)
class FaceDataset:
    """A whole data source: its splits (an absent partition is an empty split) and what it is."""

    name: str  # "synthetic" or the CelebA root it came from
    content_key: str  # hex digest identifying the source's content and preprocessing
    attribute_names: tuple[str, ...]
    splits: dict[str, FaceArrays] = field(default_factory=dict)

    def split(self, name: str) -> FaceArrays:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self.splits[name]

    def summary(self) -> dict[str, object]:
        """What a checkpoint records about the data it was trained on."""
        train = self.splits["train"]
        present = (train.attributes > 0).astype(np.int64)
        prevalence = present.mean(axis=0) if len(train) else np.zeros(len(self.attribute_names))
        return {
            "name": self.name,
            "content_key": self.content_key,
            "sizes": {s: len(self.splits[s]) for s in SPLITS},
            "attribute_prevalence": {n: round(float(p), 4) for n, p in zip(self.attribute_names, prevalence)},
            # [i][j]: training faces with attributes i and j both present; what completes a partial attribute
            # vector (jmvae.model.attributes). Aggregate counts, no face's own labels.
            "attribute_pair_counts": (present.T @ present).tolist(),
        }
