"""Synthetic camera-sized JPEGs for the indexing benchmarks, generated once into a cache folder.

Decode cost is what matters here, and it follows pixel count and entropy: a real 12 MP camera JPEG
at quality 90 holds about 2 bits per pixel, and most of its decode time is Huffman decoding, which
JPEG draft mode (DCT scaling) cannot skip. So each picture is a synthetic scene (a coloured shape
from evaluation.standins.synthetic) upscaled to the target size, plus coarse texture and sensor-like noise,
which lands at ~2 bpp like a photo. Sizes are drawn from common camera/phone sizes between
1024x768 and 4000x3000, a third of them portrait.

Beyond `distinct` pictures, further files are byte-level variants (a JPEG comment segment with the
index): the same decode work, different sha256, so the service does not treat them as duplicates.
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import ROOT

CACHE = ROOT / ".cache" / "bench-photos"
SIZES: tuple[tuple[int, int], ...] = ((1024, 768), (1600, 1200), (2048, 1536), (3000, 2000), (4000, 3000))
RECIPE_VERSION = 1


def render_photo(index: int, seed: int = 0) -> bytes:
    """One JPEG (quality 90) of a realistic size, deterministic from (index, seed)."""
    from evaluation.standins.synthetic import COLOURS, SHAPES, render_image

    rng = np.random.default_rng([seed, index])
    width, height = SIZES[int(rng.integers(len(SIZES)))]
    if rng.random() < 1 / 3:
        width, height = height, width
    colours, shapes = list(COLOURS), list(SHAPES)
    base, _ = render_image(
        colours[int(rng.integers(len(colours)))],
        shapes[int(rng.integers(len(shapes)))],
        rng,
        size=(max(16, width // 4), max(16, height // 4)),
    )
    pixels = np.asarray(base.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    coarse = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    pixels = pixels + (texture - 128) // 4 + rng.normal(0, 6, pixels.shape).astype(np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def variant(jpeg: bytes, number: int) -> bytes:
    """The same JPEG with a comment segment right after SOI: identical pixels, different bytes."""
    assert jpeg[:2] == b"\xff\xd8", "not a JPEG"
    text = f"withsense-bench variant {number}".encode()
    segment = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    return jpeg[:2] + segment + jpeg[2:]


def _write(args: tuple[int, int, Path]) -> tuple[str, int, int, int]:
    index, seed, folder = args
    data = render_photo(index, seed)
    path = folder / f"photo-{index:05d}.jpg"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    with Image.open(path) as image:
        return path.name, len(data), image.width, image.height


def ensure_photos(distinct: int, seed: int = 0, workers: int | None = None, cache: Path = CACHE) -> list[Path]:
    """`distinct` cached pictures (generated on first use, in parallel), as paths."""
    folder = cache / f"v{RECIPE_VERSION}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(distinct) if not (folder / f"photo-{i:05d}.jpg").is_file()]
    if missing:
        print(f"generating {len(missing)} synthetic photos into {folder} (once) ...", flush=True)
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            list(pool.map(_write, [(i, seed, folder) for i in missing], chunksize=4))
    return [folder / f"photo-{i:05d}.jpg" for i in range(distinct)]


def photo_set_stats(paths: list[Path]) -> dict[str, object]:
    """Megapixels and file sizes of a set of JPEGs (header reads only)."""
    pixels, sizes = [], []
    for path in paths:
        with Image.open(path) as image:
            pixels.append(image.width * image.height / 1e6)
        sizes.append(path.stat().st_size / 2**20)
    return {
        "files": len(paths),
        "mean_megapixels": round(float(np.mean(pixels)), 2),
        "max_megapixels": round(float(np.max(pixels)), 2),
        "mean_file_mb": round(float(np.mean(sizes)), 2),
        "bits_per_pixel": round(float(8 * np.sum(sizes) * 2**20 / (np.sum(pixels) * 1e6)), 2),
    }


if __name__ == "__main__":
    import sys

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    print(json.dumps(photo_set_stats(ensure_photos(count)), indent=2))
