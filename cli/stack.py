"""`withsense up`: the whole local stack in the foreground, supervised, stopped cleanly on Ctrl-C or SIGTERM.

Supervision is the stack's own loop rather than a supervisor library, because none of the candidates gives
all of what the stack needs:
- supervisord restarts a process that dies after its `startsecs` at once, with no backoff and no crash-loop
  cut-off (its backoff and FATAL state apply only to a process that dies while starting), and stopping the
  rest of the stack on a FATAL needs an event-listener process; it is also a daemon of its own with a config
  file and an XML-RPC socket to stop it, one more thing that can be left running after Ctrl-C;
- circus has a flapping plugin but no backoff per restart, and needs ZeroMQ (pyzmq) and its own daemon;
- honcho stops everything when one process exits: it is the behaviour this replaces.
None of them knows that Postgres must answer before the migrations run, that a worker killed with its tasks
must have them re-enqueued, or how to run Postgres crash recovery; the loop below is about 150 lines.

What it does: every program (Postgres, Redis, worker, beat, API, Flower) runs in a session of its own; when
one exits unasked, its leftovers (e.g. a dead worker's pool children) are killed, a line says so, and it is
started again after 1, 2, 4, 8, 16 s. A run that lasted a minute resets the count; the sixth exit in a row
of runs shorter than a minute stops the whole stack with an error and exit code 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cli.local_services import LocalPostgres, LocalRedis, read_or_create_secret
from core.settings import Settings

Echo = Callable[[str], object]

FLOWER_USER = "admin"
READER_LOGIN = "reader"  # the local stack's login in the migrations' group role withsense_reader
READER_GROUP = "withsense_reader"


class CrashLoop(RuntimeError):
    """A supervised program keeps exiting: the stack stops rather than restart it for ever."""


@dataclass(frozen=True)
class RestartPolicy:
    """Restart with exponential backoff; give up after `max_restarts` short runs in a row."""

    max_restarts: int = 5
    stable_after_s: float = 60.0  # a run this long resets the count: the process was not crash-looping
    first_delay_s: float = 1.0
    max_delay_s: float = 16.0

    def delay(self, restart: int) -> float:
        return float(min(self.first_delay_s * 2.0 ** (restart - 1), self.max_delay_s))


class Program(ABC):
    """One thing the stack runs and restarts."""

    name: str

    @abstractmethod
    def launch(self) -> None:
        """Start it; return once it runs (servers: once they accept connections). Raise if it cannot start."""

    @abstractmethod
    def exit_code(self) -> int | None:
        """None while it runs; its exit code (negative: killed by that signal) once it has exited."""

    @abstractmethod
    def kill_leftovers(self) -> None:
        """After an exit nobody asked for: kill what it left behind, so the restart starts clean."""

    @abstractmethod
    def terminate(self, echo: Echo) -> None:
        """Stop it cleanly (and anything it started), killing it if it does not stop in time."""


class ChildProgram(Program):
    """A Python process (Celery worker or beat, uvicorn, Flower) in a process group of its own.

    Its own group means Ctrl-C reaches only `withsense up`, which stops the children in order, and that a
    worker's pool children, orphaned when their parent is killed, can be killed with it.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], stop_timeout: float = 30.0) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env, start_new_session=True)

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def _kill_group(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left, or not ours
                os.killpg(self.process.pid, signal.SIGKILL)

    def kill_leftovers(self) -> None:
        self._kill_group()

    def terminate(self, echo: Echo) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            echo(f"stopping {self.name} ...")
            self.process.send_signal(signal.SIGTERM)  # Celery: warm shutdown; uvicorn: graceful
            try:
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                echo(f"{self.name} did not stop in {self.stop_timeout:.0f} s; killing it")
                self.process.kill()
                self.process.wait()
        self._kill_group()  # whatever it started and did not stop


class ServerProgram(Program):
    """Postgres or Redis started by the stack (cli.local_services), restarted the same way as the children."""

    def __init__(self, name: str, server: LocalPostgres | LocalRedis) -> None:
        self.name = name
        self.server = server

    def launch(self) -> None:
        self.server.start()

    def exit_code(self) -> int | None:
        process = self.server.process
        return None if process is None else process.poll()

    def kill_leftovers(self) -> None:
        self.server.kill()  # Postgres: also waits for the dead postmaster's pid file, so recovery can run

    def terminate(self, echo: Echo) -> None:
        echo(f"stopping {self.name} ...")
        self.server.stop()


@dataclass
class _Watch:
    program: Program
    started_at: float = 0.0
    restarts: int = 0  # restarts in a row of runs shorter than the policy's stable_after_s
    restart_at: float | None = None  # set while it waits out its backoff


@dataclass
class Supervisor:
    """Starts programs in order, restarts those that exit, stops them in reverse order."""

    echo: Echo
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    on_restarted: Callable[[Program], None] | None = None
    watches: list[_Watch] = field(default_factory=list)

    def start(self, program: Program) -> None:
        """Start a program and supervise it from now on (a failure to start raises: the stack is starting)."""
        watch = _Watch(program)
        self.watches.append(watch)
        program.launch()
        watch.started_at = time.monotonic()

    def check(self) -> None:
        """Restart what has exited and is due; raise CrashLoop for a program that keeps exiting."""
        now = time.monotonic()
        for watch in self.watches:
            if watch.restart_at is not None:
                if now >= watch.restart_at:
                    self._relaunch(watch)
                continue
            code = watch.program.exit_code()
            if code is not None:
                self._exited(watch, f"exited with code {code}")

    def _exited(self, watch: _Watch, what: str) -> None:
        program, policy = watch.program, self.policy
        program.kill_leftovers()
        if time.monotonic() - watch.started_at >= policy.stable_after_s:
            watch.restarts = 0
        if watch.restarts >= policy.max_restarts:
            raise CrashLoop(
                f"{program.name} keeps crashing: it {what} after {policy.max_restarts} restarts, each run shorter "
                f"than {policy.stable_after_s:.0f} s"
            )
        watch.restarts += 1
        delay = policy.delay(watch.restarts)
        self.echo(
            f"{program.name} {what}; restarting in {delay:.0f}s (restart {watch.restarts} of {policy.max_restarts} "
            "per minute)"
        )
        watch.restart_at = time.monotonic() + delay

    def _relaunch(self, watch: _Watch) -> None:
        watch.restart_at = None
        watch.started_at = time.monotonic()
        try:
            watch.program.launch()
        except Exception as exc:  # noqa: BLE001 - a failed start counts as one more crash, with its reason
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self._exited(watch, f"did not start ({reason})")
            return
        self.echo(f"{watch.program.name} restarted")
        if self.on_restarted is not None:
            self.on_restarted(watch.program)

    def stop(self, echo: Echo, between: Callable[[], None] | None = None) -> None:
        """Stop the children in reverse order, call `between`, then the servers (Redis, then Postgres)."""
        children = [w.program for w in self.watches if isinstance(w.program, ChildProgram)]
        servers = [w.program for w in self.watches if isinstance(w.program, ServerProgram)]
        for program in reversed(children):
            program.terminate(echo)
        if between is not None:
            between()
        for server in reversed(servers):
            try:
                server.terminate(echo)
            except Exception as exc:  # noqa: BLE001 - reported; the other server must still be stopped
                echo(f"error: {server.name} did not stop cleanly: {exc}")
        self.watches.clear()


@dataclass
class LocalStack:
    settings: Settings
    worker_concurrency: int = 1
    with_flower: bool = True
    with_beat: bool = True
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    postgres: LocalPostgres | None = None
    redis: LocalRedis | None = None
    env: dict[str, str] = field(default_factory=dict)
    admin_key: str | None = None
    flower_password: str | None = None
    reader_url: str | None = None
    supervisor: Supervisor | None = None
    _oneshots: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, echo: Echo = print) -> None:
        home = self.settings.home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(echo, self.policy, on_restarted=self._after_restart)
        env = dict(os.environ)
        env["WITHSENSE_HOME"] = str(home)
        env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a log, not a terminal: no model-loading bars
        database_url = self.settings.database_url
        if not database_url:
            self.postgres = LocalPostgres(home / "pg", port=self.settings.local_postgres_port)
            echo(f"starting Postgres (embedded, pgvector, scram-sha-256 passwords) in {self.postgres.data_dir} ...")
            self.supervisor.start(ServerProgram("Postgres", self.postgres))
            database_url = self.postgres.url
        broker_url = self.settings.broker_url
        if not broker_url:
            self.redis = LocalRedis(home / "redis", port=self.settings.local_redis_port)
            echo(f"starting Redis-compatible Valkey in {self.redis.data_dir} ...")
            self.supervisor.start(ServerProgram("Redis", self.redis))
            broker_url = self.redis.url
        env["WITHSENSE_DATABASE_URL"] = database_url
        env["WITHSENSE_BROKER_URL"] = broker_url
        self.env = env

        echo("applying migrations ...")
        subprocess.run([sys.executable, "-m", "cli.main", "migrate"], env=env, check=True)
        if self.postgres is not None:
            # The SQL surface for other services, with a password of its own (psql, BI tools).
            reader_password = read_or_create_secret(home / "pg-reader.password")
            self.postgres.ensure_login_role(READER_LOGIN, reader_password, member_of=READER_GROUP)
            self.reader_url = self.postgres.url_for(READER_LOGIN, reader_password, driver="postgresql")
        write_env_file(home, env, reader_url=self.reader_url)
        self.admin_key = self._first_admin_key(home, env)

        python = sys.executable
        celery = [python, "-m", "celery", "-A", "workers.celery_app"]
        worker_argv = [*celery, "worker", "-Q", "photos,maintenance", "-c", str(self.worker_concurrency)]
        self.supervisor.start(ChildProgram("worker", [*worker_argv, "--loglevel", "INFO", "-n", "worker@%h"], env))
        if self.with_beat:
            schedule = str(home / "celerybeat-schedule")
            self.supervisor.start(ChildProgram("beat", [*celery, "beat", "--loglevel", "INFO", "-s", schedule], env))
        api_argv = [python, "-m", "uvicorn", "api.app:app", "--host", self.settings.api_host]
        api_argv += ["--port", str(self.settings.api_port), "--no-access-log"]
        self.supervisor.start(ChildProgram("api", api_argv, env))
        if self.with_flower:
            self.flower_password = read_or_create_secret(home / "flower.password")
            # Through the environment, not argv: other local users can read a process's argv, not its environ.
            flower_env = dict(env, FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{self.flower_password}")
            address = [f"--address={self.settings.api_host}", f"--port={self.settings.flower_port}"]
            self.supervisor.start(ChildProgram("flower", [*celery, "flower", *address], flower_env))
        self._wait_for_api()

    def _first_admin_key(self, home: Path, env: dict[str, str]) -> str | None:
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

    def _after_restart(self, program: Program) -> None:
        """A dead worker took its tasks with it (Redis redelivers them only after the visibility timeout, an
        hour), and a dead Redis may have lost the last second of writes: once it runs again, re-enqueue every
        photo still pending or processing. A photo whose task is still queued gets a second one, which finds it
        indexed and changes nothing (tasks are idempotent)."""
        if program.name not in ("worker", "Redis") or not self.env:
            return
        self._reap_oneshots()
        self.supervisor.echo(f"re-enqueueing the photos whose task {program.name} may have lost ...")  # type: ignore[union-attr]
        self._oneshots.append(
            subprocess.Popen(
                [sys.executable, "-m", "cli.main", "reconcile", "--older-than", "0"],
                env=self.env,
                start_new_session=True,
            )
        )

    def _reap_oneshots(self) -> None:
        self._oneshots = [p for p in self._oneshots if p.poll() is None]

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
        """Restart what has exited (raises CrashLoop for a program that keeps exiting)."""
        if self.supervisor is not None:
            self.supervisor.check()
        self._reap_oneshots()

    def stop(self, echo: Echo = print) -> None:
        for oneshot in self._oneshots:
            if oneshot.poll() is None:
                oneshot.terminate()
                try:
                    oneshot.wait(10)
                except subprocess.TimeoutExpired:
                    oneshot.kill()
                    oneshot.wait()
        self._oneshots.clear()

        def forget_urls() -> None:  # the URLs are about to stop answering: other shells must not find them
            if self.env:
                (Path(self.env["WITHSENSE_HOME"]) / "stack.env").unlink(missing_ok=True)

        if self.supervisor is not None:
            self.supervisor.stop(echo, between=forget_urls)
        else:
            forget_urls()

    def run_forever(self, echo: Echo = print) -> int:
        stop = threading.Event()

        def _handle(signum: int, _frame: object) -> None:
            stop.set()

        signal.signal(signal.SIGINT, _handle)
        signal.signal(signal.SIGTERM, _handle)
        # The children run in sessions of their own: a closed terminal's SIGHUP reaches only this process,
        # which must then stop them rather than die and leave them running.
        signal.signal(signal.SIGHUP, _handle)
        code = 0
        try:
            while not stop.wait(0.5):
                try:
                    self.check_children()
                except CrashLoop as exc:
                    echo(f"error: {exc}; stopping the stack")
                    code = 1
                    break
        finally:
            for signum in (
                signal.SIGINT,
                signal.SIGTERM,
                signal.SIGHUP,
            ):  # a second one must not cut the clean-up short
                signal.signal(signum, signal.SIG_IGN)
            self.stop(echo)
        return code


def write_env_file(home: Path, env: dict[str, str], reader_url: str | None = None) -> Path:
    """Record the URLs of the running stack (passwords included, so mode 0600) for other shells and psql."""
    path = home / "stack.env"
    values = {key: env[key] for key in ("WITHSENSE_HOME", "WITHSENSE_DATABASE_URL", "WITHSENSE_BROKER_URL")}
    if reader_url:
        values["WITHSENSE_READER_DATABASE_URL"] = reader_url  # libpq form, for psql as the reader role
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(f"export {key}={value}\n" for key, value in values.items()))
    os.chmod(path, 0o600)
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
