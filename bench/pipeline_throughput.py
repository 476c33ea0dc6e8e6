"""Indexing throughput: images/s through the whole pipeline vs the bare model, side by side in one run.

    .venv/bin/python -m bench.pipeline_throughput            # 3 rounds x 1,000 photos, worker batch 8 and 16
    .venv/bin/python -m bench.pipeline_throughput --count 300 --rounds 2 --batch-sizes 16

1. Generates (once, cached) synthetic camera JPEGs from 1024x768 to 4000x3000 (bench/photos.py).
2. Starts the embedded Postgres and a Valkey, runs the migrations.
3. Registers every photo the way `withsense ingest` does (copy to the spool, sha256,
   services.intake.register_photo(enqueue=False)): the registration rate is reported on its own.
4. Rounds: for each worker batch size, starts a real `celery worker` (WITHSENSE_IMAGE_BATCH_SIZE =
   that size, WITHSENSE_INGEST_BATCH_SIZE = --chunks-per-task times it), warms it up, then queues
   the photos in batches (services.queue.enqueue_ingest_batch) and times until every one is
   `indexed` in Postgres: pipeline images/s, CPU per image of the worker, Postgres and Valkey, and
   where the worker's tasks spent their time (its per-task log lines). Photos are reset in between.
5. Before the first run and after every run, measures the bare model in this process: the same
   model (random weights, `--family`: ViT-B/32 through sentence-transformers, SigLIP B/16, or
   open_clip's ViT-B-32) on pre-decoded 224x224 pixel tensors, at several batch sizes, with the
   worker's thread count. Each run's ratio is its
   throughput over the bare model's best batch size measured right before and right after it, so
   a noisy neighbour slows both sides of a ratio alike; the summary gives the median over rounds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import (
    ROOT,
    emit,
    machine_info,
    print_table,
    random_model,
    running_pid,
    short_tmp_dir,
    warn_if_busy,
)

if TYPE_CHECKING:
    from core.settings import Settings
from bench.photos import ensure_photos, photo_set_stats, variant


class WorkerProcess:
    """A real `celery worker` child process (prefork, one child per --concurrency)."""

    def __init__(self, home: Path, env: dict[str, str], concurrency: int = 1) -> None:
        self.home, self.env, self.concurrency = home, env, concurrency
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = home / f"worker-{time.monotonic_ns()}.log"

    def start(self, timeout: float = 120.0) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                "-Q",
                "photos,maintenance",
                "-c",
                str(self.concurrency),
                "--loglevel",
                "INFO",
                "-n",
                f"bench{time.monotonic_ns()}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.process = None


TASK_LINE = re.compile(
    r"indexed (\d+), failed (\d+) of (\d+) photos in ([\d.]+)s "
    r"\(waiting for decode ([\d.]+)s, model ([\d.]+)s, database ([\d.]+)s\)"
)


def task_breakdown(log_text: str) -> dict[str, float]:
    """Where the worker's tasks spent their wall time, from its per-task log lines (workers/indexing.py)."""
    totals = np.zeros(7)
    tasks = 0
    for match in TASK_LINE.finditer(log_text):
        totals += np.array([float(group) for group in match.groups()])
        tasks += 1
    indexed, _, _, wall, decode_wait, model, database = totals
    if not tasks or not indexed:
        return {"tasks": tasks}
    return {
        "tasks": tasks,
        "photos": int(indexed),
        "task_wall_ms_per_image": round(1000 * wall / indexed, 1),
        "decode_wait_ms_per_image": round(1000 * decode_wait / indexed, 1),
        "model_ms_per_image": round(1000 * model / indexed, 1),
        "database_ms_per_image": round(1000 * database / indexed, 1),
    }


def own_cpu_seconds() -> float:
    """This process alone (its children are the servers and the worker, counted on their own)."""
    times = os.times()
    return times.user + times.system


