"""This process's embedding model for queries: loaded in the background, retried with backoff, never on a request.

An API starts the loader when it starts. Until the first attempt ends, a request waits for it (a cached model
loads in seconds); once an attempt has failed, every request that needs the model answers `ModelUnavailable`
(503) at once with the reason, while the loader tries again after 2 s, 4 s, ... up to WITHSENSE_MODEL_RETRY_MAX_S.
A process that never started the loader (the CLI) loads the model in the caller's thread instead, and gets the
error itself.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Literal

from core.embedding import ClipEmbedder, get_embedder
from core.runtime import runtime
from core.settings import get_settings
from services.errors import Unavailable

log = logging.getLogger(__name__)

FIRST_RETRY_S = 2.0
# How long a request waits for the first attempt to end (a model in the cache loads well within it).
FIRST_LOAD_WAIT_S = 60.0

LoadState = Literal["idle", "loading", "ready", "failed"]


class ModelUnavailable(Unavailable):
    """The model could not be loaded (yet): the reason, and when the next attempt is."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))


@dataclass(frozen=True)
class ModelStatus:
    state: LoadState
    model: str
    reason: str | None = None
    attempts: int = 0
    retry_in_s: float | None = None

    def describe(self) -> str:
        """One line for /readyz and for a 503: what is wrong and what happens next."""
        if self.state == "ready":
            return "ok"
        if self.state in ("idle", "loading"):
            return "loading"
        retry = f"; retrying in {self.retry_in_s:.0f}s" if self.retry_in_s is not None else ""
        return f"unavailable: {self.model} could not be loaded (attempt {self.attempts}{retry}): {self.reason}"


def record_checked_text_model(embedder: ClipEmbedder) -> None:
    """Record a text model that passed its start-up check with the model version (services/text_models.py); a
    database that cannot take it now only costs the record (the next process that loads the pair writes it)."""
    if embedder.text_model_name is None:
        return
    from services.text_models import record_text_model

    try:
        record_text_model(embedder)
    except Exception as exc:  # noqa: BLE001 - the model serves either way
        log.warning("could not record text model %s: %s", embedder.text_model_name, _one_line(exc))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.replace("\n", " ") if text else type(exc).__name__


class ModelLoader:
    """Loads `get_embedder()` in a daemon thread, with backoff after a failure, until it is loaded or stopped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first_attempt_done = threading.Event()
        self._thread: threading.Thread | None = None
        self._state: LoadState = "idle"
        self._reason: str | None = None
        self._attempts = 0
        self._next_attempt_at: float | None = None

    def start(self) -> None:
        """Start loading in the background (again a no-op while a thread runs or once loaded)."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="model-loader", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop retrying (runtime reset, process shutdown)."""
        self._stop.set()
        self._first_attempt_done.set()

    def _run(self) -> None:
        delay = FIRST_RETRY_S
        while not self._stop.is_set():
            embedder = get_embedder()
            with self._lock:
                self._attempts += 1
                if self._reason is None:  # a retry after a failure stays "failed" until it succeeds
                    self._state = "loading"
            try:
                embedder.load()
            except Exception as exc:  # noqa: BLE001 - reported (readyz, 503s, one log line), then retried
                reason = _one_line(exc)
                with self._lock:
                    changed = reason != self._reason
                    self._state, self._reason = "failed", reason
                    self._next_attempt_at = time.monotonic() + delay
                # One line per new reason, not a traceback per attempt.
                (log.error if changed else log.info)(
                    "model %s unavailable (attempt %d), retrying in %.0fs: %s",
                    embedder.model_name,
                    self._attempts,
                    delay,
                    reason,
                )
                self._first_attempt_done.set()
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, get_settings().model_retry_max_s)
                continue
            with self._lock:
                self._state, self._reason, self._next_attempt_at = "ready", None, None
            record_checked_text_model(embedder)
            if self._attempts > 1:
                log.info("model %s loaded after %d attempts", embedder.model_name, self._attempts)
            self._first_attempt_done.set()
            return

    @property
    def started(self) -> bool:
        return self._thread is not None

    def status(self) -> ModelStatus:
        embedder = get_embedder()
        with self._lock:
            if embedder.is_loaded:
                return ModelStatus("ready", embedder.model_name, attempts=self._attempts)
            retry = None if self._next_attempt_at is None else max(0.0, self._next_attempt_at - time.monotonic())
            return ModelStatus(self._state, embedder.model_name, self._reason, self._attempts, retry)

    def require(self) -> ClipEmbedder:
        """The loaded embedder; `ModelUnavailable` at once when loading failed (the next attempt is in the background).

        Without a background loader (the CLI) the model is loaded here, and its ModelUnavailableError raised.
        """
        embedder = get_embedder()
        if embedder.is_loaded:
            return embedder
        if not self.started:
            embedder.load()
            record_checked_text_model(embedder)
            return embedder
        self._first_attempt_done.wait(FIRST_LOAD_WAIT_S)
        if embedder.is_loaded:
            return embedder
        status = self.status()
        if status.state != "failed":
            raise ModelUnavailable(f"search is unavailable: the model {status.model} is still loading", 5)
        raise ModelUnavailable(f"search is unavailable: {status.describe()}", status.retry_in_s or FIRST_RETRY_S)


_loader = runtime.slot("model-loader", ModelLoader, close=lambda loader: loader.stop())


def model_loader() -> ModelLoader:
    """This process's loader (a new one after `runtime.reset()`)."""
    return _loader.get()


def query_embedder() -> ClipEmbedder:
    """The model that embeds queries, or `ModelUnavailable` (503) at once; see ModelLoader.require."""
    return model_loader().require()
