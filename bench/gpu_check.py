"""GPU check: CLIP ViT-B/32 image embedding throughput at fp16 on cuda, with parallel JPEG decode.

    python3 bench/gpu_check.py --out /path/gpu_check.json     # about 2-4 minutes on one H200

Self-contained: needs only torch (with CUDA), transformers, numpy and Pillow (bench/gpu_requirements.txt),
no database, queue or model download. The model is the real ViT-B/32 architecture (transformers
CLIPConfig() defaults) with random weights: speed does not depend on weight values. When the
project tree is importable, decoding uses the worker's own core.images.load_rgb (JPEG draft mode)
and make_derivative; otherwise an equivalent local copy.

Measures, each at several batch sizes:
- bare: the fp16 forward pass (get_image_features) on pixel tensors already on the GPU;
- decode only: a thread pool turning camera-sized JPEGs into 224x224 derivatives (no GPU);
- pipeline "processor": threads decode + run CLIP's own image processor (what sentence-transformers
  does in production), the main thread ships each batch to the GPU while the next one decodes;
- pipeline "gpu-normalise": threads decode to uint8 224x224 only; scaling and normalisation run on
  the GPU in fp16 (the cheaper split when CPU cores, not the GPU, are the limit);
- fp16 vs fp32 parity of the embeddings (cosine per image).
Prints one JSON document and a table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = ((1024, 768), (1600, 1200), (2048, 1536), (3000, 2000), (4000, 3000))
# OpenAI CLIP's normalisation, the CLIPImageProcessor defaults (used only for the GPU-side variant).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def render_jpeg(index: int) -> bytes:
    """A camera-sized JPEG (quality 90, ~2 bits/pixel like a photo): shapes, texture and sensor noise."""
    rng = np.random.default_rng([7, index])
    width, height = SIZES[int(rng.integers(len(SIZES)))]
    if rng.random() < 1 / 3:
        width, height = height, width
    small = Image.new("RGB", (width // 4, height // 4), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(small)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width // 4)), int(rng.integers(0, height // 4))
        x1, y1 = x0 + int(rng.integers(10, width // 6)), y0 + int(rng.integers(10, height // 6))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    pixels = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    coarse = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    pixels = pixels + (texture - 128) // 4 + rng.normal(0, 6, pixels.shape).astype(np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def decoder() -> tuple[Callable[[bytes], Image.Image], str]:
    """bytes -> 224x224 RGB derivative: the worker's code when importable, else the same steps here."""
    try:
        from core.images import load_rgb, make_derivative

        return (lambda data: make_derivative(load_rgb(data, draft_size=224), 224)), "core.images"
    except ImportError:  # the project tree (or one of its imports) is not there: a local copy of the steps

        def local(data: bytes) -> Image.Image:
            image = Image.open(io.BytesIO(data), formats=["JPEG"])
            scale = 224 / min(image.size)
            image.draft("RGB", (max(1, int(image.width * scale)), max(1, int(image.height * scale))))
            upright = ImageOps.exif_transpose(image.convert("RGB"))
            return ImageOps.fit(upright, (224, 224), method=Image.Resampling.BICUBIC)

        return local, "local copy"


