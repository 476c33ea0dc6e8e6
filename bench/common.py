"""Helpers shared by the benchmark scripts: machine facts, latency statistics, output, servers, models.

Every script prints one JSON document (the figures) and a short table, and writes the JSON to
``bench/results/<name>.json`` (git-ignored) so BENCHMARKS.md can be refreshed from it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import psycopg

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
MODEL_CACHE = ROOT / ".cache" / "bench-models"

if str(ROOT) not in sys.path:  # `python bench/x.py` from anywhere imports the project's packages
    sys.path.insert(0, str(ROOT))


def machine_info() -> dict[str, object]:
    """What the figures were measured on, and how busy the machine was when the run started."""
    cpu_model = "unknown"
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu_model == "unknown":
                cpu_model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx")) or f == "fma"]
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions: dict[str, str] = {}
    for module in ("torch", "onnxruntime", "transformers", "sentence_transformers", "psycopg", "pgvector"):
        with contextlib.suppress(ImportError, AttributeError):  # absent packages are simply not listed
            versions[module] = __import__(module).__version__
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "cpu_flags": flags,
        "ram_gib": mem_gib,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": versions,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds, and the sample count."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"n": 0}
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain fixed-width table on stdout (also pasteable into Markdown with `|`)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |")
        if index == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def emit(name: str, payload: dict[str, object]) -> Path:
    """Print the figures as JSON and keep a copy in bench/results/<name>.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    text = json.dumps(payload, indent=2, default=_json_default)
    path.write_text(text + "\n")
    print(text)
    return path


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def warn_if_busy(limit: float | None = None) -> None:
    """Say so on stderr when other work is using the CPU: ratios survive noise, absolute figures less so."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    if load > (limit if limit is not None else 0.5 * cores):
        print(
            f"note: 1-minute load average is {load:.1f} on {cores} cores; absolute figures will be noisy",
            file=sys.stderr,
        )


@contextmanager
def timer() -> Iterator[list[float]]:
    """`with timer() as t: ...` then t[0] is the elapsed wall time in seconds."""
    box: list[float] = []
    started = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - started)


def short_tmp_dir(prefix: str) -> Path:
    """A fresh folder directly under /tmp: short paths keep any unix socket under the ~107-byte limit."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def random_vit_b32(cache_dir: Path = MODEL_CACHE) -> Path:
    """The real ViT-B/32 architecture (transformers CLIPConfig() defaults) with random weights, as a
    sentence-transformers folder, built once and cached. Speed does not depend on weight values."""
    target = cache_dir / "clip-vit-b32-random"
    if (target / "modules.json").is_file():
        return target
    from transformers import CLIPConfig

    from evaluation.standins.tiny_clip import save_random_clip

    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".clip-vit-b32-", dir=cache_dir))
    try:
        save_random_clip(staging / "model", CLIPConfig())
        try:
            os.rename(staging / "model", target)
        except OSError:
            if not (target / "modules.json").is_file():  # another process won the race: use its copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _cached_build(target: Path, build: Callable[[Path], Path]) -> Path:
    """Build a model folder once into `target` (staged next to it, renamed into place)."""
    if (target / ".built").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging / "model")
        (staging / "model" / ".built").write_text("")
        try:
            os.rename(staging / "model", target)
        except OSError:
            if not (target / ".built").is_file():  # another process won the race: use its copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def random_siglip_b16(cache_dir: Path = MODEL_CACHE) -> Path:
    """The real SigLIP B/16 at 224 (transformers SiglipConfig() defaults, 768-d, the architecture of
    google/siglip-base-patch16-224 and google/siglip2-base-patch16-224) with random weights, cached."""
    from evaluation.standins.tiny_families import save_random_siglip

    return _cached_build(cache_dir / "siglip-b16-random", save_random_siglip)


def random_open_clip_b32(cache_dir: Path = MODEL_CACHE) -> Path:
    """open_clip's ViT-B-32 (its packaged config, 512-d; the DataComp and LAION ViT-B-32 architecture) with random
    weights, cached. Needs open_clip importable (it imports torchvision)."""
    from evaluation.standins.tiny_families import save_random_open_clip

    return _cached_build(cache_dir / "open-clip-vit-b32-random", save_random_open_clip)


def random_model(family: str) -> Path:
    """The real architecture of one model of `family` ("clip", "siglip", "open_clip") with random weights."""
    builders = {"clip": random_vit_b32, "siglip": random_siglip_b16, "open_clip": random_open_clip_b32}
    return builders[family]()


def tiny_trained_clip() -> Path | None:
    """The tiny trained CLIP the tests use, when it has been built (tests build it; benches do not).

    Prefers the build for the current training code; any earlier build is equally fine for speed and
    parity figures, so the newest one is used otherwise.
    """
    from evaluation.standins.tiny_clip import cached_tiny_clip, ensure_tiny_clip

    cache = Path(os.environ.get("WITHSENSE_TEST_CACHE") or ROOT / ".cache" / "test-models")
    current = cached_tiny_clip(cache)
    if current is not None:
        return current
    builds = sorted(
        (p for p in cache.glob("tiny-clip-*") if (p / "modules.json").is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    if builds:
        return builds[0]
    if os.environ.get("WITHSENSE_BENCH_BUILD_TINY") == "1":
        return ensure_tiny_clip(cache)
    return None


class StartedProcess(Protocol):
    """A server or worker wrapper that holds its child process once started (cli.local_services, the benches)."""

    process: subprocess.Popen[bytes] | None


def running_pid(server: StartedProcess) -> int:
    """The pid of a started server or worker."""
    if server.process is None:
        raise RuntimeError(f"{type(server).__name__} is not running")
    return server.process.pid


def fetch_value(conn: psycopg.Connection[Any], query: str, params: Sequence[object] = ()) -> Any:
    """The first column of the first row of ``query`` (raises when there is no row). Any: a value from Postgres."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise LookupError(f"no row from: {query}")
    return row[0]
