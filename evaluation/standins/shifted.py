"""A shifted synthetic domain for fine-tuning tests: the same shapes in colours the tiny CLIP never saw.

The tiny CLIP is trained on :data:`evaluation.standins.synthetic.COLOURS` only; the words "cyan", "teal", "navy"
and "magenta" are in its vocabulary but were never trained, so before fine-tuning it ranks these pictures by
shape alone. Pictures are drawn like :func:`synthetic.render_image` (backdrop, shape, noise).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from evaluation.standins import synthetic

# Hues between and beyond the trained ones, kept away from the test moderation stand-ins (yellow, brown).
SHIFTED_COLOURS: dict[str, tuple[int, int, int]] = {
    "cyan": (20, 200, 215),
    "teal": (0, 115, 110),
    "navy": (20, 25, 105),
    "magenta": (215, 20, 215),
}


def render_shifted(
    colour: str, shape: str, rng: np.random.Generator, *, size: tuple[int, int] = (320, 240)
) -> tuple[Image.Image, str]:
    """One shape in a shifted colour on a synthetic backdrop; the RGB image and the backdrop's name."""
    width, height = size
    background = str(rng.choice(list(synthetic.BACKGROUNDS)))
    base = np.array(synthetic.BACKGROUNDS[background], dtype=np.float32) + rng.uniform(-15, 15)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (xs / width - 0.5) * math.cos(direction) + (ys / height - 0.5) * math.sin(direction)
    canvas = np.clip(base + ramp[..., None] * rng.uniform(10, 40), 0, 255).astype(np.uint8)
    image = Image.fromarray(canvas, "RGB")
    short = min(width, height)
    radius = short * rng.uniform(*synthetic.SIZE_RANGE)
    reach = max(0.0, min(synthetic.POSITION_JITTER * short, short / 2 - radius * 0.9))
    cx, cy = width / 2 + rng.uniform(-reach, reach), height / 2 + rng.uniform(-reach, reach)
    fill = tuple(int(np.clip(c + rng.integers(-18, 19), 0, 255)) for c in SHIFTED_COLOURS[colour])
    scale = 2
    layer = Image.new("L", (width * scale, height * scale), 0)
    draw = ImageDraw.Draw(layer)
    if shape == "circle":
        r = radius * scale
        draw.ellipse((cx * scale - r, cy * scale - r, cx * scale + r, cy * scale + r), fill=255)
    else:
        angle = math.radians(rng.uniform(-synthetic.MAX_ROTATION_DEGREES, synthetic.MAX_ROTATION_DEGREES))
        draw.polygon(synthetic._shape_polygon(shape, cx * scale, cy * scale, radius * scale, angle), fill=255)
    mask = layer.resize((width, height), Image.Resampling.LANCZOS)
    image.paste(Image.new("RGB", (width, height), fill), (0, 0), mask)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, rng.uniform(2.0, 10.0), size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"), background


def combinations() -> list[tuple[str, str]]:
    """Every (shifted colour, shape) pair, in a fixed order."""
    return [(colour, shape) for colour in SHIFTED_COLOURS for shape in synthetic.SHAPES]


def generate(
    n: int, seed: int, *, templates: synthetic.TemplateSet = "all", size: tuple[int, int] = (320, 240)
) -> list[synthetic.SyntheticImage]:
    """`n` captioned pictures of the shifted domain, every pair equally often, the same for the same seed."""
    pairs = combinations()
    pool = synthetic.templates_for(templates)
    items = []
    for i in range(n):
        order = np.random.default_rng([seed, 0x5EED, i // len(pairs)]).permutation(len(pairs))
        colour, shape = pairs[int(order[i % len(pairs)])]
        rng = np.random.default_rng([seed, i, 7])
        image, background = render_shifted(colour, shape, rng, size=size)
        template = pool[int(rng.integers(len(pool)))]
        caption = synthetic.make_caption(template, colour, shape, background)
        items.append(synthetic.SyntheticImage(image, colour, shape, caption, background))
    return items