def batches(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def timed(function: Callable[[], int], sync: Callable[[], None]) -> float:
    """Images per second of one call of `function` (which returns how many images it handled)."""
    sync()
    started = time.perf_counter()
    count = function()
    sync()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024, help="distinct JPEGs to generate and embed")
    parser.add_argument("--bare-batch-sizes", default="32,64,128,256,512,1024")
    parser.add_argument("--batch-sizes", default="64,128,256", help="batch sizes for the decode + embed pipeline")
    parser.add_argument("--threads", default="", help="decode thread counts (default: cores/2 and cores)")
    parser.add_argument("--bare-seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--device", default="cuda", help="cuda; `cpu` only smoke-tests this script (fp32, slow)")
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a GPU machine (--device cpu only smoke-tests it)")
    started_all = time.perf_counter()
    device = torch.device(args.device)
    dtype = torch.float16 if on_gpu else torch.float32
    cores = os.cpu_count() or 1
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({max(1, cores // 2), cores})
    report: dict[str, object] = {
        "gpu": torch.cuda.get_device_name(0) if on_gpu else "none (cpu smoke test)",
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_cores": cores,
        "images": args.images,
    }

    print(f"generating {args.images} JPEGs on {cores} processes ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=cores) as processes:
        jpegs = list(processes.map(render_jpeg, range(args.images), chunksize=8))
    megapixels = []
    for data in jpegs:
        with Image.open(io.BytesIO(data)) as image:
            megapixels.append(image.width * image.height / 1e6)
    report["jpegs"] = {
        "generate_s": round(time.perf_counter() - t0, 1),
        "mean_megapixels": round(float(np.mean(megapixels)), 2),
        "mean_mb": round(float(np.mean([len(d) for d in jpegs])) / 2**20, 2),
    }

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).eval().to(device, dtype)  # what ClipEmbedder does on cuda: model.half()
    processor = CLIPImageProcessor()
    decode, decode_source = decoder()
    report["decode_with"] = decode_source
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)

    def embed(pixels: torch.Tensor) -> torch.Tensor:
        features = model.get_image_features(pixel_values=pixels)
        return getattr(features, "pooler_output", features)  # transformers 5 returns a ModelOutput

    # Bare forward pass.
    bare: dict[str, float] = {}
    with torch.inference_mode():
        for size in [int(b) for b in args.bare_batch_sizes.split(",")]:
            pixels = torch.randn(size, 3, 224, 224, device=device, dtype=dtype)
            for _ in range(3):
                embed(pixels)

            def run_bare(pixels: torch.Tensor = pixels, size: int = size) -> int:
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < args.bare_seconds:
                    embed(pixels)
                    done += size
                    if done % (size * 8) == 0:
                        sync()
                return done

            bare[str(size)] = round(timed(run_bare, sync), 1)
            print(f"bare batch {size}: {bare[str(size)]} img/s", file=sys.stderr, flush=True)
    report["bare_images_per_s"] = bare
    best_bare = max(bare.values())

    # fp16 vs fp32 on the same pixels.
    sample = [decode(data) for data in jpegs[:32]]
    pixels32 = torch.from_numpy(np.asarray(processor(images=sample, return_tensors="np")["pixel_values"])).to(device)
    with torch.inference_mode():
        half = torch.nn.functional.normalize(embed(pixels32.to(dtype)).float(), dim=1)
        model.float()
        full = torch.nn.functional.normalize(embed(pixels32).float(), dim=1)
        model.to(dtype)
    report["fp16_vs_fp32_min_cosine"] = round(float((half * full).sum(1).min()), 5)

    mean = torch.tensor(CLIP_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device, dtype=dtype).view(1, 3, 1, 1)

    def prepare_processor(data: bytes) -> np.ndarray:
        return np.asarray(
            processor(images=[decode(data)], return_tensors="np")["pixel_values"][0],
            dtype=np.float16 if on_gpu else np.float32,
        )

    def prepare_uint8(data: bytes) -> np.ndarray:
        return np.asarray(decode(data), dtype=np.uint8)

    decode_only: dict[str, float] = {}
    pipelines: dict[str, dict[str, float]] = {"processor": {}, "gpu-normalise": {}}
    for threads in thread_counts:
        with ThreadPoolExecutor(max_workers=threads) as pool:

            def decode_all(pool: ThreadPoolExecutor = pool) -> int:
                return len(list(pool.map(prepare_uint8, jpegs)))

            decode_only[str(threads)] = round(timed(decode_all, lambda: None), 1)
            print(f"decode only, {threads} threads: {decode_only[str(threads)]} img/s", file=sys.stderr, flush=True)
            for size in [int(b) for b in args.batch_sizes.split(",")]:
                for variant, prepare in (("processor", prepare_processor), ("gpu-normalise", prepare_uint8)):

                    def run_pipeline(
                        pool: ThreadPoolExecutor = pool,
                        size: int = size,
                        prepare: Callable[[bytes], np.ndarray] = prepare,
                        variant: str = variant,
                    ) -> int:
                        # pool.map keeps decoding ahead while the GPU runs the previous batch (CUDA is async).
                        results = pool.map(prepare, jpegs)
                        done = 0
                        with torch.inference_mode():
                            while done < len(jpegs):
                                count = min(size, len(jpegs) - done)
                                host = torch.from_numpy(np.stack([next(results) for _ in range(count)]))
                                batch = host.pin_memory().to(device, non_blocking=True) if on_gpu else host
                                if variant == "gpu-normalise":
                                    batch = (batch.permute(0, 3, 1, 2).to(dtype) / 255.0 - mean) / std
                                embed(batch)
                                done += count
                        return done

                    rate = round(timed(run_pipeline, sync), 1)
                    pipelines[variant][f"threads{threads}_batch{size}"] = rate
                    print(
                        f"pipeline {variant}, {threads} threads, batch {size}: {rate} img/s",
                        file=sys.stderr,
                        flush=True,
                    )
    report["decode_only_images_per_s"] = decode_only
    report["pipeline_images_per_s"] = pipelines
    best_pipeline = max(rate for variant in pipelines.values() for rate in variant.values())
    report["summary"] = {
        "best_bare_images_per_s": best_bare,
        "best_pipeline_images_per_s": best_pipeline,
        "pipeline_to_bare_ratio": round(best_pipeline / best_bare, 3),
        "best_decode_only_images_per_s": max(decode_only.values()),
        "limited_by": "decode (CPU)" if max(decode_only.values()) < best_bare else "the GPU forward pass",
        "total_s": round(time.perf_counter() - started_all, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    print("\n| what | images/s |\n|---|---|")
    for batch_label, rate in bare.items():
        print(f"| bare fp16 forward, batch {batch_label} | {rate} |")
    for threads_label, rate in decode_only.items():
        print(f"| decode only, {threads_label} threads | {rate} |")
    for variant, rates in pipelines.items():
        for key, rate in rates.items():
            print(f"| pipeline {variant}, {key} | {rate} |")


if __name__ == "__main__":
    main()
