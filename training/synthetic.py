"""Procedurally drawn faces whose look follows their CelebA attributes: a licence-free toy with known ground truth.

Only the attributes in `RENDERED_ATTRIBUTES` change the drawing; the others are independent coin flips that the
images carry no trace of. Nuisance (position, scale, face width, skin tone within its range, background, clothing,
hair shade, accessory colours, pixel noise) is drawn independently of the attributes, so an image is not a function
of its attributes alone.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from PIL import Image, ImageDraw

from .data import CELEBA_ATTRIBUTES, SPLITS, FaceArrays, FaceDataset

# Bump whenever the attribute sampler or the drawing changes, so content_key (and anything keyed on it) follows.
RENDER_VERSION = "synthetic-faces-v1"

RENDERED_ATTRIBUTES: tuple[str, ...] = (
    "Male",
    "Smiling",
    "Mouth_Slightly_Open",
    "Eyeglasses",
    "Wearing_Hat",
    "Bald",
    "Bangs",
    "Black_Hair",
    "Blond_Hair",
    "Brown_Hair",
    "Gray_Hair",
    "Mustache",
    "Goatee",
    "No_Beard",
    "Pale_Skin",
    "Wearing_Lipstick",
    "Heavy_Makeup",
    "Rosy_Cheeks",
    "Narrow_Eyes",
    "Bushy_Eyebrows",
    "Wearing_Necktie",
)

# Priors of the attributes the drawing ignores (roughly CelebA's); they are pure label noise.
_NOISE_PRIORS: dict[str, float] = {
    "5_o_Clock_Shadow": 0.11,
    "Arched_Eyebrows": 0.27,
    "Attractive": 0.51,
    "Bags_Under_Eyes": 0.20,
    "Big_Lips": 0.24,
    "Big_Nose": 0.23,
    "Blurry": 0.05,
    "Chubby": 0.06,
    "Double_Chin": 0.05,
    "High_Cheekbones": 0.45,
    "Oval_Face": 0.28,
    "Pointy_Nose": 0.28,
    "Receding_Hairline": 0.08,
    "Sideburns": 0.06,
    "Straight_Hair": 0.21,
    "Wavy_Hair": 0.32,
    "Wearing_Earrings": 0.19,
    "Wearing_Necklace": 0.12,
    "Young": 0.77,
}

# Hair categories for people with hair; the last ("other", drawn auburn) sets none of the four CelebA colours.
_HAIR_NAMES = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
_HAIR_PRIORS = (0.30, 0.20, 0.25, 0.13, 0.12)
_HAIR_RGB = np.array([(30, 25, 22), (228, 192, 105), (108, 66, 34), (168, 168, 166), (158, 58, 26)], float)

# Skin: non-pale spans light tan to dark brown; pale sits clearly above its light end.
_SKIN_RANGE = np.array([(218, 172, 136), (105, 68, 44)], float)
_PALE_RANGE = np.array([(252, 232, 220), (240, 216, 202)], float)

# Accessory palettes are saturated so they stand apart from the desaturated backgrounds and from skin.
_HAT_RGB = np.array([(175, 30, 35), (30, 45, 120), (35, 110, 55), (30, 30, 34), (120, 40, 130), (20, 120, 140)], float)
_TIE_RGB = np.array([(150, 20, 30), (25, 35, 100), (30, 30, 30), (20, 90, 50)], float)
_LIPSTICK_RGB = np.array([(200, 20, 45), (215, 35, 85), (160, 10, 35)], float)
_MAKEUP_RGB = np.array([(115, 55, 140), (55, 85, 165), (35, 115, 115), (140, 50, 95)], float)
_IRIS_RGB = np.array([(55, 35, 20), (40, 80, 130), (60, 95, 55), (25, 20, 18)], float)
_MOUTH_RGB = (70, 18, 24)
_EYE_RGB = (242, 242, 236)
_TEETH_RGB = (245, 245, 238)
_BLUSH_RGB = np.array((235, 80, 100), float)
_BROW_RGB = np.array((30, 24, 20), float)
_BALD_BEARD_RGB = np.array((70, 62, 56), float)
_BEARD_CONTRAST = 45.0  # minimum luma difference between facial hair and skin
_LUMA = np.array([0.299, 0.587, 0.114])

_FRINGE = np.linspace(-0.9, 0.9, 9).tolist()  # x of the bangs' zigzag points, as fractions of the half-width
_SUPERSAMPLE = 2  # draw at 2x, then box-downsample: cheap anti-aliasing


def sample_attributes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `n` consistent attribute rows, (n, 40) int8 in {-1, 1}, columns in CelebA order.

    Hair colours are mutually exclusive, baldness rules out hair colour, bangs and hats, facial hair is (almost
    only) male and sets No_Beard to -1, make-up is (almost only) female. Attributes outside RENDERED_ATTRIBUTES are
    independent of everything with fixed priors.
    """

    def flip(p: float | np.ndarray) -> np.ndarray:
        return rng.random(n) < p

    male = flip(0.45)
    bald = flip(np.where(male, 0.22, 0.02))
    hair = rng.choice(len(_HAIR_PRIORS), size=n, p=_HAIR_PRIORS)
    smiling = flip(0.48)
    lipstick = flip(np.where(male, 0.02, 0.78))
    mustache = flip(np.where(male, 0.30, 0.01))
    goatee = flip(np.where(male, 0.30, 0.01))
    on: dict[str, np.ndarray] = {
        "Male": male,
        "Bald": bald,
        **{name: ~bald & (hair == i) for i, name in enumerate(_HAIR_NAMES)},
        "Wearing_Hat": ~bald & flip(0.13),
        "Bangs": ~bald & flip(np.where(male, 0.12, 0.30)),
        "Eyeglasses": flip(0.20),
        "Smiling": smiling,
        "Mouth_Slightly_Open": flip(np.where(smiling, 0.65, 0.30)),
        "Mustache": mustache,
        "Goatee": goatee,
        "No_Beard": ~(mustache | goatee),
        "Wearing_Lipstick": lipstick,
        "Heavy_Makeup": flip(np.where(male, 0.01, np.where(lipstick, 0.70, 0.10))),
        "Pale_Skin": flip(0.15),
        "Rosy_Cheeks": flip(0.15),
        "Narrow_Eyes": flip(0.15),
        "Bushy_Eyebrows": flip(np.where(male, 0.30, 0.10)),
        "Wearing_Necktie": flip(np.where(male, 0.25, 0.01)),
    }
    on.update({name: flip(p) for name, p in _NOISE_PRIORS.items()})
    assert set(on) == set(CELEBA_ATTRIBUTES)
    return np.stack([np.where(on[name], 1, -1) for name in CELEBA_ATTRIBUTES], axis=1).astype(np.int8)


