"""Request plumbing shared by the routers: who is asking (session or bearer token), CSRF checks, the store, and
page rendering. The security contract is in :mod:`screener.web.app`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request
from fastapi.responses import HTMLResponse

from screener.alerts import auth
from screener.alerts.store import SqlStore, User
from screener.vocab import Stage

__all__ = [
    "LOGIN_CSRF_COOKIE",
    "SESSION_COOKIE",
    "STAGE_LABELS",
    "LoginRequired",
    "Principal",
    "Store",
    "api_user",
    "get_store",
    "page_user",
    "render",
]

SESSION_COOKIE = "screener_session"
LOGIN_CSRF_COOKIE = "screener_login_csrf"
STAGE_LABELS: dict[Stage, str] = {
    "new": "New",
    "reviewed": "Reviewed",
    "approached": "Approached",
    "consented": "Consented",
    "enrolled": "Enrolled",
    "not_eligible": "Not eligible",
    "declined": "Declined",
}


def get_store(request: Request) -> SqlStore:
    store: SqlStore = request.app.state.store
    return store


Store = Annotated[SqlStore, Depends(get_store)]


@dataclass(frozen=True)
class Principal:
    user: User
    csrf: str | None  # None for bearer-token requests
    via: str  # "session" | "token"


class LoginRequired(Exception):
    """Raised by page dependencies; turned into a redirect to /login."""


def _principal(request: Request) -> Principal | None:
    store: SqlStore = request.app.state.store
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        user = store.token_user(header[7:].strip())
        return Principal(user, None, "token") if user else None
    found = store.session_user(request.cookies.get(SESSION_COOKIE))
    return Principal(found[0], found[1], "session") if found else None


def page_user(request: Request) -> Principal:
    p = _principal(request)
    if p is None or p.via != "session":
        raise LoginRequired()
    return p


def api_user(request: Request, x_csrf_token: Annotated[str | None, Header()] = None) -> Principal:
    p = _principal(request)
    if p is None:
        raise HTTPException(401, "not authenticated", headers={"WWW-Authenticate": "Bearer"})
    if (
        request.method not in ("GET", "HEAD", "OPTIONS")
        and p.via == "session"
        and not auth.constant_time_equal(x_csrf_token, p.csrf)
    ):
        raise HTTPException(403, "missing or invalid X-CSRF-Token header")
    return p


def check_form_csrf(p: Principal, token: str | None) -> None:
    if not auth.constant_time_equal(token, p.csrf):
        raise HTTPException(403, "missing or invalid CSRF token")


def require_admin(p: Principal) -> None:
    if not p.user.is_admin:
        raise HTTPException(403, "admins only")


def render(request: Request, name: str, status: int = 200, p: Principal | None = None, **context: Any) -> HTMLResponse:
    """Render template ``name`` with the user and CSRF token of ``p`` (none on public pages)."""
    context.update(user=p.user if p else None, csrf=p.csrf if p else None)
    response: HTMLResponse = request.app.state.templates.TemplateResponse(request, name, context, status_code=status)
    return response


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """An API row: the match with ``to_verify`` (the names of the criteria whose result is unknown)."""
    return {**r, "to_verify": r.get("unknowns", [c["name"] for c in r.get("criteria", []) if c["to_verify"]])}
