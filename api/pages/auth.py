"""Who is looking at a page: the principal of the signed-in key (services.access.authenticate), or anonymous.

The same scopes as the API's routes admit the same keys: a page is never a way around a route's scope, and the
rate limits count page views of search and upload like API calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from api.auth import enforce_rate_limit
from core.settings import get_settings
from services.access import ANONYMOUS, Principal, authenticate

from .session import SESSION_COOKIE, signed_in_key


class SignInRequired(Exception):
    """The page needs a key and the browser has none (or its key was revoked): off to the sign-in page."""


def signed_in_principal(request: Request) -> Principal | None:
    """The principal of this browser's key, looked up once per request; None when signed out."""
    if hasattr(request.state, "page_principal"):
        cached: Principal | None = request.state.page_principal
        return cached
    principal: Principal | None = None
    key = signed_in_key(request)
    if key is not None:
        principal = authenticate(key)
    if principal is None and request.cookies.get(SESSION_COOKIE):
        request.state.stale_session = True  # revoked key, expired or forged cookie: drop it with this response
    request.state.page_principal = principal
    return principal


def page_scope(scope: str, *alternatives: str, count_keys: bool = True) -> Callable[..., Principal]:
    """A dependency for a page: the principal when its key has one of the scopes (or they are anonymous ones).

    Signed out: `SignInRequired` (a redirect), unless the settings grant one of the scopes to everyone. Signed in
    with a key that has none of them: 403, as the API answers that key. `count_keys=False` (the thumbnails of a
    page that was counted already) leaves signed-in keys out of the rate limit; callers without a key are
    always counted.
    """
    accepted = (scope, *alternatives)

    def dependency(request: Request) -> Principal:
        settings = get_settings()
        principal = signed_in_principal(request)
        if principal is None:
            public = [s for s in accepted if s in settings.anonymous_scopes]
            if not public:
                raise SignInRequired()
            enforce_rate_limit(settings, ANONYMOUS, public[0], request)
            return ANONYMOUS
        granted = [s for s in accepted if principal.allows(s)]
        if not granted:
            needed = " or ".join(f"`{s}`" for s in accepted)
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this key may {', '.join(sorted(principal.scopes))}; this page needs the {needed} scope",
            )
        if count_keys:
            enforce_rate_limit(settings, principal, granted[0], request)
        return principal

    return dependency


def may(request: Request, scope: str) -> bool:
    """Whether this browser may use pages of `scope` (for the navigation: links only to what it may open)."""
    principal = signed_in_principal(request)
    if principal is None:
        return scope in get_settings().anonymous_scopes
    return principal.allows(scope)


SearchViewer = Annotated[Principal, Depends(page_scope("search"))]
PhotoViewer = Annotated[Principal, Depends(page_scope("search", "upload", "moderate"))]
# A page's thumbnails: a page of 100 results must not run into the key's limit with its own images.
ThumbnailViewer = Annotated[Principal, Depends(page_scope("search", "upload", "moderate", count_keys=False))]
Curator = Annotated[Principal, Depends(page_scope("upload", "moderate"))]
Uploader = Annotated[Principal, Depends(page_scope("upload"))]
Moderator = Annotated[Principal, Depends(page_scope("moderate"))]
