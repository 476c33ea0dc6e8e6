"""`withsense up`: the whole local stack in the foreground, stopped cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cli.local_services import LocalPostgres, LocalRedis
from core.settings import Settings


@dataclass
class LocalStack:
    settings: Settings
    worker_concurrency: int = 1
    with_flower: bool = True
    with_beat: bool = True
    postgres: LocalPostgres | None = None
    redis: LocalRedis | None = None
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    admin_key: str | None = None

    def start(self, echo=print) -> None:  # type: ignore[no-untyped-def]
        home = self.settings.home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["WITHSENSE_HOME"] = str(home)
        database_url = self.settings.database_url
        if not database_url:
            self.postgres = LocalPostgres(home / "pg", port=self.settings.local_postgres_port)
            echo(f"starting Postgres (embedded, pgvector) in {self.postgres.data_dir} ...")
            self.postgres.start()
            database_url = self.postgres.url
        broker_url = self.settings.broker_url
        if not broker_url:
            self.redis = LocalRedis(home / "redis", port=self.settings.local_redis_port)
            echo(f"starting Redis-compatible Valkey in {self.redis.data_dir} ...")
            self.redis.start()
            broker_url = self.redis.url
        env["WITHSENSE_DATABASE_URL"] = database_url
        env["WITHSENSE_BROKER_URL"] = broker_url
        self.env = env
        write_env_file(home, env)

        echo("applying migrations ...")
        subprocess.run([sys.executable, "-m", "cli.main", "migrate"], env=env, check=True)
        self.admin_key = self._first_admin_key(home, env, echo)

        python = sys.executable
        self._spawn(
            "worker",
            [
                python,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                "-Q",
                "photos,maintenance",
                "-c",
                str(self.worker_concurrency),
                "--loglevel",
                "INFO",
                "-n",
                "worker@%h",
            ],
        )
        if self.with_beat:
            self._spawn(
                "beat",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "workers.celery_app",
                    "beat",
                    "--loglevel",
                    "INFO",
                    "-s",
                    str(home / "celerybeat-schedule"),
                ],
            )
        self._spawn(
            "api",
            [
                python,
                "-m",
                "uvicorn",
                "api.app:app",
                "--host",
                self.settings.api_host,
                "--port",
                str(self.settings.api_port),
                "--no-access-log",
            ],
        )
        if self.with_flower:
            self._spawn(
                "flower",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "workers.celery_app",
                    "flower",
                    f"--address={self.settings.api_host}",
                    f"--port={self.settings.flower_port}",
                ],
            )
        self._wait_for_api()

    def _first_admin_key(self, home: Path, env: dict[str, str], echo) -> str | None:  # type: ignore[no-untyped-def]
        """On first start, an admin key so a newcomer can use the API at once (kept in var/admin.key, mode 0600)."""
        key_file = home / "admin.key"
        if key_file.exists():
            return key_file.read_text().strip()
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", "keys", "create", "--scope", "admin", "--name", "local-admin"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        secret = result.stdout.strip().splitlines()[-1]
        key_file.touch(mode=0o600)
        key_file.write_text(secret + "\n")
        return secret

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.children.append((name, subprocess.Popen(argv, env=self.env)))

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def _wait_for_api(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_children()
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the API did not answer on {self.api_url} within {timeout:.0f}s")

    def check_children(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}")

    def stop(self, echo=print) -> None:  # type: ignore[no-untyped-def]
        for name, process in reversed(self.children):
            if process.poll() is None:
                echo(f"stopping {name} ...")
                process.send_signal(signal.SIGTERM)
        for name, process in reversed(self.children):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                echo(f"{name} did not stop in 30 s; killing it")
                process.kill()
                process.wait()
        self.children.clear()
        if self.env:  # the URLs are about to stop answering: other shells must not find them
            (Path(self.env["WITHSENSE_HOME"]) / "stack.env").unlink(missing_ok=True)
        for name, server in (("Redis", self.redis), ("Postgres", self.postgres)):
            if server:
                echo(f"stopping {name} ...")
                try:
                    server.stop()
                except Exception as exc:  # noqa: BLE001 - reported; the other server must still be stopped
                    echo(f"error: {name} did not stop cleanly: {exc}")

    def run_forever(self, echo=print) -> int:  # type: ignore[no-untyped-def]
        stop = threading.Event()

        def _handle(signum: int, _frame: object) -> None:
            stop.set()

        signal.signal(signal.SIGINT, _handle)
        signal.signal(signal.SIGTERM, _handle)
        code = 0
        try:
            while not stop.wait(1.0):
                try:
                    self.check_children()
                except RuntimeError as exc:
                    echo(f"error: {exc}; stopping the stack")
                    code = 1
                    break
        finally:
            self.stop(echo)
        return code


def write_env_file(home: Path, env: dict[str, str]) -> Path:
    """Record the URLs of the running stack so other shells (`withsense ingest`, psql) can use it."""
    path = home / "stack.env"
    lines = [f"export {key}={env[key]}" for key in ("WITHSENSE_HOME", "WITHSENSE_DATABASE_URL", "WITHSENSE_BROKER_URL")]
    path.write_text("\n".join(lines) + "\n")
    return path


def load_env_file(home: Path) -> bool:
    """Put the running stack's URLs (from `write_env_file`) into this process's environment, where unset."""
    path = home / "stack.env"
    if not path.exists():
        return False
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        if key and not os.environ.get(key):
            os.environ[key] = value
    return True