_Ink = tuple[int, int, int]


def _draw_face(
    draw: ImageDraw.ImageDraw, a: dict[str, bool], geometry: list[float], ink: dict[str, _Ink], unit: float
) -> None:
    """Draw one face. Coordinates are face-relative, in pixels of a 64-pixel image; `unit` maps them to the canvas."""
    dx, dy, s, width = geometry
    cx, cy = 32.0 + dx, 31.0 + dy

    def pt(x: float, y: float) -> tuple[float, float]:
        return ((cx + s * x) * unit, (cy + s * y) * unit)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
        return [pt(min(x0, x1), y0), pt(max(x0, x1), y1)]

    def px(w: float) -> int:
        return max(1, round(w * s * unit))

    male, skin, hair = a["Male"], ink["skin"], ink["hair"]
    hw, hh = (15.0 if male else 12.8) + width, 17.0  # male: wider head
    has_hair = not a["Bald"]

    draw.ellipse(box(-25, 19, 25, 50), fill=ink["shirt"])
    if a["Wearing_Necktie"]:
        draw.polygon([pt(-5.5, 19.0), pt(5.5, 19.0), pt(0, 28)], fill=(240, 240, 240))
        draw.polygon([pt(-1.3, 22), pt(1.3, 22), pt(2.4, 31), pt(0, 34), pt(-2.4, 31)], fill=ink["tie"])
        draw.rectangle(box(-1.7, 19.5, 1.7, 22.5), fill=ink["tie"])
    if has_hair and not male:  # long hair falling behind the head onto the shoulders
        draw.rounded_rectangle(box(-hw - 3.5, -19, hw + 3.5, 25), radius=px(8), fill=hair)
    draw.rectangle(box(-5.5, 8, 5.5, 20), fill=ink["neck"])

    draw.ellipse(box(-hw, -hh, hw, hh), fill=skin)
    if male:  # square jaw
        draw.rounded_rectangle(box(-hw, -2, hw, hh), radius=px(5), fill=skin)

    ey, ex = -0.5, 5.3 * hw / 14.0
    for side in (-1, 1):
        x = side * ex
        if a["Heavy_Makeup"]:
            draw.ellipse(box(x - 3.4, ey - 2.5, x + 3.4, ey + 0.8), fill=ink["makeup"])
        if a["Narrow_Eyes"]:
            draw.ellipse(box(x - 2.7, ey - 0.55, x + 2.7, ey + 0.55), fill=(40, 30, 28))
        else:
            draw.ellipse(
                box(x - 2.7, ey - 1.6, x + 2.7, ey + 1.6),
                fill=_EYE_RGB,
                outline=(20, 15, 15) if a["Heavy_Makeup"] else None,
                width=px(0.6),
            )
            draw.ellipse(box(x - 1.3, ey - 1.3, x + 1.3, ey + 1.3), fill=ink["iris"])
        if a["Bushy_Eyebrows"]:
            draw.line([pt(x - 3.8, ey - 4.6), pt(x + 3.8, ey - 4.6)], fill=ink["brow"], width=px(2.8))
        else:
            draw.line([pt(x - 3.0, ey - 4.3), pt(x + 3.0, ey - 4.3)], fill=ink["thin_brow"], width=px(0.7))
        if a["Rosy_Cheeks"]:
            draw.ellipse(box(side * 8.3 - 2.6, 3.0, side * 8.3 + 2.6, 8.0), fill=ink["cheek"])

    draw.line([pt(0, 1.5), pt(0.9, 5.4), pt(-1.2, 5.9)], fill=ink["shade"], width=px(0.7))

    my = 10.5
    beard = ink["beard"]
    if a["Goatee"]:
        draw.chord(box(-6.0, my - 7.5, 6.0, my + 7.0), 0, 180, fill=beard)  # chin beard up to the mouth corners
    if a["Mouth_Slightly_Open"]:
        if a["Smiling"]:  # wide open grin with teeth
            draw.chord(box(-6.5, my - 5, 6.5, my + 4.5), 0, 180, fill=_MOUTH_RGB, outline=ink["lips"], width=px(1.1))
            draw.rectangle(box(-4.8, my - 0.1, 4.8, my + 1.2), fill=_TEETH_RGB)
        else:
            draw.ellipse(box(-3.0, my - 2.0, 3.0, my + 2.8), fill=_MOUTH_RGB, outline=ink["lips"], width=px(1.1))
    elif a["Smiling"]:  # upward curve
        draw.arc(box(-7, my - 7, 7, my + 2.5), 10, 170, fill=ink["lips"], width=px(1.8))
    else:
        draw.line([pt(-4.5, my), pt(4.5, my)], fill=ink["lips"], width=px(1.8))
    if a["Mustache"]:
        draw.polygon(
            [
                pt(-6.5, my - 2.4),
                pt(-1.2, my - 4.4),
                pt(1.2, my - 4.4),
                pt(6.5, my - 2.4),
                pt(5.5, my - 1.6),
                pt(-5.5, my - 1.6),
            ],
            fill=beard,
        )

    if has_hair:
        draw.chord(box(-hw - 1.5, -hh - 2.5, hw + 1.5, -hh + 12.5), 180, 360, fill=hair)  # cap down to hairline
        if male:  # short sides, visible under a hat
            for side in (-1, 1):
                draw.rectangle(box(side * (hw + 1.5), -12.5, side * (hw - 1.8), 0), fill=hair)
        if a["Bangs"]:  # fringe over the forehead down to the brows, with a ragged edge
            edge = [pt(f * hw, -5.0 if k % 2 else -6.2) for k, f in enumerate(_FRINGE)]
            draw.polygon([pt(-0.9 * hw, -13), *edge, pt(0.9 * hw, -13)], fill=hair)
    else:  # bald: skin dome with a shine
        draw.ellipse(box(-5, -15.5, 2, -12.5), fill=ink["shine"])
    if a["Wearing_Hat"]:
        draw.chord(box(-hw - 2.5, -hh - 10, hw + 2.5, -hh + 12), 180, 360, fill=ink["hat"])
        draw.rounded_rectangle(box(-hw - 5, -hh + 0.5, hw + 5, -hh + 3.5), radius=px(1.2), fill=ink["brim"])

    if a["Eyeglasses"]:
        frame, w = ink["frame"], px(1.0)
        for side in (-1, 1):
            x = side * ex
            draw.rounded_rectangle(box(x - 3.9, ey - 2.6, x + 3.9, ey + 2.6), radius=px(1.5), outline=frame, width=w)
            draw.line([pt(side * (ex + 3.9), ey - 1.2), pt(side * hw, ey - 1.8)], fill=frame, width=w)
        draw.line([pt(-ex + 3.9, ey - 0.8), pt(ex - 3.9, ey - 0.8)], fill=frame, width=w)


