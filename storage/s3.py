"""S3-compatible object storage (AWS S3, MinIO, Ceph RGW, ...) through boto3: one bucket for every API and worker host.

Objects are `<prefix>originals/<storage key>` and `<prefix>derivatives/<xx>/<photo id>.jpg`. Uploads go up as
multipart uploads straight from the spooled file (s3transfer reads it part by part, so memory stays at a few parts
whatever the file's size); workers fetch an original into a temporary file of their own host and decode it from
there. boto3 clients are thread-safe: one per process serves the decode threads and the API's request threads.
"""

from __future__ import annotations

import mimetypes
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.settings import Settings
from core.storage import ObjectRead, PhotoStorage, StorageUnavailable, derivative_key

MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})
STREAM_CHUNK_BYTES = 64 * 1024


def _client(settings: Settings, endpoint_url: str | None) -> Any:
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing_style},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=3,
        read_timeout=30,
        max_pool_connections=max(10, settings.decode_threads * 4),
    )
    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret,
        config=config,
    )


def _error_code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


class S3Storage(PhotoStorage):
    """A bucket (and prefix) of an S3-compatible store."""

    kind = "s3"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.client = _client(settings, settings.s3_endpoint_url)
        # Presigned URLs carry the host they were signed for: sign them for the address clients reach.
        public = settings.s3_public_endpoint_url
        self.public_client = _client(settings, public) if public and public != settings.s3_endpoint_url else None
        self.transfer = TransferConfig(
            multipart_threshold=settings.s3_multipart_chunk_bytes,
            multipart_chunksize=settings.s3_multipart_chunk_bytes,
            max_concurrency=4,
            use_threads=True,
        )

    # Names -----------------------------------------------------------------------------------------------------

    def original_object(self, storage_key: str) -> str:
        if storage_key.startswith("/") or ".." in storage_key.split("/"):
            raise ValueError(f"storage key escapes the originals prefix: {storage_key!r}")
        return f"{self.prefix}originals/{storage_key}"

    def derivative_object(self, photo_id: uuid.UUID) -> str:
        return f"{self.prefix}derivatives/{derivative_key(photo_id)}"

    def _failure(self, exc: Exception, what: str) -> Exception:
        """FileNotFoundError for a missing object, StorageUnavailable for everything else the store answers."""
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            if code in MISSING_CODES and code != "NoSuchBucket":
                return FileNotFoundError(f"s3://{self.bucket}/{what}")
            return StorageUnavailable(f"object storage refused {what}: {code} {exc}")
        return StorageUnavailable(f"object storage unreachable ({type(exc).__name__}): {exc}")

    # Originals -------------------------------------------------------------------------------------------------

    def store_original(self, storage_key: str, spooled: Path) -> None:
        name = self.original_object(storage_key)
        content_type = mimetypes.guess_type(storage_key)[0] or "application/octet-stream"
        try:
            self.client.upload_file(
                str(spooled), self.bucket, name, ExtraArgs={"ContentType": content_type}, Config=self.transfer
            )
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:  # the last: a failed part, wrapped by boto3
            raise self._failure(exc, name) from exc
        spooled.unlink(missing_ok=True)

    @contextmanager
    def original_as_file(self, storage_key: str) -> Iterator[Path]:
        name = self.original_object(storage_key)
        self.settings.spool_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.settings.spool_dir, prefix=".original-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                try:
                    self.client.download_fileobj(self.bucket, name, handle, Config=self.transfer)
                except (BotoCoreError, ClientError) as exc:
                    raise self._failure(exc, name) from exc
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)

    def remove_original(self, storage_key: str) -> str | None:
        return self._delete(self.original_object(storage_key))

    # Derivatives -----------------------------------------------------------------------------------------------

    def store_derivative(self, photo_id: uuid.UUID, jpeg: bytes) -> None:
        name = self.derivative_object(photo_id)
        try:  # a PUT replaces the object whole: readers never see half of it
            self.client.put_object(Bucket=self.bucket, Key=name, Body=jpeg, ContentType="image/jpeg")
        except (BotoCoreError, ClientError) as exc:
            raise self._failure(exc, name) from exc

    def read_derivative(self, photo_id: uuid.UUID) -> bytes:
        name = self.derivative_object(photo_id)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()
        except (BotoCoreError, ClientError) as exc:
            raise self._failure(exc, name) from exc

    def serve_derivative(self, photo_id: uuid.UUID) -> ObjectRead:
        name = self.derivative_object(photo_id)
        try:
            if self.settings.s3_thumbnails == "redirect":
                self.client.head_object(Bucket=self.bucket, Key=name)  # a missing object is our 404, not the store's
                signer = self.public_client or self.client
                url = signer.generate_presigned_url(
                    "get_object",
                    Params={
                        "Bucket": self.bucket,
                        "Key": name,
                        "ResponseContentType": "image/jpeg",
                        "ResponseCacheControl": "private, no-store",
                    },
                    ExpiresIn=self.settings.s3_presign_ttl_s,
                )
                return ObjectRead(redirect_url=str(url))
            response = self.client.get_object(Bucket=self.bucket, Key=name)
        except (BotoCoreError, ClientError) as exc:
            raise self._failure(exc, name) from exc
        body = response["Body"]
        return ObjectRead(
            chunks=body.iter_chunks(STREAM_CHUNK_BYTES), size=int(response.get("ContentLength", 0)), close=body.close
        )

    def remove_derivative(self, photo_id: uuid.UUID) -> str | None:
        return self._delete(self.derivative_object(photo_id))

    # The bucket ------------------------------------------------------------------------------------------------

    def _delete(self, name: str) -> str | None:
        try:  # deleting a missing object succeeds in S3: 'already gone' is not an error
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except (BotoCoreError, ClientError) as exc:
            return f"s3://{self.bucket}/{name}: {exc}"
        return None

    def problem(self) -> str | None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            return f"object storage bucket {self.bucket!r} unusable: {_error_code(exc)}"
        except BotoCoreError as exc:
            return f"object storage unreachable: {type(exc).__name__}: {str(exc)[:200]}"
        return None

    def prepare(self) -> None:
        """Create the bucket when it is missing and WITHSENSE_S3_CREATE_BUCKET allows it."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in MISSING_CODES or not self.settings.s3_create_bucket:
                raise self._failure(exc, self.bucket) from exc
        except BotoCoreError as exc:
            raise self._failure(exc, self.bucket) from exc
        extra: dict[str, object] = {}
        if self.settings.s3_region != "us-east-1":  # S3 refuses an explicit us-east-1 constraint
            extra["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.s3_region}
        try:
            self.client.create_bucket(Bucket=self.bucket, **extra)
        except ClientError as exc:
            if _error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise self._failure(exc, self.bucket) from exc

    def close(self) -> None:
        for client in (self.client, self.public_client):
            if client is not None:
                client.close()
