"""Sign-in with an API key (kept in an HttpOnly cookie), sign-out, and the interface language switch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response, status

from services.access import authenticate

from .auth import signed_in_principal
from .i18n import LANGUAGES
from .render import PageRoute, home_page, redirect, render, safe_next
from .session import CSRF_FIELD, check_csrf, set_language, sign_in, sign_out

router = APIRouter(route_class=PageRoute, include_in_schema=False)

CsrfForm = Annotated[str, Form(alias=CSRF_FIELD, max_length=200)]
NextForm = Annotated[str, Form(alias="next", max_length=2000)]


@router.get("/signin")
def signin_page(
    request: Request,
    next_: Annotated[str, Query(alias="next", max_length=2000)] = "",
    done: Annotated[str | None, Query(max_length=20)] = None,
) -> Response:
    """The sign-in form; `next` is where to go afterwards (a path of this site)."""
    return render(
        request,
        "signin.html",
        {
            "active": "signin",
            "next": safe_next(next_, ""),
            "needed": bool(next_) and signed_in_principal(request) is None,
            "signed_out": done == "signed_out",
        },
    )


@router.post("/signin")
def signin(
    request: Request,
    csrf: CsrfForm,
    key: Annotated[str, Form(max_length=500)] = "",
    next_: NextForm = "",
) -> Response:
    """Check the key (services.access.authenticate, as every API call does) and keep it in the session cookie."""
    check_csrf(request, csrf)
    principal = authenticate(key.strip()) if key.strip() else None
    if principal is None:
        return render(
            request,
            "signin.html",
            {"active": "signin", "next": safe_next(next_, ""), "invalid": True},
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    response = redirect(safe_next(next_, home_page(principal)))
    sign_in(response, request, key.strip())
    return response


@router.post("/signout")
def signout(request: Request, csrf: CsrfForm) -> Response:
    check_csrf(request, csrf)
    response = redirect("/signin?done=signed_out")
    sign_out(response, request)
    return response


@router.post("/lang")
def switch_language(
    request: Request,
    csrf: CsrfForm,
    lang: Annotated[str, Form(max_length=8)],
    next_: NextForm = "/",
) -> Response:
    """Keep the chosen interface language in a cookie and go back to the page."""
    check_csrf(request, csrf)
    response = redirect(safe_next(next_, "/"))
    if lang in LANGUAGES:
        set_language(response, request, lang)
    return response
