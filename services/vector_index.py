"""The HNSW index kind of the vectors (WITHSENSE_VECTOR_INDEX): halfvec or binary with re-ranking (SCALING.md).

Switching a model never leaves its searches without an index: the new index is built (its own transaction;
searches go on with the old one, writes of vectors wait for the build), then the model's searches are switched to
it (a one-row update, read by every search function on its next call), then the old index is dropped (it waits
for the searches still running on it). With hash partitions each step covers every partition.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from db import vector_index as index_sql
from db.engine import session_scope
from services.errors import InvalidRequest, NotFound

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Switched:
    model_id: int
    name: str
    before: str
    after: str
    built: bool  # a new index was built (False: it was there already)


def current() -> list[index_sql.ModelIndexes]:
    with session_scope() as session:
        return index_sql.model_indexes(session)


def switch(kind: str, model_id: int | None = None, progress: Progress | None = None) -> list[Switched]:
    """Bring every model (or one) to the index `kind`: build, switch, drop the other kind. One entry per model."""
    if kind not in index_sql.KINDS:
        raise InvalidRequest(f"the index kind must be halfvec or binary, got {kind!r}")
    models = current()
    if model_id is not None:
        models = [m for m in models if m.model_id == model_id]
        if not models:
            raise NotFound(f"no embedding model {model_id}")
    other = "halfvec" if kind == "binary" else "binary"
    done: list[Switched] = []
    for model in models:
        built = kind not in model.built
        if built:
            _report(progress, f"model {model.model_id} ({model.name}): building its {kind} index")
            with _watching(progress, f"model {model.model_id}"), session_scope() as session:
                index_sql.build_index(session, model.model_id, kind)
        with session_scope() as session:
            before = index_sql.set_kind(session, model.model_id, kind)
        _report(progress, f"model {model.model_id}: searches use its {kind} index")
        with session_scope() as session:
            if index_sql.drop_index(session, model.model_id, other):
                _report(progress, f"model {model.model_id}: its {other} index dropped")
        done.append(Switched(model.model_id, model.name, before, kind, built))
    return done


def _report(progress: Progress | None, line: str) -> None:
    if progress is not None:
        progress(line)


class _watching:
    """Reports pg_stat_progress_create_index every few seconds while the block runs (from another connection)."""

    def __init__(self, progress: Progress | None, label: str, every_s: float = 5.0) -> None:
        self.progress, self.label, self.every_s = progress, label, every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> None:
        if self.progress is not None:
            self.thread.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                with session_scope() as session:
                    state = index_sql.build_progress(session)
            except Exception:  # noqa: BLE001 - a report that fails never stops the build
                continue
            if state is not None and self.progress is not None:
                phase, done, total = state
                share = f" {done}/{total} vectors" if total else ""
                self.progress(f"{self.label}: {phase}{share}")
