"""Typed outcomes of the rules that an entry point turns into its own protocol (HTTP status, CLI exit code).

The API maps each class to one status in one place (api/errors.py); the CLI prints the message.
"""

from __future__ import annotations

from core.policy import DISCLAIMER


class ServiceError(Exception):
    """A rule refused the request; `str(error)` is the message for the caller."""


class NotFound(ServiceError):
    """The thing does not exist, or the caller may not know that it does (the same answer either way)."""


class Forbidden(ServiceError):
    """The caller is known but may not do this (another uploader's photo)."""


class Restricted(ServiceError):
    """The minors law hides this from the viewer's region."""

    def __init__(self, message: str = DISCLAIMER) -> None:
        super().__init__(message)


class Conflict(ServiceError):
    """The request does not fit the current state (redrive of a photo that has not failed, ...)."""


class InvalidRequest(ServiceError):
    """The input is well-formed but not acceptable (a vector of another dimension, an unknown cursor, ...)."""


class Unavailable(ServiceError):
    """A dependency cannot serve now (the queue, the model, the index); the caller should retry later."""

    retry_after_s: int = 5
