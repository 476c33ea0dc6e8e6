"""CPU image encoder: ONNX Runtime fp32 / int8 against torch fp32, same images, same run, for each model family.

    .venv/bin/python -m bench.cpu_encoder                       # ViT-B/32 (random weights) + the tiny trained CLIP
    .venv/bin/python -m bench.cpu_encoder --batch-sizes 16,32 --rounds 3
    .venv/bin/python -m bench.cpu_encoder --families clip,siglip,open_clip --skip-tiny --batch-sizes 8 --rounds 2

``--families`` picks one real architecture per family with random weights (clip: ViT-B/32 through
sentence-transformers; siglip: SigLIP B/16 at 224 through transformers; open_clip: open_clip's ViT-B-32), run
one after the other and printed side by side at the end.

For each model, the same preprocessed images (the model's own processor, 224x224 for ViT-B/32) go
through every encoder at every batch size. Runs are interleaved round by round (torch, ort-fp32,
ort-int8, torch, ...) so that load from other processes hits every encoder alike; each figure is
the median over rounds. Speed-up = torch fp32 time / encoder time at the same batch size, and best
batch size against best batch size. Parity: per-image cosine between the torch fp32 embedding and
the encoder's. For random weights the embeddings of different images share a large common component,
so the cosine after subtracting the torch mean embedding is shown too (a stricter test); for the
trained tiny model, the share of images whose nearest neighbour stays the same.
The tiny model is skipped when it has not been built (the tests build it: .cache/test-models).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import ROOT, emit, machine_info, print_table, random_model, tiny_trained_clip, warn_if_busy

ONNX_CACHE = ROOT / ".cache" / "onnx"


def run_model(
    name: str, model_dir: Path, batch_sizes: list[int], rounds: int, threads: int, images_count: int
) -> dict[str, object]:
    import torch

    from core.clip_parts import pixel_values
    from core.embedding import ClipEmbedder
    from core.onnx_encoder import OnnxExportError, OnnxImageEncoder, torch_embed_pixel_values
    from evaluation.standins.synthetic import generate

    torch.set_num_threads(threads)
    embedder = ClipEmbedder(str(model_dir), device="cpu")
    model = embedder.vision_export()  # the family's image tower and its torch reference
    started = time.perf_counter()
    encoders = {}
    refused: dict[str, str] = {}
    for label, quantize in (("ort-fp32", False), ("ort-int8", True)):
        try:
            encoders[label] = OnnxImageEncoder.from_embedder(embedder, ONNX_CACHE, quantize=quantize, threads=threads)
        except OnnxExportError as exc:  # the parity check refused it: recorded, and the other encoders still run
            refused[label] = str(exc)
            print(f"  {name}: {label} refused: {exc}", file=sys.stderr, flush=True)
    export_s = time.perf_counter() - started
    images = [sample.image for sample in generate(images_count, seed=2024)]
    pixels = pixel_values(model.image_processor, images)  # what the encoders' own pixel_values() give

    reference = torch_embed_pixel_values(model, pixels)
    centre = reference.mean(axis=0)
    parity: dict[str, dict[str, float]] = {}
    for label, encoder in encoders.items():
        encoder.batch_size = 32
        candidate = encoder.embed_pixel_values(pixels)
        cosine = np.sum(reference * candidate, axis=1)
        centred_ref, centred_cand = reference - centre, candidate - centre
        centred = np.sum(centred_ref * centred_cand, axis=1) / (
            np.linalg.norm(centred_ref, axis=1) * np.linalg.norm(centred_cand, axis=1)
        )
        ref_scores, cand_scores = reference @ reference.T, candidate @ reference.T
        np.fill_diagonal(ref_scores, -np.inf)
        np.fill_diagonal(cand_scores, -np.inf)
        parity[label] = {
            "min_cosine": round(float(cosine.min()), 5),
            "mean_cosine": round(float(cosine.mean()), 5),
            "min_centred_cosine": round(float(centred.min()), 4),
            "nearest_neighbour_agreement": round(float(np.mean(ref_scores.argmax(1) == cand_scores.argmax(1))), 3),
        }

    def torch_forward(batch: np.ndarray) -> np.ndarray:
        return torch_embed_pixel_values(model, batch)

    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {"torch-fp32": torch_forward}
    for label, encoder in encoders.items():
        runners[label] = encoder.embed_pixel_values

    seconds: dict[str, dict[int, list[float]]] = {label: {b: [] for b in batch_sizes} for label in runners}
    for size in batch_sizes:
        batch = np.ascontiguousarray(np.resize(pixels, (size, *pixels.shape[1:])))
        for encoder in encoders.values():
            encoder.batch_size = size
        for runner in runners.values():  # warm-up: allocations, kernel selection
            runner(batch)
        for _ in range(rounds):
            for label, runner in runners.items():
                started = time.perf_counter()
                runner(batch)
                seconds[label][size].append(time.perf_counter() - started)
        print(
            f"  {name} batch {size}: "
            + ", ".join(f"{label} {size / statistics.median(seconds[label][size]):.1f} img/s" for label in runners),
            file=sys.stderr,
            flush=True,
        )

    throughput = {
        label: {str(b): round(b / statistics.median(v), 2) for b, v in per.items()} for label, per in seconds.items()
    }
    speedup = {
        label: {
            str(b): round(statistics.median(seconds["torch-fp32"][b]) / statistics.median(v), 2) for b, v in per.items()
        }
        for label, per in seconds.items()
        if label != "torch-fp32"
    }
    best = {label: max(per.values()) for label, per in throughput.items()}
    best_batch = {label: int(max(per, key=lambda b: per[b])) for label, per in throughput.items()}
    return {
        "model": name,
        "family": embedder.family,
        "dimension": embedder.dimension,
        "path": str(model_dir),
        "image_size": int(pixels.shape[-1]),
        "threads": threads,
        "rounds": rounds,
        "export_and_check_s": round(export_s, 1),
        "refused": refused,
        "parity": parity,
        "images_per_s": throughput,
        "speedup_same_batch": speedup,
        "best_images_per_s": best,
        "best_batch_size": best_batch,
        "speedup_best_vs_best": {
            label: round(best[label] / best["torch-fp32"], 2) for label in best if label != "torch-fp32"
        },
        "fused_operators": _fused(encoders["ort-fp32"].model_path.parent) if "ort-fp32" in encoders else {},
    }


def _fused(folder: Path) -> dict[str, int]:
    import json

    meta = folder / "export.json"
    return json.loads(meta.read_text()).get("fused_operators", {}) if meta.is_file() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,8,16,32,64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=64, help="distinct images for the parity check")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument(
        "--families", default="clip", help="comma-separated: clip, siglip, open_clip (random weights, real sizes)"
    )
    args = parser.parse_args()
    import os

    threads = args.threads or os.cpu_count() or 1
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    info = machine_info()
    warn_if_busy()
    results: dict[str, object] = {"machine": info}
    labels = {"clip": "vit-b32-random", "siglip": "siglip-b16-random", "open_clip": "open-clip-vit-b32-random"}
    models = [(labels[family], random_model(family)) for family in args.families.split(",")]
    tiny = None if args.skip_tiny else tiny_trained_clip()
    if tiny is not None:
        models.append(("tiny-trained", tiny))
    else:
        results["tiny-trained"] = "skipped: not built (run the tests once, or WITHSENSE_BENCH_BUILD_TINY=1)"
    for name, path in models:
        print(f"{name} ...", file=sys.stderr, flush=True)
        results[name] = run_model(name, path, batch_sizes, args.rounds, threads, args.images)
    emit("cpu_encoder", results)
    for name, _ in models:
        figures = results[name]
        assert isinstance(figures, dict)
        print(
            f"\n{name} ({figures['image_size']}x{figures['image_size']}, {threads} threads, median of "
            f"{args.rounds} interleaved rounds)"
        )
        rows = []
        for label, per in figures["images_per_s"].items():
            parity = figures["parity"].get(label, {})
            rows.append(
                [
                    label,
                    *[per[str(b)] for b in batch_sizes],
                    figures["speedup_best_vs_best"].get(label, 1.0),
                    parity.get("min_cosine", "-"),
                    parity.get("min_centred_cosine", "-"),
                    parity.get("nearest_neighbour_agreement", "-"),
                ]
            )
        print_table(
            [
                "encoder",
                *[f"img/s b{b}" for b in batch_sizes],
                "speed-up best/best",
                "min cos",
                "min centred cos",
                "NN agreement",
            ],
            rows,
        )
    if len(models) > 1:
        print("\nside by side: best images/s over the batch sizes (min cosine to torch)")
        rows = []
        for name, _ in models:
            figures = results[name]
            assert isinstance(figures, dict)
            best, parity, refused = figures["best_images_per_s"], figures["parity"], figures["refused"]
            assert isinstance(best, dict) and isinstance(parity, dict) and isinstance(refused, dict)

            def cell(label: str, best: dict[str, float] = best, parity: dict[str, dict[str, float]] = parity) -> str:
                if label not in best:
                    return "refused by the parity check"
                return f"{best[label]} ({parity[label]['min_cosine']})"

            rows.append(
                [
                    name,
                    figures["family"],
                    figures["image_size"],
                    figures["dimension"],
                    best["torch-fp32"],
                    cell("ort-fp32"),
                    cell("ort-int8"),
                ]
            )
        print_table(["model", "family", "input", "dim", "torch fp32", "ort fp32", "ort int8"], rows)


if __name__ == "__main__":
    main()
