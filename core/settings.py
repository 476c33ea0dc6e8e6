"""One settings class for every process (API, workers, CLI), read from WITHSENSE_* variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.runtime import runtime


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WITHSENSE_", env_file=".env", extra="ignore")

    # Where the data lives. Unset URLs mean "the local stack started by `withsense up`".
    home: Path = Path("./var")
    database_url: str | None = None
    broker_url: str | None = None
    # Streaming standbys of that database (comma-separated URLs). Text, image, similar and vector search read
    # from a healthy one in turn; everything else, and searches right after a key's own write, read the primary.
    database_replica_urls: Annotated[tuple[str, ...], NoDecode] = ()
    # A replica whose replay is further behind than this is skipped (the primary serves when none is left).
    replica_max_lag_s: float = Field(default=5.0, ge=0, le=3600)
    # How often a process measures each replica's lag, and how long it leaves alone one that failed.
    replica_check_every_s: float = Field(default=1.0, ge=0.05, le=300)
    replica_retry_after_s: float = Field(default=5.0, ge=0.1, le=3600)

    # Where originals and 224x224 derivatives live: "local" (under WITHSENSE_HOME) or "s3" (any S3-compatible
    # object store: AWS S3, MinIO, Ceph RGW, ...), which every API and worker host shares.
    storage: Literal["local", "s3"] = "local"
    s3_bucket: str = ""
    s3_prefix: str = ""  # objects are <prefix>originals/... and <prefix>derivatives/...
    s3_endpoint_url: str | None = None  # unset: AWS S3 of s3_region
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None  # unset: boto3's own chain (environment, instance profile, ...)
    s3_secret_access_key: SecretStr | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"  # "path" for MinIO behind one host name
    # Uploads go up in parts of this size from the spooled file (S3's minimum part is 5 MiB).
    s3_multipart_chunk_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024, le=5 * 1024**3)
    # Thumbnails: "proxy" streams the object through the API; "redirect" answers 307 to a presigned URL that
    # is valid for s3_presign_ttl_s seconds, signed for s3_public_endpoint_url (the address clients reach).
    s3_thumbnails: Literal["proxy", "redirect"] = "proxy"
    s3_presign_ttl_s: int = Field(default=60, ge=1, le=3600)
    s3_public_endpoint_url: str | None = None
    # `withsense migrate` creates the bucket when it is missing (MinIO in docker-compose; off for managed S3).
    s3_create_bucket: bool = False

    # The embedding model: a sentence-transformers name on the Hugging Face hub or a local folder.
    model: str = "clip-ViT-B-32"
    model_revision: str | None = None
    text_model: str | None = None
    # The start-up check of a separate text model: the probe captions' vectors from it and from the image model's
    # own text tower must be this much closer to each other than to other probes' (core/text_alignment.py).
    text_model_min_margin: float = Field(default=0.2, ge=-2.0, le=2.0)
    model_cache_dir: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    image_batch_size: int = Field(default=32, ge=1, le=1024)
    text_batch_size: int = Field(default=64, ge=1, le=4096)
    # The image encoder on CPU: "torch" (fp32), or the vision tower exported to ONNX Runtime, "onnx" (fp32,
    # fused graph) or "onnx-int8" (dynamically quantised, about 2x torch; BENCHMARKS.md). Needs the `onnx`
    # extra. The export is checked against torch (cosine >= 0.99) when loaded. GPUs always use torch fp16.
    image_encoder: Literal["torch", "onnx", "onnx-int8"] = "torch"
    # The text encoder of queries on CPU: "torch", or the tower that embeds them (the image model's own, or
    # WITHSENSE_TEXT_MODEL) exported to ONNX Runtime, "onnx" (fp32) or "onnx-int8". Checked against torch on
    # probe texts (cosine >= 0.99) when loaded; an export that fails (or a GPU) falls back to torch, with the reason
    # in the log. Moderation prompts are always embedded by torch (their thresholds were calibrated there).
    text_encoder: Literal["torch", "onnx", "onnx-int8"] = "torch"
    # A model that cannot be loaded is tried again in the background (API) or by one delayed task (worker),
    # after 2 s, then twice as long each time up to this many seconds; nobody waits on a hub meanwhile.
    model_retry_max_s: float = Field(default=300.0, ge=0.1, le=86400)
    onnx_cache_dir: Path | None = None  # default: WITHSENSE_HOME/onnx

    # Upload limits: checked while streaming, before anything is stored.
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=100_000_000, ge=1)
    allowed_formats: Annotated[tuple[str, ...], NoDecode] = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")
    derivative_size: int = 224
    derivative_quality: int = Field(default=90, ge=1, le=100)

    # photo_embeddings as this many hash partitions of photo id, each with its own HNSW index (1: one table, the
    # layout before migration 0010). Applied by migration 0010 when it runs and by `withsense embeddings
    # partition`; the searches are one query whatever the number (SCALING.md: the figures, the way on to Citus).
    embedding_partitions: int = Field(default=1, ge=1, le=256)
    # The HNSW index of each model's vectors (migration 0011): "halfvec" (1.3 KB a vector) or "binary"
    # (binary_quantize(...)::bit(D), 0.35 KB a vector, its candidates re-ranked on the halfvec vectors; SCALING.md
    # section 2 has the figures that chose the default). New models get it; `withsense embeddings index` (and
    # migration 0011) switch existing ones: the new index is built first, searches switched, the old one dropped.
    # The kind in force is recorded per model in the database, which every search function reads.
    vector_index: Literal["halfvec", "binary"] = "halfvec"
    # Candidates by Hamming distance re-ranked on the exact cosine with the binary index (at least k; a search
    # page's semantic list re-ranks in blocks of this many). SQL callers that set nothing get 200.
    binary_rerank: int = Field(default=200, ge=1, le=1000)

    # Search. ef_search of the HNSW scan (raised to k when k is larger); SQL callers that set nothing get 200.
    hnsw_ef_search: int = Field(default=200, ge=1, le=1000)
    # The query-embedding cache in Redis (WITHSENSE_QUERY_CACHE_URL, default the broker): text searches skip the
    # text tower for a query seen within the TTL. At most query_cache_max_entries (about 2.2 KB each for a
    # 512-d model), least recently used dropped first. A TTL of 0 turns the cache off.
    query_cache_ttl_s: int = Field(default=86400, ge=0, le=30 * 86400)
    query_cache_max_entries: int = Field(default=20_000, ge=1, le=10_000_000)
    query_cache_url: str | None = None
    # Search pages: the key that signs cursors (shared by every API process that serves the same clients); unset:
    # a key kept in WITHSENSE_HOME/search-cursor.key, made on first use.
    search_cursor_secret: SecretStr | None = None
    # Filtered search computes exact distances when the filters leave fewer photos than this (cheaper than an
    # HNSW scan that skips most of what it visits, and always complete); more: the HNSW scan. Unset: about
    # sqrt(depth x catalogue size), chosen per query by search_photos_filtered (BENCHMARKS.md).
    search_exact_below: int | None = Field(default=None, ge=0, le=100_000_000)

    # Metadata read from the file at ingest. GPS positions are personal data: not kept unless asked for, and then
    # rounded to two decimals of a degree (about a kilometre).
    store_gps: bool = False

    # How long an API or worker trusts its last answer to "which model is active" (changed only by an operator's
    # `withsense models activate`): a switch reaches every process within this many seconds.
    active_model_ttl_s: float = Field(default=5.0, ge=0, le=3600)

    # The content policy: the query policy's rules and the zero-shot moderation prompts (default: core/*.yaml).
    policy_file: Path | None = None
    moderation_prompts: Path | None = None

    # The model's second opinion on text queries: the query's embedding scored against the zero-shot child
    # prompts that screen images. It may block a query the rules allow, never the reverse. Off by default;
    # choose the threshold for the deployed model with `python -m evaluation.policy_check --model NAME`.
    policy_model_check: bool = False
    policy_model_threshold: float = Field(default=0.9, ge=0.0, le=1.0)

    # Worker and queue.
    worker_concurrency: int = Field(default=1, ge=1)
    decode_threads: int = Field(default=2, ge=1, le=64)
    # Photos per batch task (`withsense ingest`, the reconciler): several model batches, so that decoding the
    # next one overlaps the forward pass of this one.
    ingest_batch_size: int = Field(default=128, ge=1, le=4096)
    task_max_attempts: int = Field(default=5, ge=1)
    task_time_limit_s: int = Field(default=600, ge=10)
    broker_visibility_timeout_s: int = Field(default=3600, ge=60)
    reconcile_every_s: int = Field(default=60, ge=1)
    reconcile_after_s: int = Field(default=900, ge=1)

    # Access. Scopes granted to requests without a key (e.g. "search" for a public search API).
    anonymous_scopes: Annotated[tuple[str, ...], NoDecode] = ()
    # Per-key limits, in the `limits` notation ("N/second", "N/minute"); counted in Redis.
    rate_limit_search: str = "50/second"
    rate_limit_upload: str = "20/second"
    # Signs the web pages' sign-in cookie and CSRF tokens. Empty: a random secret generated once and kept in
    # WITHSENSE_HOME/session.secret (every API process sharing that folder uses it). Changing it signs everyone out.
    session_secret: str = ""
    # How long a sign-in on the web pages lasts.
    session_max_age_s: int = Field(default=30 * 24 * 3600, ge=60)

    # HTTP.
    # Torch threads in an API process. Requests embed their query text in parallel threads; one torch thread
    # each beats every request fighting over all cores (BENCHMARKS.md: ~15% more searches/s, lower tails).
    api_torch_threads: int = Field(default=1, ge=1, le=256)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555
    # Ports of the servers that `withsense up` starts when no URL is set.
    local_postgres_port: int = 54329
    local_redis_port: int = 63799
    # The address clients reach the API at (behind a reverse proxy), for the thumbnail URLs in responses;
    # empty: the address of each request.
    public_base_url: str = ""

    @field_validator("allowed_formats", mode="before")
    @classmethod
    def _split_formats(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().upper() for part in value.split(",") if part.strip())
        return value

    @field_validator("database_replica_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("s3_prefix", mode="after")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        value = value.strip("/")
        return f"{value}/" if value else ""

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Settings:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("WITHSENSE_STORAGE=s3 needs WITHSENSE_S3_BUCKET")
        return self

    @field_validator("anonymous_scopes", mode="before")
    @classmethod
    def _split_scopes(cls, value: object) -> object:
        if isinstance(value, str):
            scopes = tuple(part.strip().lower() for part in value.split(",") if part.strip())
            unknown = set(scopes) - {"search", "upload", "moderate", "admin"}
            if unknown:
                raise ValueError(f"unknown scopes {sorted(unknown)}")
            return scopes
        return value

    @property
    def originals_dir(self) -> Path:
        return self.home / "originals"

    @property
    def derivatives_dir(self) -> Path:
        return self.home / "derivatives"

    @property
    def spool_dir(self) -> Path:
        """Temporary files of this host: uploads while they stream in, originals fetched from object storage."""
        return self.home / "tmp"

    @property
    def postgres_dir(self) -> Path:
        return self.home / "pg"

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"

    @property
    def onnx_dir(self) -> Path:
        return self.onnx_cache_dir or self.home / "onnx"

    def torch_threads_for(self, pool_processes: int | None) -> int:
        """Torch threads per worker child when the pool has `pool_processes` (default: worker_concurrency)."""
        return max(1, (os.cpu_count() or 1) // max(1, pool_processes or self.worker_concurrency))


_settings = runtime.slot("settings", Settings)


def get_settings() -> Settings:
    """This process's settings, read from the environment once (again after ``runtime.reset()``)."""
    return _settings.get()


def reload_settings() -> Settings:
    """Read the environment again (after the CLI filled in the running stack's URLs), keeping the other objects."""
    _settings.reset()
    return _settings.get()
