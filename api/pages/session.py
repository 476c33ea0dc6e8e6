"""The pages' cookies: the signed-in API key, the CSRF nonce and the interface language.

Sign-in keeps the API key itself in an HttpOnly, SameSite=Lax cookie (Secure over HTTPS), signed and timestamped
with itsdangerous so that an old or tampered cookie is refused before the key is even looked up; the key is
authenticated again on every request, so a revoked key signs its pages out at once. Scripts never see it.

CSRF: a signed double-submit token. A random nonce lives in its own HttpOnly cookie; every form carries
HMAC(secret, nonce, session cookie). A cross-site page can neither read the nonce nor compute the HMAC, and a
cookie planted from a sibling domain does not help it either, because the token is bound to the victim's session.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from core.runtime import runtime
from core.settings import get_settings

SESSION_COOKIE = "ws_session"
CSRF_COOKIE = "ws_csrf"
LANG_COOKIE = "ws_lang"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_SESSION_SALT = "withsense.pages.session"
_CSRF_CONTEXT = b"withsense.pages.csrf\x00"


class CsrfRejected(Exception):
    """A state-changing request without a valid token for this browser's session."""


def _load_secret() -> bytes:
    """WITHSENSE_SESSION_SECRET, else a random secret generated once under WITHSENSE_HOME (shared by its APIs)."""
    settings = get_settings()
    if settings.session_secret:
        return settings.session_secret.encode()
    path: Path = settings.home / "session.secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass  # another process made it first: use that one
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise RuntimeError(f"{path} holds no usable secret; delete it (everyone is signed out) or set one")
    return secret.encode()


_secret = runtime.slot("pages-session-secret", _load_secret)


def is_https(request: Request) -> bool:
    """Whether the browser talks HTTPS to us: directly, or to a proxy that says so in X-Forwarded-Proto."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",", 1)[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="lax", secure=is_https(request))


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_secret.get(), salt=_SESSION_SALT)


def signed_in_key(request: Request) -> str | None:
    """The API key this browser signed in with, if its cookie is genuine and not older than the session limit."""
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw or len(raw) > 1000:
        return None
    try:
        key = _serializer().loads(raw, max_age=get_settings().session_max_age_s)
    except BadSignature:  # also SignatureExpired
        return None
    return key if isinstance(key, str) else None


def sign_in(response: Response, request: Request, api_key: str) -> None:
    request.state.stale_session = False
    _set_cookie(response, request, SESSION_COOKIE, _serializer().dumps(api_key), get_settings().session_max_age_s)


def sign_out(response: Response, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=is_https(request))


def _nonce(request: Request) -> str:
    """This browser's CSRF nonce; a new one (set on the response by `finish`) when it has none yet."""
    nonce = request.cookies.get(CSRF_COOKIE)
    if nonce and 16 <= len(nonce) <= 64:
        return nonce
    fresh: str | None = getattr(request.state, "new_csrf_nonce", None)
    if fresh is None:
        fresh = secrets.token_urlsafe(24)
        request.state.new_csrf_nonce = fresh
    return fresh


def _token_for(nonce: str, session_cookie: str) -> str:
    message = _CSRF_CONTEXT + nonce.encode() + b"\x00" + session_cookie.encode()
    return hmac.new(_secret.get(), message, hashlib.sha256).hexdigest()


def csrf_token(request: Request) -> str:
    """The token every form of this page carries (and the upload script sends as X-CSRF-Token)."""
    return _token_for(_nonce(request), request.cookies.get(SESSION_COOKIE, ""))


def check_csrf(request: Request, presented: str | None) -> None:
    """`CsrfRejected` unless `presented` is this browser's token for its current session."""
    nonce = request.cookies.get(CSRF_COOKIE)
    if not presented or not nonce or not 16 <= len(nonce) <= 64:
        raise CsrfRejected()
    expected = _token_for(nonce, request.cookies.get(SESSION_COOKIE, ""))
    if not hmac.compare_digest(expected, presented.strip()):
        raise CsrfRejected()


def set_language(response: Response, request: Request, language: str) -> None:
    _set_cookie(response, request, LANG_COOKIE, language, 365 * 24 * 3600)


def finish(response: Response, request: Request) -> None:
    """Set the cookies this request created (a first CSRF nonce) and drop a session cookie that failed."""
    fresh = getattr(request.state, "new_csrf_nonce", None)
    if fresh and CSRF_COOKIE not in request.cookies:
        _set_cookie(response, request, CSRF_COOKIE, fresh, 365 * 24 * 3600)
    if getattr(request.state, "stale_session", False):  # a revoked key, an expired or tampered cookie
        sign_out(response, request)
