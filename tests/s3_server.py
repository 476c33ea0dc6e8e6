"""An S3-compatible server on loopback for the storage tests: moto's server mode, as a child process.

No real S3 server (MinIO, Garage, SeaweedFS, Ceph RGW without a cluster) installs from the package registries that
the build machines reach, so the tests use moto's standalone HTTP server: boto3 talks to it over real HTTP with the
same requests it sends to AWS or MinIO (multipart uploads, ranged downloads, presigned URLs). What moto does not do
is check signatures or the expiry of presigned URLs; real stores do.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCESS_KEY = "withsense-test"
SECRET_KEY = "withsense-test-secret"  # a throwaway credential of a loopback test server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalS3:
    log_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """WITHSENSE_* settings that point a process at `bucket` on this server."""
        return {
            "WITHSENSE_STORAGE": "s3",
            "WITHSENSE_S3_BUCKET": bucket,
            "WITHSENSE_S3_PREFIX": prefix,
            "WITHSENSE_S3_ENDPOINT_URL": self.endpoint_url,
            "WITHSENSE_S3_REGION": "us-east-1",
            "WITHSENSE_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "WITHSENSE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "WITHSENSE_S3_ADDRESSING_STYLE": "path",
            "WITHSENSE_S3_CREATE_BUCKET": "true",
        }

    def start(self, timeout: float = 30.0) -> None:
        self.port = self.port or _free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / "moto.log", "wb")  # noqa: SIM115 - the child keeps it open
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited: {(self.log_dir / 'moto.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"moto server did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self) -> Any:
        """A boto3 client of this server, for the tests' own look at the bucket."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
