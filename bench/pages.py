"""Server time of each web page at 1 client, on the local stack (target: p50 and p95 under 200 ms).

    .venv/bin/python -m bench.pages                      # 40 photos, 40 requests per page, random-weights ViT-B/32
    .venv/bin/python -m bench.pages --photos 200 --requests 100
    .venv/bin/python -m bench.pages --model /path/to/sentence-transformers-folder

What it does:
1. starts the embedded Postgres and a Valkey in a fresh folder under /tmp, runs the migrations, starts one real
   Celery worker and uvicorn serving api.app:app (the pages and the API) on loopback;
2. uploads synthetic photos through POST /v1/photos and waits until they are indexed; a quarter of them are sent
   back to review so the moderation queue has a full page;
3. signs in through the sign-in form (the session cookie) and requests every page one after another: the search
   page empty, with a text query, with filters (photographer, tag, orientation, min width, newest first), a next
   page (the cursor of a first page of 6), "more like this", the photo page, a thumbnail, the upload page, the
   moderation queue and the sign-in page;
4. prints p50/p95/p99 of the server time (the pages' Server-Timing header: from routing to the response,
   database, model and template included) and of the client's wall time on loopback.

Speed does not depend on weight values, so by default the model is the real ViT-B/32 architecture with random
weights (bench.common.random_vit_b32); the query is embedded by its text tower on each text search.
"""

from __future__ import annotations

import argparse
import html
import io
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.common import (
    ROOT,
    emit,
    latency_stats,
    machine_info,
    print_table,
    random_vit_b32,
    short_tmp_dir,
    warn_if_busy,
)

TARGET_MS = 200.0
SERVER_TIMING = re.compile(r"app;dur=([0-9.]+)")
CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')
NEXT_LINK = re.compile(r'href="([^"]+)" rel="next"')


def _start(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_for(url: str, log_path: Path, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready in {timeout}s:\n{log_path.read_text()[-3000:]}")


def _jpeg(image: object) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=90)  # type: ignore[attr-defined]
    return buffer.getvalue()


def _upload_photos(client: httpx.Client, count: int, timeout: float) -> list[str]:
    from evaluation.standins.synthetic import generate

    ids = []
    for sample in generate(count, 7):
        response = client.post(
            "/v1/photos",
            files={"file": ("photo.jpg", _jpeg(sample.image), "image/jpeg")},
            data={"title": sample.caption[:80], "photographer": "Bench", "tags": f"{sample.colour}, {sample.shape}"},
        )
        response.raise_for_status()
        ids.append(response.json()["id"])
    deadline = time.monotonic() + timeout
    waiting = set(ids)
    while waiting and time.monotonic() < deadline:
        for photo_id in list(waiting):
            try:
                status = client.get(f"/v1/photos/{photo_id}").json()["status"]
            except httpx.TransportError:  # a keep-alive connection the server closed meanwhile: ask again
                continue
            if status in ("indexed", "failed"):
                waiting.discard(photo_id)
        time.sleep(0.5)
    if waiting:
        raise TimeoutError(f"{len(waiting)} photos not indexed after {timeout}s")
    return ids


def _sign_in(client: httpx.Client, key: str) -> None:
    page = client.get("/signin")
    token = CSRF.search(page.text)
    assert token, "no CSRF token on the sign-in page"
    answer = client.post("/signin", data={"key": key, "csrf_token": token.group(1)})
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in answered {answer.status_code}")


@dataclass(frozen=True)
class PageFigures:
    path: str
    server: dict[str, float]  # from the Server-Timing header (the pages send it; the API does not)
    wall: dict[str, float]  # the client's, on loopback


def _measure(client: httpx.Client, path: str, requests: int) -> PageFigures:
    server, wall = [], []
    client.get(path)  # one warm-up (templates compiled, caches filled)
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path)
        wall.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")
        found = SERVER_TIMING.search(response.headers.get("server-timing", ""))
        if found:
            server.append(float(found.group(1)) / 1000)
    if server and len(server) != len(wall):
        raise RuntimeError(f"{path} did not always send Server-Timing")
    return PageFigures(path, latency_stats(server), latency_stats(wall))