def tree_cpu_seconds(pid: int) -> float:
    """User+system CPU of a process, its live children, and the children it has already reaped."""
    import psutil

    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children(recursive=True):
            try:
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
            except psutil.NoSuchProcess:
                continue
        return total
    except psutil.NoSuchProcess:
        return 0.0


# The bare model ---------------------------------------------------------------------------------


def bare_model_throughput(
    model_dir: Path, photos: list[Path], batch_sizes: list[int], encoder: str, threads: int, seconds_per_size: float
) -> dict[str, float]:
    """Images/s of the model alone on pre-decoded 224x224 pixel tensors, per batch size."""
    import torch

    from core.embedding import ClipEmbedder
    from core.images import load_rgb, make_derivative
    from core.onnx_encoder import OnnxImageEncoder

    torch.set_num_threads(threads)
    embedder = ClipEmbedder(str(model_dir), device="cpu")
    backend = embedder.backend  # the model family's own preprocessing and forward pass
    derivatives = [make_derivative(load_rgb(path, draft_size=224)) for path in photos[: max(batch_sizes)]]
    pixels = np.stack([np.asarray(backend.prepare_image(image), dtype=np.float32) for image in derivatives])
    onnx: OnnxImageEncoder | None = None
    if encoder != "torch":
        onnx = OnnxImageEncoder.from_embedder(
            embedder, ROOT / ".cache" / "onnx", quantize=encoder == "onnx-int8", threads=threads
        )

    def forward(batch: np.ndarray) -> None:
        if onnx is not None:
            onnx.embed_pixel_values(batch)
            return
        backend.embed_prepared(list(batch), len(batch))

    out: dict[str, float] = {}
    for size in batch_sizes:
        batch = np.ascontiguousarray(pixels[:size])
        if onnx is not None:
            onnx.batch_size = size
        forward(batch)  # warm-up: allocator, kernels
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds_per_size or done < 2 * size:
            forward(batch)
            done += size
        out[str(size)] = round(done / (time.perf_counter() - started), 2)
    return out


# The pipeline -----------------------------------------------------------------------------------


def register_all(
    settings: Settings, files: list[tuple[str, bytes | Path]], spool: Path
) -> tuple[list[uuid.UUID], float]:
    """`withsense ingest`'s producer side for each file; returns the new photo ids and the seconds taken."""
    from services.intake import register_photo

    spool.mkdir(parents=True, exist_ok=True)
    ids: list[uuid.UUID] = []
    started = time.perf_counter()
    for name, source in files:
        fd, tmp_name = tempfile.mkstemp(dir=spool, prefix=".ingest-")
        os.close(fd)
        tmp = Path(tmp_name)
        if isinstance(source, Path):
            shutil.copyfile(source, tmp)
        else:
            tmp.write_bytes(source)
        data_hash = hashlib.sha256(tmp.read_bytes()).hexdigest()
        result = register_photo(
            settings,
            tmp,
            sha256=data_hash,
            size=tmp.stat().st_size,
            original_name=name,
            enqueue=False,
        )
        tmp.unlink(missing_ok=True)
        if not result.created:
            raise RuntimeError(f"{name} was registered as a duplicate; the benchmark needs distinct files")
        ids.append(result.photo.id)
    return ids, time.perf_counter() - started


def enqueue_batches(ids: list[uuid.UUID], batch: int) -> str:
    """Queue the photos the way `withsense ingest` does, with whatever the enqueue module offers."""
    from services import queue as enqueue

    batch_function = getattr(enqueue, "enqueue_ingest_batch", None)
    if batch_function is not None:
        for start in range(0, len(ids), batch):
            batch_function(ids[start : start + batch])
        return "enqueue_ingest_batch"
    for photo_id in ids:
        enqueue.enqueue_ingest(photo_id)
    return "enqueue_ingest"


