"""Synthetic captioned photos: coloured shapes on varied backgrounds, deterministic from a seed.

Used to train the tiny CLIP that stands in for ViT-B/32 in tests (no model hub here), and by
the search-ranking test, the moderation tests, the evaluation demo dataset and benchmarks.

Every image shows exactly one shape in one colour, so its caption is true by construction.
Captions come from two disjoint template sets: ``TRAIN_TEMPLATES`` (the only ones the tiny
model is ever trained on) and ``HELDOUT_TEMPLATES`` (for queries that measure whether the
model generalises beyond the wording it was trained with).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Saturated, well separated hues: the tiny test model sees pictures at 32x32.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 30),
    "orange": (250, 135, 10),
    "yellow": (245, 215, 20),
    "green": (35, 165, 55),
    "blue": (30, 75, 215),
    "purple": (125, 40, 165),
    "pink": (250, 120, 190),
    "brown": (115, 65, 25),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

# Neutral backgrounds, so a background is never mistaken for the shape's colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "black": (20, 20, 22),
    "white": (238, 238, 235),
    "beige": (222, 205, 170),
}

# Size, position and tilt vary, but moderately: a small ViT trained for a minute from scratch
# learns shapes that wander over the whole frame far too slowly (measured: colour-and-shape
# top-1 stayed below 0.5 after 800 steps with shapes anywhere, 0.9 or better with this much).
# Tilted at most this much from upright, a cross stays a "+" and a square never becomes a diamond.
MAX_ROTATION_DEGREES = 10.0

# A shape's circumradius as a fraction of the image's short side.
SIZE_RANGE = (0.30, 0.40)

# How far a shape's centre may sit from the image centre, as a fraction of the short side.
POSITION_JITTER = 0.05

# `{a}` is the article for the colour ("a red", "an orange"); `{background}` names the backdrop.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "{a} {colour} {shape}",
    "{colour} {shape}",
    "a photo of {a} {colour} {shape}",
    "an image of {a} {colour} {shape}",
    "{a} {colour} {shape} on a {background} background",
    "{colour} {shape} on {background}",
    "a drawing of {a} {colour} {shape}",
    "there is {a} {colour} {shape}",
    "{a} {shape} that is {colour}",
    "a {shape}, {colour}",
)

# Captions that name only the colour or only the shape ("a green shape", "a star"). They are true
# of several pictures at once, so generate() never deals them out as an image's caption; the tiny
# CLIP trains on them too, so that colour-only or shape-only prompts (moderation prompts, user
# queries like "stars") mean what they say.
COLOUR_ONLY_TEMPLATES: tuple[str, ...] = (
    "{a} {colour} shape",
    "something {colour}",
    "a photo of something {colour}",
    "{a} {colour} object",
)
SHAPE_ONLY_TEMPLATES: tuple[str, ...] = (
    "a {shape}",
    "a photo of a {shape}",
    "a {shape} shape",
    "a drawing of a {shape}",
)

HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a picture showing {a} {colour} {shape}",
    "a close-up photo of the {colour} {shape}",
    "the {colour} {shape} in this picture",
    "a single {colour} {shape} against a {background} backdrop",
)

TemplateSet = Literal["train", "heldout", "all"]


@dataclass
class SyntheticImage:
    """One rendered image and the truth about it."""

    image: Image.Image
    colour: str
    shape: str
    caption: str
    background: str = ""


def article(word: str) -> str:
    """The indefinite article English puts before ``word``."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def make_caption(template: str, colour: str, shape: str, background: str = "grey") -> str:
    """Fill a caption template for one colour, shape and background."""
    return template.format(a=article(colour), colour=colour, shape=shape, background=background)


def templates_for(which: TemplateSet) -> tuple[str, ...]:
    """The caption templates of one set: train, heldout or all."""
    if which == "train":
        return TRAIN_TEMPLATES
    if which == "heldout":
        return HELDOUT_TEMPLATES
    if which == "all":
        return TRAIN_TEMPLATES + HELDOUT_TEMPLATES
    raise ValueError(f"templates must be 'train', 'heldout' or 'all', not {which!r}")


def combinations() -> list[tuple[str, str]]:
    """Every (colour, shape) pair, in a fixed order."""
    return [(colour, shape) for colour in COLOURS for shape in SHAPES]


