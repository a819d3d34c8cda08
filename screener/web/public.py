"""Routes without a session: health, metrics, the public open-studies page and its API, login and logout."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from screener.alerts import auth
from screener.alerts.store import SqlStore
from screener.logging import get_logger
from screener.web.deps import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Principal,
    Store,
    check_form_csrf,
    page_user,
    render,
)
from screener.web.models import (
    StudyOut,
)

if TYPE_CHECKING:
    from screener.metrics import Metrics

log = get_logger("screener.web")
router = APIRouter()

#: Login throttling, per username AND client address (so nobody elsewhere can lock a nurse out): the first
#: LOCKOUT_FREE_FAILURES failures within LOCKOUT_WINDOW cost nothing; after that each further attempt from that
#: address for that username must wait LOCKOUT_BASE_DELAY * 2**(failures - free) since the last failure (1 s,
#: 2 s, 4 s, ... at most LOCKOUT_MAX_DELAY), answered 429 with Retry-After meanwhile.
LOCKOUT_FREE_FAILURES = 3
LOCKOUT_WINDOW = timedelta(minutes=15)
LOCKOUT_BASE_DELAY = timedelta(seconds=1)
LOCKOUT_MAX_DELAY = timedelta(minutes=15)


def login_delay(failures: int) -> timedelta:
    """How long after the last failure the next attempt must wait, given the failures in the window."""
    if failures < LOCKOUT_FREE_FAILURES:
        return timedelta(0)
    factor = 1 << min(failures - LOCKOUT_FREE_FAILURES, 20)
    return min(LOCKOUT_MAX_DELAY, LOCKOUT_BASE_DELAY * factor)


def _secure(request: Request) -> bool:
    return bool(getattr(request.app.state.settings, "cookie_secure", False))


def refresh_store_metrics(store: SqlStore, *, min_count: int = 8) -> bool:
    """Set the store-derived gauges (enrolment, funnel by IMD quintile and ethnic group) on ``store.metrics``
    from the worklist, via :func:`screener.report.publish_store_metrics`. This endpoint needs no login, so the
    demographic cells below ``min_count`` patients (``settings.metrics_min_count``, default 8) are not exported
    at all. Returns False when there is nothing to do (no metrics) or it failed (logged; a scrape must not fail
    because of it)."""
    metrics: Metrics | None = getattr(store, "metrics", None)
    if metrics is None:
        return False
    try:
        from screener.report import load_report_data, publish_store_metrics

        publish_store_metrics(metrics, load_report_data(store.engine), min_count=min_count)
    except Exception as exc:  # observability must never take the worklist down
        log.warning("store_metrics_failed", error=str(exc))
        return False
    return True


@router.get("/healthz", include_in_schema=False)
def healthz() -> PlainTextResponse:
    return PlainTextResponse("ok")


@router.get("/metrics", include_in_schema=False)
def metrics(st: Store, request: Request) -> Response:
    now = time.monotonic()
    if now - request.app.state.metrics_refreshed > 5.0:  # at most every 5 s, however often it is scraped
        request.app.state.metrics_refreshed = now
        refresh_store_metrics(st, min_count=int(getattr(request.app.state.settings, "metrics_min_count", 8)))
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


def open_studies(st: SqlStore) -> list[dict[str, Any]]:
    rows = st.studies(open_on=st.clock().date())
    for s in rows:
        s["who_can_take_part"] = [c["label"] for c in s["criteria_plain"] if c.get("group") == "include"]
        s["who_cannot_take_part"] = [c["label"] for c in s["criteria_plain"] if c.get("group") == "exclude"]
    return rows


DOCS_HTML = """<!doctype html>
<html lang="en-GB"><head><meta charset="utf-8"><title>screener worklist API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script><script src="/static/docs-init.js"></script></body></html>
"""
#: /docs may run the bundled Swagger UI scripts from this server (every other page allows no script at all).
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'"
)


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
def docs() -> HTMLResponse:
    """Swagger UI for the API from the ``swagger-ui-bundle`` package's files (served under /docs/assets)."""
    return HTMLResponse(DOCS_HTML, headers={"Content-Security-Policy": DOCS_CSP})


@router.get("/studies", response_class=HTMLResponse, include_in_schema=False)
def studies_page(st: Store, request: Request) -> HTMLResponse:
    """For patients: each open study's lay summary, who can and cannot take part in words (criterion labels, never
    codes), where, and how to ask. Printable (the print style sheet drops navigation)."""
    return render(request, "studies.html", studies=open_studies(st), p=None)


@router.get("/api/studies", response_model=list[StudyOut], tags=["public"])
def studies_api(st: Store) -> list[dict[str, Any]]:
    """Studies open today, with plain-English criteria (Markdown). No login, no patient data."""
    return open_studies(st)


# --- login ---------------------------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(request: Request, failed: bool = False) -> HTMLResponse:
    token = auth.new_token()
    response = render(request, "login.html", login_csrf=token, failed=failed)
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request), path="/login", max_age=3600
    )
    return response


@router.post("/login", include_in_schema=False)
def login(
    st: Store,
    request: Request,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    if not auth.constant_time_equal(csrf_token, request.cookies.get(LOGIN_CSRF_COOKIE)):
        raise HTTPException(403, "missing or invalid CSRF token; reload the login page")
    name = username[:128] or "?"
    client = (request.client.host if request.client else "unknown")[:128]
    failures, last = st.login_failures(name, client, LOCKOUT_WINDOW)
    wait = (last + login_delay(failures) - st.clock()) if last is not None else timedelta(0)
    if wait > timedelta(0):
        st.audit(name, "login_throttled", "client", client)
        seconds = max(1, int(wait.total_seconds() + 0.999))
        raise HTTPException(
            429,
            f"Too many failed logins for this user from here; wait {seconds} s and try again.",
            headers={"Retry-After": str(seconds)},
        )
    user = st.authenticate(username, password)
    if user is None:
        st.audit(name, "login_failed", "client", client)
        return RedirectResponse("/login?failed=1", status_code=303)
    token, _csrf = st.create_session(user)
    st.audit(user.username, "login")
    response = RedirectResponse("/worklist", status_code=303)
    response.set_cookie(
        SESSION_COOKIE, token, httponly=True, samesite="lax", secure=_secure(request), path="/", max_age=12 * 3600
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout", include_in_schema=False)
def logout(
    st: Store, request: Request, p: Annotated[Principal, Depends(page_user)], csrf_token: Annotated[str, Form()] = ""
) -> Response:
    check_form_csrf(p, csrf_token)
    st.end_session(request.cookies.get(SESSION_COOKIE))
    st.audit(p.user.username, "logout")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