def render_faces(attributes: np.ndarray, rng: np.random.Generator, image_size: int = 64) -> np.ndarray:
    """Draw one face per attribute row, (n, S, S, 3) uint8 RGB; nuisance comes from `rng`, independently of them."""
    attributes = np.asarray(attributes)
    if attributes.ndim != 2 or attributes.shape[1] != len(CELEBA_ATTRIBUTES):
        raise ValueError(f"attributes must be (n, {len(CELEBA_ATTRIBUTES)}), got {attributes.shape}")
    n = len(attributes)
    on = {name: attributes[:, i] > 0 for i, name in enumerate(CELEBA_ATTRIBUTES)}

    # Every nuisance draw has a fixed shape and never depends on an attribute, so the nuisance of row i depends
    # only on the generator state and n.
    def pick(palette: np.ndarray, jitter: float) -> np.ndarray:
        return palette[rng.integers(len(palette), size=n)] + rng.uniform(-jitter, jitter, (n, 3))

    dx, dy = rng.uniform(-2.5, 2.5, (2, n))
    scale = rng.uniform(0.92, 1.06, n)
    width = rng.uniform(-0.6, 0.6, n)
    t = rng.random((n, 1))
    skin_normal = _SKIN_RANGE[0] + t * (_SKIN_RANGE[1] - _SKIN_RANGE[0])
    skin_pale = _PALE_RANGE[0] + t * (_PALE_RANGE[1] - _PALE_RANGE[0])
    background = rng.uniform(110, 235, (n, 1)) + rng.uniform(-22, 22, (n, 3))
    shirt = rng.uniform(30, 220, (n, 3))
    hair_shade = rng.uniform(0.88, 1.12, (n, 1)) * (1 + rng.uniform(-0.06, 0.06, (n, 3)))
    hat, tie = pick(_HAT_RGB, 15), pick(_TIE_RGB, 12)
    lipstick, makeup, iris = pick(_LIPSTICK_RGB, 12), pick(_MAKEUP_RGB, 12), pick(_IRIS_RGB, 10)
    frame = rng.uniform(15, 60, (n, 1)) + rng.uniform(0, 15, (n, 3))

    skin = np.where(on["Pale_Skin"][:, None], skin_pale, skin_normal)
    hair_category = np.select([on[name] for name in _HAIR_NAMES], range(len(_HAIR_NAMES)), len(_HAIR_NAMES))
    hair = _HAIR_RGB[hair_category] * hair_shade
    brow = 0.15 * hair + 0.85 * _BROW_RGB  # near black whatever the hair: they must show on dark skin too
    beard = np.where(on["Bald"][:, None], _BALD_BEARD_RGB, 0.6 * hair)
    # A beard as light as the skin would be invisible: darken such beards to a fixed contrast.
    skin_lum, beard_lum = skin @ _LUMA, beard @ _LUMA
    too_close = np.abs(beard_lum - skin_lum) < _BEARD_CONTRAST
    beard = np.where(too_close[:, None], beard * ((skin_lum - _BEARD_CONTRAST) / beard_lum)[:, None], beard)
    natural_lips = skin * np.array([0.62, 0.40, 0.42])
    lips = np.where(on["Wearing_Lipstick"][:, None], lipstick, natural_lips)

    colours = {
        "background": background,
        "skin": skin,
        "neck": 0.85 * skin,
        "shade": 0.72 * skin,
        "shine": 1.08 * skin + 12,
        "cheek": 0.55 * skin + 0.45 * _BLUSH_RGB,
        "hair": hair,
        "brow": brow,
        "thin_brow": 0.5 * (brow + skin),
        "beard": beard,
        "lips": lips,
        "shirt": shirt,
        "tie": tie,
        "hat": hat,
        "brim": 0.75 * hat,
        "makeup": makeup,
        "iris": iris,
        "frame": frame,
    }
    # Converted in bulk: per-face numpy calls inside the loop would cost more than the drawing itself.
    inks = {k: list(map(tuple, np.clip(np.rint(v), 0, 255).astype(np.uint8).tolist())) for k, v in colours.items()}
    geometry = np.stack([dx, dy, scale, width], axis=1).tolist()
    flags = (attributes[:, [CELEBA_ATTRIBUTES.index(name) for name in RENDERED_ATTRIBUTES]] > 0).tolist()

    canvas = image_size * _SUPERSAMPLE
    out = np.empty((n, image_size, image_size, 3), np.uint8)
    for i in range(n):
        ink = {k: v[i] for k, v in inks.items()}
        image = Image.new("RGB", (canvas, canvas), ink["background"])
        _draw_face(ImageDraw.Draw(image), dict(zip(RENDERED_ATTRIBUTES, flags[i])), geometry[i], ink, canvas / 64.0)
        face = np.asarray(image.reduce(_SUPERSAMPLE), np.int16)
        out[i] = np.clip(face + rng.integers(-3, 4, face.shape, dtype=np.int16), 0, 255)
    return out


def synthetic_dataset(
    n_train: int = 4000, n_val: int = 500, n_test: int = 500, seed: int = 0, image_size: int = 64
) -> FaceDataset:
    """A deterministic synthetic FaceDataset; each split has its own child generator, so sizes don't interact."""
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    params = {"version": RENDER_VERSION, "sizes": sizes, "seed": seed, "image_size": image_size}
    content_key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    splits: dict[str, FaceArrays] = {}
    for split, child in zip(SPLITS, np.random.SeedSequence(seed).spawn(len(SPLITS))):
        n = sizes[split]
        if n == 0:
            splits[split] = FaceArrays.empty(image_size, len(CELEBA_ATTRIBUTES))
            continue
        rng = np.random.default_rng(child)
        attributes = sample_attributes(n, rng)
        splits[split] = FaceArrays(render_faces(attributes, rng, image_size), attributes)
    return FaceDataset("synthetic", content_key, CELEBA_ATTRIBUTES, splits)
