"""The process's long-lived objects, owned in one place.

Settings, the model, the query policy, the moderation classifier, the database engine, the queue producer and
the caches are each built lazily, once per process, in a :class:`Slot`. Every slot registers itself with the one
:data:`runtime`, so ``runtime.reset()`` (tests, and the CLI after it read the running stack's URLs) closes and
forgets all of them at once: nothing pokes private names to start over. Slots are created by the module that
knows how to build the object (``db.engine`` the engine, ``core.embedding`` the model), so this module imports
nothing of the project and every layer may use it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class Slot(Generic[T]):
    """One lazily built, process-wide object with an optional closer (dispose, shutdown) run on reset."""

    def __init__(self, name: str, factory: Callable[[], T], close: Callable[[T], object] | None = None) -> None:
        self.name = name
        self._factory = factory
        self._close = close
        self._value: T | None = None
        self._built = False
        self._lock = threading.RLock()

    def get(self) -> T:
        """The object, built on first use (under a lock, so concurrent first calls build it once)."""
        if self._built:
            return cast(T, self._value)  # built, so set (T itself may be Optional)
        with self._lock:
            if self._built:
                return cast(T, self._value)
            value = self._factory()
            self._value, self._built = value, True
            return value

    def peek(self) -> T | None:
        """The object if it was built, else None; never builds it."""
        return self._value if self._built else None

    @property
    def is_built(self) -> bool:
        return self._built

    def set(self, value: T) -> None:
        """Put an object in the slot (a process that built it another way, e.g. a worker's registered model)."""
        with self._lock:
            self._value, self._built = value, True

    def reset(self) -> None:
        """Close the object if there is one and forget it; the next get() builds a new one."""
        with self._lock:
            value, built = self._value, self._built
            self._value, self._built = None, False
        if built and self._close is not None and value is not None:
            self._close(value)


class TtlCache(Generic[T]):
    """One value fetched at most every `ttl_s` seconds (e.g. the active model: it changes only when an operator
    switches it). The fetch runs outside the lock, so a slow database never blocks readers of a fresh value."""

    def __init__(self, ttl_s: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._fetched_at = float("-inf")
        self._value: T | None = None

    def get(self, fetch: Callable[[], T]) -> T:
        with self._lock:
            if time.monotonic() - self._fetched_at < self._ttl_s():
                return cast(T, self._value)  # fetched, so set
        value = fetch()
        with self._lock:
            self._value, self._fetched_at = value, time.monotonic()
        return value

    def forget(self) -> None:
        with self._lock:
            self._fetched_at, self._value = float("-inf"), None


class Runtime:
    """Every slot and reset hook of this process."""

    def __init__(self) -> None:
        self._slots: list[Slot[object]] = []
        self._hooks: list[Callable[[], object]] = []
        self._lock = threading.Lock()

    def slot(self, name: str, factory: Callable[[], T], close: Callable[[T], object] | None = None) -> Slot[T]:
        """A new slot, reset with all the others."""
        new = Slot(name, factory, close)
        with self._lock:
            self._slots.append(new)  # type: ignore[arg-type]  # stored for reset only: the type is not read back
        return new

    def cache(self, ttl_s: Callable[[], float]) -> TtlCache[T]:
        """A new TTL cache, forgotten on reset."""
        cache: TtlCache[T] = TtlCache(ttl_s)
        self.on_reset(cache.forget)
        return cache

    def on_reset(self, hook: Callable[[], object]) -> None:
        """Run `hook` after the slots are reset (e.g. reconfigure an object that must exist at import time)."""
        with self._lock:
            self._hooks.append(hook)

    def reset(self) -> None:
        """Close and forget every object (newest first, so the engine outlives nothing built on it), then run hooks.

        Settings are read again from the environment on next use.
        """
        with self._lock:
            slots, hooks = list(reversed(self._slots)), list(self._hooks)
        for slot in slots:
            slot.reset()
        for hook in hooks:
            hook()


runtime = Runtime()
