"""The operator's `withsense` commands in-process (Typer's CliRunner) against the real Postgres and Redis."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from cli.local_services import LocalRedis
from cli.main import app
from tests.conftest import Services, upload
from tests.images import jpeg_bytes

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("clean_db", "own_broker")  # no worker: the photos stay pending


def test_ingest_records_the_photographers_declarations_and_status_counts_them(api: TestClient, tmp_path: Path) -> None:
    folder = tmp_path / "school-portraits"
    folder.mkdir()
    for i in range(3):
        (folder / f"portrait-{i}.jpg").write_bytes(jpeg_bytes(Image.new("RGB", (64, 48), (i * 70, 90, 140))))
    (folder / "notes.txt").write_text("not an image")

    result = CliRunner().invoke(app, ["ingest", str(folder), "--depicts-minor", "--parental-consent"])
    assert result.exit_code == 0, result.output
    assert "3 queued, 0 already known, 0 rejected" in result.output

    photos = api.get("/v1/photos", params={"all_uploaders": "true"}).json()["items"]
    assert len(photos) == 3
    assert all(p["depicts_minor"] and p["parental_consent"] for p in photos)
    trail = api.get(f"/v1/photos/{photos[0]['id']}/moderation").json()
    assert [(e["actor"], e["action"]) for e in trail] == [("cli:ingest", "declared")]

    status = CliRunner().invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    assert "photos: 3 pending, 0 processing, 0 indexed, 0 failed" in status.output


def test_models_activate_names_what_is_registered(services: Services) -> None:
    result = CliRunner().invoke(app, ["models", "activate", "no-such-model"])
    assert result.exit_code == 2
    assert "no registered model no-such-model (registered: " in result.output


# The stack down: every command says so in one line ------------------------------------------------------------

COMMANDS = [
    ["status"],
    ["search", "a red circle"],
    ["ingest", "{folder}"],
    ["redrive"],
    ["redrive", "--pending"],
    ["reconcile"],
    ["reindex"],
    ["migrate"],
    ["keys", "list"],
    ["keys", "create", "--scope", "search"],
    ["keys", "revoke", "1"],
    ["models", "list"],
    ["models", "activate", "clip-ViT-B-32"],
    ["regions", "list"],
    ["regions", "set", "DE", "--unrestricted"],
]


def _run_cli(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _env_without_stack(home: Path, **urls: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WITHSENSE_")}
    env.update({"WITHSENSE_HOME": str(home), "PYTHONPATH": str(ROOT), "XDG_RUNTIME_DIR": str(home)}, **urls)
    env["WITHSENSE_MODEL"] = os.environ["WITHSENSE_MODEL"]  # the tiny model: search must not wait on the hub
    return env


@pytest.mark.parametrize("setting", ["no stack started", "servers gone"])
def test_every_command_with_the_stack_down_prints_one_line_and_fails(setting: str, tmp_path: Path) -> None:
    """No Postgres, no Redis: not started at all (no URLs, no stack.env), or gone from the URLs that a stack
    killed with -9 left behind. One line on stderr, exit code non-zero, no traceback, for every command."""
    from cli.local_services import free_port

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "one.jpg").write_bytes(jpeg_bytes(Image.new("RGB", (64, 48), (200, 30, 30))))
    home = tmp_path / "home"
    home.mkdir()
    if setting == "servers gone":
        (home / "stack.env").write_text(
            f"export WITHSENSE_DATABASE_URL=postgresql+psycopg://postgres:pw@127.0.0.1:{free_port()}/withsense\n"
            f"export WITHSENSE_BROKER_URL=redis://:pw@127.0.0.1:{free_port()}/0\n"
        )
    env = _env_without_stack(home)
    # Every command against the URLs of a dead stack; a few (each layer's first database use) with no URL at all.
    commands = COMMANDS if setting == "servers gone" else [COMMANDS[i] for i in (0, 1, 2, 5, 8, 11)]
    for command in commands:
        args = [arg.replace("{folder}", str(folder)) for arg in command]
        result = _run_cli(args, env)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        assert result.returncode != 0, (command, result.stdout, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        if setting == "servers gone":
            assert "cannot be reached" in lines[0] or "unreachable" in lines[0], (command, lines)
            assert "withsense up" in lines[0]
        else:
            assert "WITHSENSE_DATABASE_URL is not set" in lines[0], (command, lines)
        assert "pw@" not in lines[0]  # never a password in the message


def test_commands_that_queue_with_redis_down_print_one_line(
    api: TestClient, services: Services, tmp_path: Path
) -> None:
    """Postgres up, Redis gone: what needs the queue says so in one line (ingest registers nothing)."""
    from cli.local_services import free_port
    from services.photos import status_counts

    pending = upload(api, Image.new("RGB", (64, 48), (90, 30, 30))).json()["id"]  # queued while Redis was up
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "one.jpg").write_bytes(jpeg_bytes(Image.new("RGB", (64, 48), (20, 30, 230))))
    env = _env_without_stack(
        tmp_path,
        WITHSENSE_DATABASE_URL=services.database_url,
        WITHSENSE_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    for command in (["ingest", str(folder)], ["reconcile", "--older-than", "0"], ["redrive", "--pending"]):
        result = _run_cli(command, env)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        assert result.returncode != 0 and len(lines) == 1, (command, result.stdout, result.stderr)
        assert lines[0].startswith(("error: ", "warning: ")) and "Traceback" not in result.stderr, (command, lines)
        assert "queue" in lines[0] or "Redis" in lines[0] or "broker" in lines[0], (command, lines)
    assert status_counts() == {"pending": 1}  # nothing registered by the refused ingest; the upload waits
    assert api.get(f"/v1/photos/{pending}").json()["status"] == "pending"


# Reasons, --pending, and what search shows --------------------------------------------------------------------


def test_status_and_ingest_wait_show_why_photos_wait_and_redrive_pending_indexes_them(
    api: TestClient, services: Services, own_broker: LocalRedis, tmp_path: Path
) -> None:
    """A worker that cannot load its model leaves the photos pending with the reason: `ingest --wait` and
    `status` say it (and a photo that cannot be decoded fails with its own); once a worker with a model runs,
    `withsense redrive --pending` queues them again and they are indexed, one embedding row each."""
    from sqlalchemy import text as sql

    from db.engine import session_scope
    from services.photos import status_report
    from tests.conftest import WorkerProcess

    folder = tmp_path / "catalogue"
    folder.mkdir()
    for i in range(3):
        (folder / f"shape-{i}.jpg").write_bytes(jpeg_bytes(Image.new("RGB", (96, 64), (60 * i, 200, 90))))
    broken = jpeg_bytes(Image.effect_noise((400, 300), 80).convert("RGB"))
    (folder / "broken.jpg").write_bytes(broken[: len(broken) // 3])

    no_model = WorkerProcess(services.home, extra_env={"WITHSENSE_MODEL": str(tmp_path / "no-such-model")})
    no_model.start()
    try:
        # A first upload warms the worker child up (its imports take a while on a busy machine), so the reason
        # shows within the short --wait below.
        first = upload(api, Image.new("RGB", (96, 64), (250, 250, 20))).json()["id"]
        deadline = time.monotonic() + 180
        while api.get(f"/v1/photos/{first}").json()["error"] is None:
            assert time.monotonic() < deadline, no_model.log()
            time.sleep(0.3)
        waited = CliRunner().invoke(app, ["ingest", str(folder), "--wait", "--timeout", "20"])
    finally:
        no_model.stop()
    assert waited.exit_code == 1, waited.output
    assert "4 queued, 0 already known, 0 rejected" in waited.output
    missing = tmp_path / "no-such-model"
    reason = f"indexing attempt failed: ModelUnavailableError: Could not load the model folder '{missing}'"
    assert re.search(rf"\b4 pending: {re.escape(reason)}", waited.output), waited.output  # said while waiting
    assert "gave up waiting: 4 photos not indexed yet" in waited.output
    assert "withsense redrive --pending" in waited.output

    report = status_report()
    assert report.counts == {"pending": 5} and [(g.status, g.count) for g in report.reasons] == [("pending", 5)]
    status = CliRunner().invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    assert "photos: 5 pending, 0 processing, 0 indexed, 0 failed" in status.output
    assert f"  5 pending: {reason}" in status.output

    worker = WorkerProcess(services.home)  # the tiny model: the cause is fixed
    worker.start()
    try:
        redriven = CliRunner().invoke(app, ["redrive", "--pending"])
        assert redriven.exit_code == 0, redriven.output
        assert "5 pending photos queued again" in redriven.output
        deadline = time.monotonic() + 180
        while status_report().counts.get("pending", 0) + status_report().counts.get("processing", 0):
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.3)
    finally:
        worker.stop()
    final = status_report()
    assert final.counts == {"indexed": 4, "failed": 1}, final
    [failed] = final.reasons
    assert failed.status == "failed" and failed.count == 1 and "indexing attempt failed" not in failed.reason
    status = CliRunner().invoke(app, ["status"])
    assert "photos: 0 pending, 0 processing, 4 indexed, 1 failed" in status.output
    assert f"  1 failed: {failed.reason.splitlines()[0][:80]}" in status.output
    with session_scope() as session:
        rows = session.execute(sql("SELECT photo_id, count(*) FROM photo_embeddings GROUP BY photo_id")).all()
    assert len(rows) == 4 and {count for _photo, count in rows} == {1}


def test_redrive_pending_leaves_other_photos_alone(api: TestClient, services: Services, own_broker: LocalRedis) -> None:
    """--pending queues the pending photos it is given (or all), nothing indexed or failed, and keeps attempts."""
    import redis
    from sqlalchemy import text as sql

    from db.engine import session_scope

    ids = [upload(api, Image.new("RGB", (64, 48), (i * 40, 10, 10))).json()["id"] for i in range(3)]
    with session_scope() as session:
        session.execute(sql("UPDATE photos SET status = 'failed', error = 'x' WHERE id = :id"), {"id": ids[2]})
        session.execute(sql("UPDATE photos SET attempts = 2 WHERE id = :id"), {"id": ids[0]})
    queue = redis.Redis.from_url(own_broker.url)
    queue.delete("photos")

    one = CliRunner().invoke(app, ["redrive", "--pending", ids[0], ids[2]])
    assert one.exit_code == 0 and "1 pending photos queued again" in one.output, one.output
    assert queue.llen("photos") == 1
    every = CliRunner().invoke(app, ["redrive", "--pending"])
    assert "2 pending photos queued again" in every.output, every.output
    assert queue.llen("photos") == 2
    bodies = {i: api.get(f"/v1/photos/{i}").json() for i in ids}
    assert [bodies[i]["status"] for i in ids] == ["pending", "pending", "failed"]
    assert bodies[ids[0]]["attempts"] == 2  # kept: a photo that keeps crashing the worker still fails in the end


def test_search_shows_titles_or_file_names_and_no_progress_bars(
    api: TestClient, services: Services, own_broker: LocalRedis, tmp_path: Path
) -> None:
    """What a user reads: the title or the file name a photo was ingested as, never a derivative's path, and
    no model-loading progress bars."""
    from tests.conftest import WorkerProcess, sample_of, wait_for_status

    folder = tmp_path / "holiday"
    folder.mkdir()
    circle = sample_of("red", "circle", seed=7)
    (folder / "IMG_0042 red ball.jpg").write_bytes(jpeg_bytes(circle.image))
    titled = upload(api, sample_of("red", "circle", seed=8).image, title="Sunset ball").json()["id"]
    worker = WorkerProcess(services.home)
    worker.start()
    try:
        ingested = CliRunner().invoke(app, ["ingest", str(folder), "--wait", "--timeout", "120"])
        assert ingested.exit_code == 0, ingested.output
        wait_for_status(api, [titled])
    finally:
        worker.stop()
    env = {k: v for k, v in os.environ.items()} | {"PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    result = _run_cli(["search", "a red circle", "-k", "5"], env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(lines) == 2, result.stdout
    assert any(line.endswith("  IMG_0042 red ball.jpg") for line in lines), result.stdout
    assert any(line.endswith("  Sunset ball") for line in lines), result.stdout
    assert "derivatives" not in result.stdout
    assert "Loading weights" not in result.stderr and "it/s]" not in result.stderr, result.stderr