def _warm_up(client: httpx.Client, timeout: float) -> None:
    """One search once the model is loaded: the API answers 503 while it loads in the background."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/v1/search", params={"q": "warm up"})
        if response.status_code != 503 or time.monotonic() > deadline:
            response.raise_for_status()
            return
        time.sleep(1)


def _label(path: str) -> str:
    return re.sub(r"cursor=[^&]+", "cursor=…", path)[:100]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=40, help="synthetic photos to index first")
    parser.add_argument("--requests", type=int, default=40, help="requests per page")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: random ViT-B/32)")
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    args = parser.parse_args()
    warn_if_busy()

    from cli.local_services import LocalPostgres, LocalRedis, free_port
    from migrations.apply import upgrade

    model = args.model or random_vit_b32()
    home = short_tmp_dir("wsbp-")
    postgres, redis = LocalPostgres(home / "pg"), LocalRedis(home / "redis")
    worker = api = None
    try:
        postgres.start()
        redis.start()
        upgrade(postgres.url)
        env = {key: value for key, value in os.environ.items() if not key.startswith("WITHSENSE_")}
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "WITHSENSE_HOME": str(home / "data"),
                "WITHSENSE_DATABASE_URL": postgres.url,
                "WITHSENSE_BROKER_URL": redis.url,
                "WITHSENSE_MODEL": str(model),
                "WITHSENSE_DEVICE": "cpu",
                # The limiter's Redis round trip stays in the measurement; its limits must not throttle the run.
                "WITHSENSE_RATE_LIMIT_SEARCH": "1000000/second",
                "WITHSENSE_RATE_LIMIT_UPLOAD": "1000000/second",
            }
        )
        os.environ.update({k: v for k, v in env.items() if k.startswith("WITHSENSE_")})
        from core.runtime import runtime

        runtime.reset()
        from services.access import create_key

        _, admin_key = create_key("bench-pages", ["admin"])

        worker = _start(
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
                "1",
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
            ],
            env,
            home / "worker.log",
        )
        port = free_port()
        api = _start(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env,
            home / "api.log",
        )
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/healthz", home / "api.log", api, 180)
        bearer = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin_key}"}, timeout=300)
        _warm_up(bearer, timeout=600)
        ids = _upload_photos(bearer, args.photos, timeout=600)
        for photo_id in ids[: max(1, len(ids) // 4)]:
            bearer.post(f"/v1/photos/{photo_id}/moderation", json={"status": "pending_review", "reason": "bench"})
        indexed = [p for p in ids[len(ids) // 4 :] if bearer.get(f"/v1/photos/{p}").json()["status"] == "indexed"]
        if not indexed:
            raise RuntimeError("no photo was indexed; see the worker log in " + str(home))

        pages = httpx.Client(base_url=base, timeout=60, follow_redirects=False)
        _sign_in(pages, admin_key)
        first_page = pages.get("/search?q=a+red+circle+on+a+white+background&k=6&min_score=-1")
        next_link = NEXT_LINK.search(first_page.text)
        if next_link is None:
            raise RuntimeError("the search page has no next page link")
        paths = [
            "/",
            "/search?q=a+red+circle+on+a+white+background",
            "/search?q=a+red+circle&photographer=Bench&tag=red&orientation=landscape&min_width=100&sort=newest",
            html.unescape(next_link.group(1)),
            f"/search?like={indexed[0]}",
            f"/photos/{indexed[0]}",
            f"/photos/{indexed[0]}/thumbnail",
            "/upload",
            "/moderation",
            "/signin",
        ]
        figures = [_measure(pages, path, args.requests) for path in paths]
        # The API's own search with the same query, for reference: the page's cost beyond it is the page's own.
        api_search = _measure(bearer, "/v1/search?q=a+red+circle+on+a+white+background&k=24", args.requests)
        rows = [
            [_label(f.path), f.server["p50_ms"], f.server["p95_ms"], f.wall["p50_ms"], f.wall["p95_ms"]]
            for f in figures
        ]
        worst_p95 = max(f.server["p95_ms"] for f in figures)
        emit(
            "pages",
            {
                "machine": machine_info(),
                "model": str(model),
                "photos": len(ids),
                "requests_per_page": args.requests,
                "clients": 1,
                "target_ms": TARGET_MS,
                "pages": [asdict(f) for f in figures],
                "api_search_for_reference": asdict(api_search),
                "worst_server_p95_ms": worst_p95,
                "meets_target": worst_p95 < TARGET_MS,
            },
        )
        print()
        print_table(["page", "server p50 ms", "server p95 ms", "wall p50 ms", "wall p95 ms"], rows)
        print(
            f"\nworst server p95: {worst_p95:.1f} ms (target < {TARGET_MS:.0f} ms); GET /v1/search with the same "
            f"query, for reference: wall p50 {api_search.wall['p50_ms']:.1f} ms, p95 {api_search.wall['p95_ms']:.1f} ms"
        )
    finally:
        _stop(api)
        _stop(worker)
        redis.stop()
        postgres.stop()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