def _shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of circumradius ``radius`` centred at (cx, cy), rotated by ``angle``."""
    if shape == "square":
        points = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif shape == "triangle":
        points = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":
        points = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            points.append((r * math.cos(a), r * math.sin(a)))
    elif shape == "cross":
        w = 0.3  # half the arm width, relative to the arm length
        points = [
            (-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w),
            (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w),
        ]  # fmt: skip
    else:
        raise ValueError(f"unknown shape {shape!r}")
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    return [(cx + radius * (x * cos_a - y * sin_a), cy + radius * (x * sin_a + y * cos_a)) for x, y in points]


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)
    return (r, g, b)


def render_image(
    colour: str,
    shape: str,
    rng: np.random.Generator,
    *,
    size: tuple[int, int] = (320, 240),
    background: str | None = None,
) -> tuple[Image.Image, str]:
    """Draw one shape on a noisy, shaded background; returns the RGB image and the background name."""
    width, height = size
    if background is None:
        background = str(rng.choice(list(BACKGROUNDS)))
    # Shift brightness more than hue, so a "grey" backdrop still reads as grey.
    base = np.array(_jitter(BACKGROUNDS[background], rng, 4), dtype=np.float32) + rng.uniform(-15, 15)

    # A soft linear gradient in a random direction, as in a real studio backdrop.
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (xs / width - 0.5) * math.cos(direction) + (ys / height - 0.5) * math.sin(direction)
    canvas = base + ramp[..., None] * rng.uniform(10, 40)
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")

    # Large shapes (the tiny model looks at a 32x32 thumbnail) inside the centred square, so any
    # square crop (CLIP's centre crop, a 224x224 derivative) keeps them whole.
    short = min(width, height)
    radius = short * rng.uniform(*SIZE_RANGE)
    # The centre moves at most POSITION_JITTER * short from the image centre, and never so far
    # that more than a sliver of the shape leaves the centred square.
    reach = max(0.0, min(POSITION_JITTER * short, short / 2 - radius * 0.9))
    cx = width / 2 + rng.uniform(-reach, reach)
    cy = height / 2 + rng.uniform(-reach, reach)
    fill = _jitter(COLOURS[colour], rng, 18)

    # Draw at 2x and downsample, so edges are anti-aliased like a photograph's.
    scale = 2
    layer = Image.new("L", (width * scale, height * scale), 0)
    draw = ImageDraw.Draw(layer)
    if shape == "circle":
        r = radius * scale
        draw.ellipse((cx * scale - r, cy * scale - r, cx * scale + r, cy * scale + r), fill=255)
    else:
        angle = math.radians(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))
        draw.polygon(_shape_polygon(shape, cx * scale, cy * scale, radius * scale, angle), fill=255)
    mask = layer.resize((width, height), Image.Resampling.LANCZOS)
    img.paste(Image.new("RGB", (width, height), fill), (0, 0), mask)

    # Sensor noise and a slight blur: no two renders are pixel-identical.
    pixels = np.asarray(img, dtype=np.float32)
    pixels += rng.normal(0.0, rng.uniform(2.0, 10.0), size=pixels.shape).astype(np.float32)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2))))
    return img, background


def generate(
    n: int,
    seed: int,
    *,
    templates: TemplateSet = "all",
    size: tuple[int, int] = (320, 240),
) -> list[SyntheticImage]:
    """Render ``n`` captioned images, the same ones for the same seed.

    Colour/shape pairs are dealt from a seeded shuffle of all ``len(COLOURS) * len(SHAPES)``
    pairs, so any ``n`` that is a multiple of that number holds every pair equally often (and
    ``n == 40`` gives a gallery of one image per pair). Image ``i`` depends only on
    ``(seed, i)``: ``generate(10, s)`` is a prefix of ``generate(20, s)``.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    width, height = size
    if width < 16 or height < 16:
        raise ValueError("size must be at least 16x16")
    pool = templates_for(templates)
    pairs = combinations()
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(pairs))

    items: list[SyntheticImage] = []
    for i in range(n):
        # A new shuffle for each round through the pairs, still fixed by the seed.
        if i and i % len(pairs) == 0:
            order = np.random.default_rng([seed, 0x5EED, i // len(pairs)]).permutation(len(pairs))
        colour, shape = pairs[int(order[i % len(pairs)])]
        rng = np.random.default_rng([seed, i])
        image, background = render_image(colour, shape, rng, size=size)
        template = pool[int(rng.integers(len(pool)))]
        items.append(
            SyntheticImage(
                image=image,
                colour=colour,
                shape=shape,
                caption=make_caption(template, colour, shape, background),
                background=background,
            )
        )
    return items
