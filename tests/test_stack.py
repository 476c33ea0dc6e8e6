"""`withsense up` as a user runs it: the whole stack starts, a folder is ingested and searched, Ctrl-C stops it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from cli.local_services import free_port
from tests.conftest import MINOR_COLOUR, UNSAFE_COLOUR
from tests.images import jpeg_bytes

ROOT = Path(__file__).resolve().parents[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stack_env(tiny_clip_path: Path) -> tuple[Path, dict[str, int], dict[str, str]]:
    home = Path(tempfile.mkdtemp(prefix="wsu-", dir="/tmp"))
    ports = {name: free_port() for name in ("api", "flower", "pg", "redis")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("WITHSENSE_")}
    env.update(
        {
            "WITHSENSE_HOME": str(home),
            "WITHSENSE_MODEL": str(tiny_clip_path),
            "WITHSENSE_DEVICE": "cpu",
            "WITHSENSE_API_PORT": str(ports["api"]),
            "WITHSENSE_FLOWER_PORT": str(ports["flower"]),
            "WITHSENSE_LOCAL_POSTGRES_PORT": str(ports["pg"]),
            "WITHSENSE_LOCAL_REDIS_PORT": str(ports["redis"]),
            "WITHSENSE_MODERATION_PROMPTS": str(ROOT / "tests" / "moderation_prompts.yaml"),
            "PYTHONPATH": str(ROOT),
        }
    )
    return home, ports, env


def _processes_of(home: Path) -> list[str]:
    """Processes still running for this stack (Postgres, Valkey, Celery, uvicorn, Flower)."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if str(home) in " ".join(process.info["cmdline"] or []) or process.environ().get("WITHSENSE_HOME") == str(
                home
            ):
                found.append(f"{process.info['pid']}: {' '.join(process.info['cmdline'] or [])[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("when", ["while starting", "when ready"])
def test_sigterm_stops_the_whole_stack(tiny_clip_path: Path, when: str) -> None:
    home, ports, env = _stack_env(tiny_clip_path)
    log_path = home / "up.log"
    with open(log_path, "wb") as log:
        stack = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", "--no-flower"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    marker = b"applying migrations" if when == "while starting" else b"Ready."
    try:
        deadline = time.monotonic() + 180
        while marker not in log_path.read_bytes():
            assert stack.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        stack.send_signal(signal.SIGTERM)
        code = stack.wait(90)
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
    text = log_path.read_text()
    assert code == (143 if when == "while starting" else 0), text[-3000:]  # 128 + SIGTERM, as shells report it
    assert "stopping Postgres" in text and "stopping Redis" in text, text[-3000:]
    assert _processes_of(home) == [], text[-3000:]
    for name, port in ports.items():
        assert not _port_open(port), f"{name} still listening after SIGTERM"
    assert not (home / "stack.env").exists()


@pytest.mark.slow
def test_up_ingest_search_and_clean_stop(tiny_clip_path: Path) -> None:
    from evaluation.standins.synthetic import generate

    home, ports, env = _stack_env(tiny_clip_path)
    env["WITHSENSE_RECONCILE_EVERY_S"] = "2"  # beat sends the reconciler often enough to be seen doing it
    log_path = home / "up.log"
    with open(log_path, "wb") as log:
        stack = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while b"Ready." not in log_path.read_bytes():
            assert stack.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        api = f"http://127.0.0.1:{ports['api']}"
        assert httpx.get(f"{api}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{api}/readyz").status_code == 200
        admin_key = (home / "admin.key").read_text().strip()
        assert admin_key in log_path.read_text()  # printed once for the newcomer
        flower_deadline = time.monotonic() + 60
        while not _port_open(ports["flower"]):
            assert time.monotonic() < flower_deadline, "Flower did not start"
            time.sleep(0.5)

        # A folder of JPEGs, ingested twice with the CLI (the second run adds nothing), then searched.
        folder = home / "catalogue"
        folder.mkdir()
        samples = [s for s in generate(40, 31, templates="heldout") if s.colour not in (MINOR_COLOUR, UNSAFE_COLOUR)][
            :12
        ]
        for i, sample in enumerate(samples):
            (folder / f"{i:02d}-{sample.colour}-{sample.shape}.jpg").write_bytes(
                jpeg_bytes(sample.image.resize((800, 600)))
            )
        first = subprocess.run(
            [sys.executable, "-m", "cli.main", "ingest", str(folder), "--wait", "--timeout", "180"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,  # what it printed (and its exit status) is asserted below
            timeout=240,
        )
        assert first.returncode == 0, first.stderr
        assert f"{len(samples)} queued, 0 already known" in first.stdout
        second = subprocess.run(
            [sys.executable, "-m", "cli.main", "ingest", str(folder)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,  # what it printed (and its exit status) is asserted below
            timeout=120,
        )
        assert f"0 queued, {len(samples)} already known" in second.stdout

        target = samples[0]
        found = subprocess.run(
            [sys.executable, "-m", "cli.main", "search", f"a {target.colour} {target.shape}", "-k", "5"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,  # what it printed (and its exit status) is asserted below
            timeout=120,
        )
        assert found.returncode == 0, found.stderr
        lines = [line for line in found.stdout.splitlines() if line.strip()[:1].isdigit()]
        assert len(lines) == 5
        admin = {"Authorization": f"Bearer {admin_key}"}
        body = httpx.get(
            f"{api}/v1/search", params={"q": f"a {target.colour} {target.shape}", "k": 12}, headers=admin
        ).json()
        # Every photo the moderation classifier let through is found (the tiny model's stand-in classifier
        # may mistake a bright orange shape for its yellow "child" stand-in: such a photo is rightly hidden).
        catalogue = httpx.get(f"{api}/v1/photos", params={"all_uploaders": "true", "limit": 100}, headers=admin).json()
        assert len(catalogue["items"]) == len(samples) and {p["status"] for p in catalogue["items"]} == {"indexed"}
        allowed = {
            p["id"] for p in catalogue["items"] if p["moderation_status"] == "approved" and not p["depicts_minor"]
        }
        assert len(allowed) >= len(samples) - 2, catalogue
        assert {r["id"] for r in body["results"]} == allowed
        names = [
            httpx.get(f"{api}/v1/photos/{r['id']}", headers={"Authorization": f"Bearer {admin_key}"}).json()[
                "original_name"
            ]
            for r in body["results"][:3]
        ]
        assert any(f"-{target.colour}-{target.shape}" in name for name in names), names
    finally:
        stack.send_signal(signal.SIGINT)
        try:
            code = stack.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            raise
    assert code == 0, log_path.read_text()[-3000:]
    for name, port in ports.items():
        assert not _port_open(port), f"{name} still listening after Ctrl-C"
    text = log_path.read_text()
    assert "stopping Postgres" in text and "stopping Redis" in text
    # Celery beat, started by `withsense up`, sent the reconciler and the worker ran it.
    assert "Sending due task reconcile-stale-photos (maintenance.reconcile)" in text
    assert re.search(r"Task maintenance\.reconcile\[[0-9a-f-]+\] succeeded in [0-9.]+s: \{'requeued': 0\}", text), text[
        -3000:
    ]
    assert not (home / "stack.env").exists(), "a stopped stack must not leave its URLs for other shells"
