"""How long the query policy takes per query: p50/p99 on this machine (target: p99 under 1 ms).

    .venv/bin/python -m bench.policy_speed [--passes 5] [--seed 7]

The queries are the labelled list (evaluation/policy_queries.csv, English and Russian, every kind)
read four ways:

- cold: a freshly loaded policy with every cache emptied, each query once (what a new process sees);
- warm: the same queries again, several passes (words already seen are cached);
- unseen slips: each query with one word changed by a random edit, so the slip lookup meets words
  it has never seen (the deletion index, rapidfuzz and the dictionary checks all run);
- long: queries of 60-200 words, the longest a search box sends in practice.

The check is pure Python (regular expressions, dictionary lookups) plus rapidfuzz's C++ distance;
no step scans the lexicon per word. The CPU's vector extensions are printed for the record: the
figures do not depend on AVX-512 or VNNI (rapidfuzz uses AVX2 where present, for longer strings).
"""

from __future__ import annotations

import argparse
import csv
import random
import time
from collections.abc import Sequence

import numpy as np

from bench.common import ROOT, emit, machine_info, print_table, warn_if_busy

QUERIES = ROOT / "evaluation" / "policy_queries.csv"
TARGET_P99_MS = 1.0


def _stats(seconds: Sequence[float]) -> dict[str, float]:
    us = np.asarray(seconds, dtype=np.float64) * 1e6
    return {
        "n": int(us.size),
        "p50_ms": round(float(np.percentile(us, 50)) / 1000, 4),
        "p99_ms": round(float(np.percentile(us, 99)) / 1000, 4),
        "max_ms": round(float(us.max()) / 1000, 4),
        "mean_ms": round(float(us.mean()) / 1000, 4),
    }


def _time_all(check: object, queries: Sequence[str], cpu: list[float] | None = None) -> list[float]:
    """Wall-clock seconds per query; the thread's CPU seconds per query are appended to ``cpu``.

    On a shared machine the wall-clock tail is mostly the scheduler (a preempted thread waits a whole
    time slice); the CPU time is what the check itself costs.
    """
    timings = []
    for query in queries:
        cpu_started = time.thread_time()
        started = time.perf_counter()
        check(query)  # type: ignore[operator]
        timings.append(time.perf_counter() - started)
        if cpu is not None:
            cpu.append(time.thread_time() - cpu_started)
    return timings


def _with_random_edit(query: str, rng: random.Random) -> str:
    words = query.split()
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not candidates:
        return query
    index = rng.choice(candidates)
    word = list(words[index])
    position = rng.randrange(len(word) - 1)
    operation = rng.choice(("swap", "delete", "double", "replace"))
    if operation == "swap":
        word[position], word[position + 1] = word[position + 1], word[position]
    elif operation == "delete":
        del word[position]
    elif operation == "double":
        word.insert(position, word[position])
    else:
        word[position] = rng.choice("aeiouаеиоу")
    words[index] = "".join(word)
    return " ".join(words)


def _cold_policy() -> object:
    """A freshly loaded policy, with the module-level caches of word readings emptied too."""
    from core import policy as policy_module
    from core.lexicon import get_lexicon

    policy_module._word_variants.cache_clear()
    policy_module._token_readings.cache_clear()
    policy_module._script.cache_clear()
    get_lexicon()._real.clear()
    return policy_module.QueryPolicy.load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--passes", type=int, default=5, help="warm passes over the list")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    warn_if_busy()
    rng = random.Random(args.seed)
    with QUERIES.open(encoding="utf-8", newline="") as handle:
        queries = [row["query"] for row in csv.DictReader(handle)]

    started = time.perf_counter()
    policy = _cold_policy()
    load_s = time.perf_counter() - started
    check = policy.check  # type: ignore[attr-defined]

    cpu: dict[str, list[float]] = {"cold": [], "warm": [], "unseen": [], "long": []}
    cold = _time_all(check, queries, cpu["cold"])
    warm = [t for _ in range(args.passes) for t in _time_all(check, queries, cpu["warm"])]
    unseen_queries = [_with_random_edit(q, rng) for _ in range(args.passes) for q in queries]
    unseen = _time_all(check, unseen_queries, cpu["unseen"])
    vocabulary = [w for q in queries for w in q.split()]
    long_queries = [" ".join(rng.choices(vocabulary, k=rng.randint(60, 200))) for _ in range(200)]
    long = _time_all(check, long_queries, cpu["long"])

    info = machine_info()
    cpu_flags = info["cpu_flags"]
    flags = {str(flag) for flag in cpu_flags} if isinstance(cpu_flags, list) else set()
    vector_extensions = {
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags or "avx512vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "amx": any(f.startswith("amx") for f in flags),
    }
    results = {
        "cold (new process, caches empty)": _stats(cold),
        "warm (words seen before)": _stats(warm),
        "unseen slips (one random edit each)": _stats(unseen),
        "long (60-200 words)": _stats(long),
    }
    cpu_results = {
        "cold, CPU time": _stats(cpu["cold"]),
        "warm, CPU time": _stats(cpu["warm"]),
        "unseen slips, CPU time": _stats(cpu["unseen"]),
        "long, CPU time": _stats(cpu["long"]),
    }
    print(f"CPU: {info['cpu_model']}, {info['nproc']} cores")
    print(
        "vector extensions: " + ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in vector_extensions.items())
    )
    print(f"policy {policy.version}: loaded in {load_s:.2f} s (dictionaries and rules, once per process)")  # type: ignore[attr-defined]
    print_table(
        ["queries (wall clock, then the thread's CPU time)", "n", "p50 ms", "p99 ms", "max ms", "mean ms"],
        [
            [name, s["n"], s["p50_ms"], s["p99_ms"], s["max_ms"], s["mean_ms"]]
            for name, s in [*results.items(), *cpu_results.items()]
        ],
    )
    wall = max(results[name]["p99_ms"] for name in list(results)[:3])
    own = max(cpu_results[name]["p99_ms"] for name in list(cpu_results)[:3])
    print(
        f"target p99 < {TARGET_P99_MS} ms per query (cold, warm, unseen slips): wall clock {wall} ms "
        f"({'met' if wall < TARGET_P99_MS else 'missed'}), CPU time {own} ms "
        f"({'met' if own < TARGET_P99_MS else 'missed'}); load average {info['load_average_at_start']}"
    )
    emit(
        "policy_speed",
        {
            "machine": info,
            "vector_extensions": vector_extensions,
            "policy_version": policy.version,  # type: ignore[attr-defined]
            "load_s": round(load_s, 2),
            "results": results,
            "cpu_time_results": cpu_results,
            "target_p99_ms": TARGET_P99_MS,
        },
    )


if __name__ == "__main__":
    main()
