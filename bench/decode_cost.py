"""CPU cost per photo of the worker's work around the model, step by step, on the benchmark photos.

    .venv/bin/python -m bench.decode_cost            # 100 photos
    .venv/bin/python -m bench.decode_cost --count 300

One thread, CPU time (process_time) per photo for each step the worker's decode pool runs
(workers/indexing.py `_decode`): JPEG decode in draft mode with EXIF orientation, the 224x224
derivative, its JPEG encode, the atomic write (fsync included: wall time shown too), and the model's
preprocessing of the derivative (the random-weights ViT-B/32's own processor, via
ClipEmbedder.prepare_image). The full decode without draft mode is shown for comparison.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from bench.common import emit, machine_info, print_table, random_vit_b32, warn_if_busy
from bench.photos import ensure_photos

T = TypeVar("T")
R = TypeVar("R")


def per_photo(step: Callable[[T], R], items: Sequence[T]) -> tuple[float, float, list[R]]:
    """CPU and wall milliseconds per item of ``step`` over ``items``, and what it returned for each."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = [step(item) for item in items]
    return (1000 * (time.process_time() - cpu) / len(items), 1000 * (time.perf_counter() - wall) / len(items), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from core.embedding import ClipEmbedder
    from core.images import encode_jpeg, load_rgb, make_derivative
    from core.storage import write_atomically

    torch.set_num_threads(1)
    info = machine_info()
    warn_if_busy()
    photos = ensure_photos(max(args.count, 1))[: args.count]
    embedder = ClipEmbedder(str(random_vit_b32()), device="cpu")
    embedder.load()
    steps: dict[str, tuple[float, float]] = {}

    cpu, wall, images = per_photo(lambda path: load_rgb(path, draft_size=224), photos)
    steps["decode (draft mode, EXIF orientation, RGB)"] = (cpu, wall)
    cpu, wall, derivatives = per_photo(make_derivative, images)
    steps["224x224 derivative (shorter side, centre crop)"] = (cpu, wall)
    cpu, wall, encoded = per_photo(encode_jpeg, derivatives)
    steps["derivative JPEG encode"] = (cpu, wall)
    with tempfile.TemporaryDirectory(prefix="wsd-") as folder:
        numbered = list(enumerate(encoded))
        cpu, wall, _ = per_photo(lambda pair: write_atomically(Path(folder) / f"{pair[0]}.jpg", pair[1]), numbered)
    steps["atomic write with fsync"] = (cpu, wall)
    cpu, wall, _ = per_photo(embedder.prepare_image, derivatives)
    steps["model preprocessing of the derivative"] = (cpu, wall)
    worker_total = sum(cpu for cpu, _ in steps.values())
    sample = photos[: min(20, len(photos))]
    cpu, wall, _ = per_photo(lambda path: Image.open(path).convert("RGB"), sample)
    steps["for comparison: full decode without draft mode"] = (cpu, wall)

    results = {
        "machine": info,
        "photos": len(photos),
        "cpu_ms_per_photo": {name: round(cpu, 2) for name, (cpu, _) in steps.items()},
        "wall_ms_per_photo": {name: round(wall, 2) for name, (_, wall) in steps.items()},
        "worker_decode_pool_cpu_ms_per_photo": round(worker_total, 1),
    }
    emit("decode_cost", results)
    print()
    print_table(
        ["step", "CPU ms/photo", "wall ms/photo"],
        [[name, round(cpu, 2), round(wall, 2)] for name, (cpu, wall) in steps.items()],
    )
    print(f"\ndecode pool total (the worker's per-photo CPU besides the model and SQL): {worker_total:.1f} ms")


if __name__ == "__main__":
    main()
