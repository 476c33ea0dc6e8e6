"""One settings class for every process (API, workers, CLI), read from WITHSENSE_* variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.runtime import runtime


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WITHSENSE_", env_file=".env", extra="ignore")

    # Where the data lives. Unset URLs mean "the local stack started by `withsense up`".
    home: Path = Path("./var")
    database_url: str | None = None
    broker_url: str | None = None

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

    # Search. ef_search of the HNSW scan (raised to k when k is larger); SQL callers that set nothing get 200.
    hnsw_ef_search: int = Field(default=200, ge=1, le=1000)
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
