"""Procedural image–caption pairs: coloured shapes on varied backgrounds, deterministic by seed.

The zero-shot test is compositional: a fixed set of (colour, shape) pairs (``HELDOUT_PAIRS``) never appears
in the training split — neither drawn nor named in a caption — and evaluation asks the model to recognise
exactly those pairs. Captions therefore vary a lot and sometimes name only the colour or only the shape, so
that both towers learn colour and shape as separate factors rather than memorising pairs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Saturated object colours; backgrounds are always low-saturation, so a colour word names an object.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "cyan": (30, 210, 220),
    "blue": (35, 70, 225),
    "purple": (135, 45, 190),
    "pink": (250, 120, 190),
}
# Auxiliary colours: drawn with every shape (and named in captions) but never part of the zero-shot labels.
# They make shape detectors colour-invariant: each shape is seen in 4 colours beyond the 8 it is tested on.
AUX_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "brown": (125, 75, 35),
    "grey": (128, 128, 128),
}
ALL_COLOURS = {**COLOURS, **AUX_COLOURS}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "heart", "crescent")

# 12 of 64 pairs (18.75%), a Latin-square-like pick: every colour and every shape is held out at most twice,
# so each still appears in training with at least six partners.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    [(c, SHAPES[(i + 1) % len(SHAPES)]) for i, c in enumerate(COLOURS)]
    + [(c, SHAPES[(i + 4) % len(SHAPES)]) for i, c in enumerate(list(COLOURS)[:4])]
)

Split = Literal["train", "heldout", "seen"]

POSITIONS = {  # name -> centre as a fraction of the image side
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "center": (0.5, 0.5),
}
POSITION_PHRASES = {
    "left": ["on the left", "at the left", "in the left half"],
    "right": ["on the right", "at the right", "in the right half"],
    "top": ["near the top", "at the top", "in the upper part"],
    "bottom": ["near the bottom", "at the bottom", "in the lower part"],
    "center": ["in the middle", "in the center", "at the centre"],
}
SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}

# Phrasings of one object. {obj} is "[size ]colour shape"; the partial ones name a single factor.
FULL_TEMPLATES = [
    "a {obj}", "a {obj} {pos}", "there is a {obj} {pos}", "a picture of a {obj}", "a photo of a {obj}.",
    "an image showing a {obj}", "a drawing of a {obj}", "{obj}", "a {obj} on a plain background",
    "this is a {obj}", "one {obj} {pos}", "a rendering of a {obj}.",
]
SHAPE_FIRST_TEMPLATES = ["a {shape} coloured {colour}", "a {shape} that is {colour}", "a {colour}-coloured {shape}",
                         "the shape is a {shape} and it is {colour}"]
COLOUR_ONLY_TEMPLATES = ["a {colour} object", "something {colour}", "a {colour} shape {pos}", "a {size} {colour} thing"]
SHAPE_ONLY_TEMPLATES = ["a {shape}", "a {size} {shape} {pos}", "a shape: {shape}", "a drawing of a {shape}"]
PAIR_TEMPLATES = [
    "a {a} and a {b}", "a {a} {pa} and a {b} {pb}", "two shapes: a {a} and a {b}", "a {b} next to a {a}",
    "there is a {a} {pa} and a {b} {pb}",
]


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object: what it is and where."""

    colour: str
    shape: str
    size: str  # "small" | "large"
    position: str  # key of POSITIONS


@dataclass(frozen=True)
class Sample:
    image: Image.Image  # RGB, image_size x image_size
    caption: str
    objects: tuple[ShapeObject, ...]


def all_pairs() -> list[tuple[str, str]]:
    """Every (colour, shape) pair, in a fixed order."""
    return [(c, s) for c in COLOURS for s in SHAPES]


def pairs_for(split: Split) -> list[tuple[str, str]]:
    """The pairs a split may draw: train and seen use the non-held-out pairs, heldout only the held-out ones."""
    if split == "heldout":
        return [p for p in all_pairs() if p in HELDOUT_PAIRS]
    return [p for p in all_pairs() if p not in HELDOUT_PAIRS]


def aux_pairs() -> list[tuple[str, str]]:
    """Auxiliary-colour pairs (training only)."""
    return [(c, s) for c in AUX_COLOURS for s in SHAPES]


