"""Bearer API keys with scopes, and per-key rate limits counted in Redis."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from core.runtime import runtime
from core.settings import Settings, get_settings
from services.access import ANONYMOUS, Principal, authenticate

log = logging.getLogger(__name__)

bearer = HTTPBearer(auto_error=False, description="an API key created with `withsense keys create`")
RATE_LIMITED_SCOPES = ("search", "upload")


def _new_limiter() -> MovingWindowRateLimiter:
    url = get_settings().broker_url or "redis://127.0.0.1:6379/0"
    return MovingWindowRateLimiter(storage_from_string(url, socket_timeout=0.5, socket_connect_timeout=0.5))


_limiter = runtime.slot("rate-limiter", _new_limiter)


def _limit_for(settings: Settings, scope: str) -> RateLimitItem:
    return parse(settings.rate_limit_search if scope == "search" else settings.rate_limit_upload)


def enforce_rate_limit(settings: Settings, principal: Principal, scope: str, request: Request) -> None:
    """429 when this key (or client address, without a key) is over its limit for `scope` (the API and the pages)."""
    if scope not in RATE_LIMITED_SCOPES or not settings.broker_url:
        return
    item = _limit_for(settings, scope)
    # Callers without a key are counted per client address (behind a proxy, run uvicorn with --proxy-headers).
    client = request.client.host if request.client else "unknown"
    identity = str(principal.key_id) if principal.key_id else f"anonymous:{client}"
    try:
        limiter = _limiter.get()
        if limiter.hit(item, scope, identity):
            return
        reset_at = limiter.get_window_stats(item, scope, identity).reset_time
    except Exception as exc:  # noqa: BLE001 - Redis down must not take search down with it: fail open, loudly
        log.warning("rate limiter unavailable, request allowed: %s", exc)
        return
    retry_after = max(1, math.ceil(reset_at - time.time()))
    raise HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"rate limit of {item} for {scope} exceeded; retry in {retry_after}s",
        headers={"Retry-After": str(retry_after)},
    )


def require_scope(scope: str, *alternatives: str) -> Callable[..., Principal]:
    """A dependency that admits callers whose key has `scope`, one of `alternatives`, or admin; else 401 or 403.

    A request counts against the rate limit of the first of those scopes that the key has.
    """
    accepted = (scope, *alternatives)

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        settings: Annotated[Settings, Depends(get_settings)],
    ) -> Principal:
        if credentials is None:
            public = [s for s in accepted if s in settings.anonymous_scopes]
            if public:
                enforce_rate_limit(settings, ANONYMOUS, public[0], request)
                request.state.principal = ANONYMOUS
                return ANONYMOUS
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "an API key is required: send `Authorization: Bearer <key>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        principal = authenticate(credentials.credentials)
        if principal is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "the API key is invalid or revoked",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        granted = [s for s in accepted if principal.allows(s)]
        if not granted:
            needed = " or ".join(f"`{s}`" for s in accepted)
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this key may {', '.join(sorted(principal.scopes))}; this route needs the {needed} scope",
            )
        enforce_rate_limit(settings, principal, granted[0], request)
        request.state.principal = principal
        return principal

    dependency.accepted_scopes = accepted  # type: ignore[attr-defined]  # read by api/openapi.py (401/403/429)
    return dependency


SearchPrincipal = Annotated[Principal, Depends(require_scope("search"))]
# Reading one photo: searchers, uploaders following their own uploads, and moderators.
ViewerPrincipal = Annotated[Principal, Depends(require_scope("search", "upload", "moderate"))]
# Managing photos (list, edit, delete): uploaders their own, moderators every photo.
CuratorPrincipal = Annotated[Principal, Depends(require_scope("upload", "moderate"))]
UploadPrincipal = Annotated[Principal, Depends(require_scope("upload"))]
ModeratorPrincipal = Annotated[Principal, Depends(require_scope("moderate"))]
AdminPrincipal = Annotated[Principal, Depends(require_scope("admin"))]