def wait_until_done(dsn: str, ids: list[uuid.UUID], timeout: float) -> dict[str, int]:
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            counts: dict[str, int] = dict(
                conn.execute(
                    "SELECT status, count(*) FROM photos WHERE id = ANY(%s) GROUP BY status", (ids,)
                ).fetchall()
            )
            if counts.get("indexed", 0) + counts.get("failed", 0) >= len(ids):
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(f"not done after {timeout}s: {counts}")
            time.sleep(0.1)


def reset_photos(dsn: str, ids: list[uuid.UUID]) -> None:
    """Back to freshly registered, so the next batch size indexes the same photos from scratch."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM photo_embeddings WHERE photo_id = ANY(%s)", (ids,))
        conn.execute("DELETE FROM moderation_scores WHERE photo_id = ANY(%s)", (ids,))
        conn.execute(
            "UPDATE photos SET status = 'pending', attempts = 0, error = NULL, indexed_at = NULL, "
            "moderation_status = 'pending_review', depicts_minor = false, unsafe = false, classifier_version = NULL, "
            "moderated_at = NULL, updated_at = now() WHERE id = ANY(%s)",
            (ids,),
        )
        conn.execute("VACUUM (ANALYZE) photos")
        conn.execute("VACUUM (ANALYZE) photo_embeddings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="photos timed per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per batch size, each between two bare measurements")
    parser.add_argument("--distinct", type=int, default=500, help="distinct pictures (the rest are byte variants)")
    parser.add_argument("--warmup", type=int, default=64, help="photos indexed before timing starts")
    parser.add_argument("--batch-sizes", default="8,16", help="worker image batch sizes to run")
    parser.add_argument(
        "--chunks-per-task",
        type=int,
        default=8,
        help="WITHSENSE_INGEST_BATCH_SIZE = this many image batches (docker-compose.cpu.yml: 8 x 8)",
    )
    parser.add_argument("--bare-batch-sizes", default="8,16,32")
    parser.add_argument("--bare-seconds", type=float, default=8.0, help="seconds per bare batch size")
    parser.add_argument(
        "--encoder",
        choices=["torch", "onnx", "onnx-int8"],
        default="torch",
        help="image encoder for the bare model and (as WITHSENSE_IMAGE_ENCODER) the worker",
    )
    parser.add_argument("--concurrency", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--family",
        choices=["clip", "siglip", "open_clip"],
        default="clip",
        help="the model (random weights, real architecture): ViT-B/32, SigLIP B/16 or open_clip ViT-B-32",
    )
    parser.add_argument("--decode-threads", type=int, default=None, help="WITHSENSE_DECODE_THREADS for the worker")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    bare_sizes = [int(b) for b in args.bare_batch_sizes.split(",")]

    info = machine_info()
    warn_if_busy()
    model_dir = random_model(args.family)
    pictures = ensure_photos(args.distinct)
    home = short_tmp_dir("wsp-")
    threads = max(
        1, (os.cpu_count() or 1) // args.concurrency
    )  # what Settings.torch_threads_for gives each worker child

    from cli.local_services import LocalPostgres, LocalRedis

    postgres = LocalPostgres(home / "pg")
    redis = LocalRedis(home / "redis")
    env = {key: value for key, value in os.environ.items() if not key.startswith("WITHSENSE_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "WITHSENSE_HOME": str(home / "data"),
            "WITHSENSE_MODEL": str(model_dir),
            "WITHSENSE_DEVICE": "cpu",
            "WITHSENSE_RECONCILE_AFTER_S": "36000",  # the reconciler must not re-queue photos mid-measurement
            "WITHSENSE_WORKER_CONCURRENCY": str(args.concurrency),
        }
    )
    if args.encoder != "torch":
        env["WITHSENSE_IMAGE_ENCODER"] = args.encoder
        env["WITHSENSE_ONNX_CACHE_DIR"] = str(ROOT / ".cache" / "onnx")  # the export the bare run uses
    if args.decode_threads:
        env["WITHSENSE_DECODE_THREADS"] = str(args.decode_threads)
    results: dict[str, Any] = {
        "machine": info,
        "count": args.count,
        "encoder": args.encoder,
        "concurrency": args.concurrency,
        "family": args.family,
        "torch_threads": threads,
    }
    worker: WorkerProcess | None = None
    postgres.start()
    redis.start()
    try:
        env["WITHSENSE_DATABASE_URL"] = postgres.url
        env["WITHSENSE_BROKER_URL"] = redis.url
        os.environ.update({k: v for k, v in env.items() if k.startswith("WITHSENSE_")})
        from core.settings import get_settings, reload_settings
        from migrations.apply import upgrade

        reload_settings()
        upgrade(postgres.url)
        settings = get_settings()
        dsn = postgres.dsn

        # Files: distinct pictures first, then byte variants, warm-up set separate from the timed set.
        total = args.warmup + args.count
        files: list[tuple[str, bytes | Path]] = []
        for number in range(total):
            picture = pictures[number % len(pictures)]
            copy = number // len(pictures)
            files.append((picture.name, picture if copy == 0 else variant(picture.read_bytes(), copy)))
        results["photos"] = photo_set_stats(pictures[: min(len(pictures), total)])

        def measure_bare(label: str) -> dict[str, float]:
            print(f"bare model ({label}) ...", file=sys.stderr)
            return bare_model_throughput(model_dir, pictures, bare_sizes, args.encoder, threads, args.bare_seconds)

        print(f"registering {total} photos ...", file=sys.stderr)
        ids, register_s = register_all(settings, files, settings.home / "tmp")
        warm_ids, timed_ids = ids[: args.warmup], ids[args.warmup :]
        results["registration"] = {
            "photos": total,
            "seconds": round(register_s, 1),
            "photos_per_s": round(total / register_s, 1),
        }

        # bare, run, bare, run, ..., bare: every pipeline run is bracketed by two bare measurements.
        bares = [measure_bare("start")]
        # Any: one JSON document of figures per run (emit() writes them out as they are).
        runs: list[dict[str, Any]] = []
        for round_number in range(1, args.rounds + 1):
            for batch in batch_sizes:
                if runs:
                    reset_photos(dsn, ids)
                per_task = batch * args.chunks_per_task
                worker_env = dict(env, WITHSENSE_IMAGE_BATCH_SIZE=str(batch), WITHSENSE_INGEST_BATCH_SIZE=str(per_task))
                worker = WorkerProcess(home, worker_env, args.concurrency)
                worker.start()
                print(f"round {round_number}, batch {batch}: warm-up ...", file=sys.stderr)
                enqueue_batches(warm_ids, per_task)
                wait_until_done(dsn, warm_ids, args.timeout)
                cpu_before = {
                    "worker": tree_cpu_seconds(running_pid(worker)),
                    "postgres": tree_cpu_seconds(running_pid(postgres)),
                    "valkey": tree_cpu_seconds(running_pid(redis)),
                    "bench": own_cpu_seconds(),
                }
                print(f"round {round_number}, batch {batch}: {len(timed_ids)} photos ...", file=sys.stderr)
                log_offset = worker.log_path.stat().st_size
                started = time.perf_counter()
                how = enqueue_batches(timed_ids, per_task)
                counts = wait_until_done(dsn, timed_ids, args.timeout)
                seconds = time.perf_counter() - started
                cpu_after = {
                    "worker": tree_cpu_seconds(running_pid(worker)),
                    "postgres": tree_cpu_seconds(running_pid(postgres)),
                    "valkey": tree_cpu_seconds(running_pid(redis)),
                    "bench": own_cpu_seconds(),
                }
                timed_log = worker.log_path.read_bytes()[log_offset:].decode(errors="replace")
                worker.stop()
                worker = None
                runs.append(
                    {
                        "round": round_number,
                        "batch": batch,
                        "photos_per_task": per_task,
                        "worker_tasks": task_breakdown(timed_log),
                        "seconds": round(seconds, 1),
                        "images_per_s": round(len(timed_ids) / seconds, 2),
                        "statuses": counts,
                        "enqueue": how,
                        "cpu_ms_per_image": {
                            name: round(1000 * (cpu_after[name] - cpu_before[name]) / len(timed_ids), 1)
                            for name in cpu_before
                        },
                    }
                )
                bares.append(measure_bare(f"after round {round_number}, batch {batch}"))
    finally:
        if worker is not None:
            worker.stop()
        redis.stop()
        postgres.stop()
        shutil.rmtree(home, ignore_errors=True)

    mean_bare = {size: round(float(np.mean([b[str(size)] for b in bares])), 2) for size in bare_sizes}
    best_size = max(mean_bare, key=lambda size: mean_bare[size])
    for index, run in enumerate(runs):
        # The bare model's best batch size, measured right before and right after this run.
        bracket = (bares[index][str(best_size)] + bares[index + 1][str(best_size)]) / 2
        run["bare_best_bracketing_images_per_s"] = round(bracket, 2)
        run["ratio_to_bare_best"] = round(float(run["images_per_s"]) / bracket, 3)
    by_batch = {batch: [run for run in runs if run["batch"] == batch] for batch in batch_sizes}
    per_batch = {
        str(batch): {
            "runs": len(batch_runs),
            "images_per_s_median": round(float(np.median([r["images_per_s"] for r in batch_runs])), 2),
            "ratio_median": round(float(np.median([r["ratio_to_bare_best"] for r in batch_runs])), 3),
            "ratio_min": min(r["ratio_to_bare_best"] for r in batch_runs),
            "ratio_max": max(r["ratio_to_bare_best"] for r in batch_runs),
        }
        for batch, batch_runs in by_batch.items()
    }
    results["bare_model_images_per_s"] = {"measurements": bares, "mean": mean_bare, "best_batch_size": int(best_size)}
    results["pipeline_runs"] = runs
    results["pipeline"] = per_batch
    best_batch = max(per_batch, key=lambda b: per_batch[b]["ratio_median"])
    results["summary"] = {
        "best_pipeline_batch": int(best_batch),
        **per_batch[best_batch],
        "bare_best_batch": int(best_size),
        "bare_images_per_s_mean": mean_bare[best_size],
    }
    emit(f"pipeline_throughput_{args.encoder}", results)
    print()
    print_table(
        ["bare batch"] + [f"img/s #{i}" for i in range(len(bares))] + ["mean"],
        [[size] + [b[str(size)] for b in bares] + [mean_bare[size]] for size in bare_sizes],
    )
    print()
    print_table(
        [
            "round",
            "worker batch",
            "pipeline img/s",
            "bare best (bracketing)",
            "ratio",
            "worker CPU ms/img",
            "postgres CPU ms/img",
            "task ms/img: decode wait / model / database",
            "failed",
        ],
        [
            [
                r["round"],
                r["batch"],
                r["images_per_s"],
                r["bare_best_bracketing_images_per_s"],
                r["ratio_to_bare_best"],
                r["cpu_ms_per_image"]["worker"],
                r["cpu_ms_per_image"]["postgres"],
                " / ".join(
                    str(r["worker_tasks"].get(key))
                    for key in ("decode_wait_ms_per_image", "model_ms_per_image", "database_ms_per_image")
                ),
                r["statuses"].get("failed", 0),
            ]
            for r in runs
        ],
    )
    print()
    print_table(
        ["worker batch", "runs", "pipeline img/s (median)", "ratio median", "ratio min", "ratio max"],
        [
            [batch, f["runs"], f["images_per_s_median"], f["ratio_median"], f["ratio_min"], f["ratio_max"]]
            for batch, f in per_batch.items()
        ],
    )
    print(f"\nregistration (ingest-style, sha256 + insert): {results['registration']['photos_per_s']} photos/s")


if __name__ == "__main__":
    main()