def luminance(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def class_label(colour: str, shape: str) -> str:
    """The zero-shot class name of a pair, e.g. 'red circle'."""
    return f"{colour} {shape}"


# ----------------------------------------------------------------------------------------------------------
# Drawing


def _polygon(cx: float, cy: float, r: float, n: int, rot: float, inner: float | None = None) -> list[tuple]:
    pts = []
    steps = n * 2 if inner else n
    for k in range(steps):
        ang = rot + 2 * math.pi * k / steps - math.pi / 2
        rad = r * (inner if inner and k % 2 else 1.0)
        pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    return pts


def _draw_mask(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float) -> None:
    """Draw `shape` (radius r, centre cx,cy, rotation rot radians) in white on an L-mode mask."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r * 1.05, 4, rot + math.pi / 4), fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.65, cy), (cx, cy + r), (cx - r * 0.65, cy)], fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, r * 1.1, 3, rot), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r * 1.1, 5, rot, inner=0.42), fill=255)
    elif shape == "cross":
        w = r * 0.36
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
    elif shape == "heart":
        q = r * 0.52
        draw.ellipse([cx - 2 * q, cy - r * 0.8, cx, cy - r * 0.8 + 2 * q], fill=255)
        draw.ellipse([cx, cy - r * 0.8, cx + 2 * q, cy - r * 0.8 + 2 * q], fill=255)
        draw.polygon([(cx - 1.95 * q, cy - r * 0.8 + q * 1.25), (cx + 1.95 * q, cy - r * 0.8 + q * 1.25),
                      (cx, cy + r)], fill=255)
    elif shape == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        off = r * 0.55
        dx, dy = off * math.cos(rot * 4), off * math.sin(rot * 4)
        draw.ellipse([cx - r + dx, cy - r + dy - r * 0.1, cx + r + dx, cy + r + dy - r * 0.1], fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _tone(rng: random.Random, avoid: list[float], margin: float = 60.0) -> int:
    """A grey level at least `margin` away from every object luminance in `avoid` (when one exists)."""
    for _ in range(32):
        tone = rng.randint(20, 235)
        if all(abs(tone - a) >= margin for a in avoid):
            return tone
    return tone


def _background(rng: random.Random, size: int, avoid: list[float] | None = None) -> Image.Image:
    """A desaturated background: flat, gradient, noise or checker, light or dark, contrasting the objects."""
    avoid = avoid or []
    kind = rng.choice(["flat", "gradient", "noise", "checker"])
    base = _tone(rng, avoid)
    tint = [base + rng.randint(-12, 12) for _ in range(3)]
    if kind == "flat":
        return Image.new("RGB", (size, size), tuple(max(0, min(255, t)) for t in tint))
    if kind == "gradient":
        other = _tone(rng, avoid)
        ramp = np.linspace(base, other, size, dtype=np.float32)
        vertical = rng.random() < 0.5
        arr = np.broadcast_to(ramp[:, None] if vertical else ramp[None, :], (size, size))
        return Image.fromarray(np.stack([arr] * 3, axis=-1).clip(0, 255).astype(np.uint8))
    if kind == "noise":
        nprng = np.random.default_rng(rng.getrandbits(32))
        noise = nprng.normal(base, 25, (size // 4, size // 4)).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(noise).resize((size, size), Image.BILINEAR)
        return img.convert("RGB")
    cell = rng.choice([4, 8, 16])
    other = max(0, min(255, base + rng.choice([-30, 30])))
    yy, xx = np.mgrid[0:size, 0:size]
    arr = np.where(((yy // cell) + (xx // cell)) % 2 == 0, base, other).astype(np.uint8)
    return Image.fromarray(np.stack([arr] * 3, axis=-1))


def render(objects: tuple[ShapeObject, ...], rng: random.Random, image_size: int = 64) -> Image.Image:
    """Render objects on a random background. Drawn at 4x and downsampled for smooth edges."""
    scale = 4
    big = image_size * scale
    avoid = [luminance(ALL_COLOURS[o.colour]) for o in objects]
    canvas = _background(rng, image_size, avoid).resize((big, big), Image.NEAREST)
    for obj in objects:
        frac = rng.uniform(0.13, 0.17) if obj.size == "small" else rng.uniform(0.23, 0.3)
        r = frac * big
        px, py = POSITIONS[obj.position]
        cx = (px + rng.uniform(-0.06, 0.06)) * big
        cy = (py + rng.uniform(-0.06, 0.06)) * big
        mask = Image.new("L", (big, big), 0)
        _draw_mask(ImageDraw.Draw(mask), obj.shape, cx, cy, r, rng.uniform(-0.25, 0.25))
        jitter = [max(0, min(255, v + rng.randint(-18, 18))) for v in ALL_COLOURS[obj.colour]]
        canvas.paste(tuple(jitter), mask=mask)
    img = canvas.resize((image_size, image_size), Image.LANCZOS)
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    return img


# ----------------------------------------------------------------------------------------------------------
# Captions


def _object_phrase(rng: random.Random, o: ShapeObject, with_size: bool) -> str:
    size = rng.choice(SIZE_WORDS[o.size]) + " " if with_size else ""
    return f"{size}{o.colour} {o.shape}"


def caption_one(rng: random.Random, o: ShapeObject, partial_prob: float) -> str:
    """A caption for a single-object image; with probability partial_prob it names one factor only."""
    pos = rng.choice(POSITION_PHRASES[o.position])
    size = rng.choice(SIZE_WORDS[o.size])
    roll = rng.random()
    if roll < partial_prob / 3:  # colour is easy to learn; shape-only captions get the larger share
        return rng.choice(COLOUR_ONLY_TEMPLATES).format(colour=o.colour, pos=pos, size=size)
    if roll < partial_prob:
        return rng.choice(SHAPE_ONLY_TEMPLATES).format(shape=o.shape, pos=pos, size=size)
    if rng.random() < 0.2:
        return rng.choice(SHAPE_FIRST_TEMPLATES).format(shape=o.shape, colour=o.colour)
    obj = _object_phrase(rng, o, with_size=rng.random() < 0.5)
    return rng.choice(FULL_TEMPLATES).format(obj=obj, pos=pos)


def caption_two(rng: random.Random, a: ShapeObject, b: ShapeObject) -> str:
    pa, pb = rng.choice(POSITION_PHRASES[a.position]), rng.choice(POSITION_PHRASES[b.position])
    return rng.choice(PAIR_TEMPLATES).format(
        a=_object_phrase(rng, a, rng.random() < 0.3), b=_object_phrase(rng, b, rng.random() < 0.3), pa=pa, pb=pb)


# ----------------------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class ShapesConfig:
    """How samples are drawn."""

    image_size: int = 64  # pixels per side
    two_object_prob: float = 0.25  # share of training images holding two objects
    partial_caption_prob: float = 0.3  # share of single-object captions naming only colour or only shape
    aux_colour_prob: float = 0.3  # share of training objects drawn in an auxiliary colour


def sample(rng: random.Random, split: Split, cfg: ShapesConfig = ShapesConfig()) -> Sample:
    """Draw one sample of `split`. Evaluation splits hold exactly one object and have no caption."""
    pairs = pairs_for(split)

    def draw_pair() -> tuple[str, str]:
        if split == "train" and rng.random() < cfg.aux_colour_prob:
            return rng.choice(aux_pairs())
        return rng.choice(pairs)

    if split == "train" and rng.random() < cfg.two_object_prob:
        pos_a, pos_b = rng.choice([("left", "right"), ("top", "bottom")])
        (ca, sa), (cb, sb) = draw_pair(), draw_pair()
        objs = (ShapeObject(ca, sa, "small", pos_a), ShapeObject(cb, sb, "small", pos_b))
        return Sample(render(objs, rng, cfg.image_size), caption_two(rng, *objs), objs)
    colour, shape = draw_pair()
    obj = ShapeObject(colour, shape, rng.choice(["small", "large"]), rng.choice(list(POSITIONS)))
    img = render((obj,), rng, cfg.image_size)
    caption = caption_one(rng, obj, cfg.partial_caption_prob) if split == "train" else class_label(colour, shape)
    return Sample(img, caption, (obj,))


def generate(seed: int, n: int, split: Split, cfg: ShapesConfig = ShapesConfig()) -> Iterator[Sample]:
    """n samples of a split, the same for the same (seed, split, cfg)."""
    rng = random.Random(f"{seed}-{split}")
    for _ in range(n):
        yield sample(rng, split, cfg)
