"""The worklist web app (FastAPI): server-rendered pages for research nurses and a JSON API under ``/api``.

Security contract:
- Every route needs a logged-in user except :data:`PUBLIC_PATHS` (login, the public open-studies page, static CSS,
  health, Prometheus metrics and the OpenAPI description, none of which carries patient data). Pages redirect
  to ``/login``; the API answers 401.
- Sessions are server-side (random token in the ``screener_session`` cookie, only its SHA-256 stored), the
  cookie is HttpOnly, SameSite=Lax and Secure when ``settings.cookie_secure``. The API also takes
  ``Authorization: Bearer <token>`` (``screener users token``).
- Every state change checks a CSRF token: the form field ``csrf_token`` for pages, the ``X-CSRF-Token`` header for
  API calls authenticated by cookie (bearer-token calls carry no ambient credential and need none). The login form
  uses a double-submit cookie because there is no session yet.
- A match is addressed only by its opaque random token: no patient identifier appears in any URL. A match of a
  study outside the user's teams, or of a patient on the do-not-contact register, answers 404 (it does not exist
  for that user). Admin-only pages answer 403 to others.
- Every view of the worklist or a match and every action is written to the audit log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from screener.alerts import auth
from screener.alerts.store import (
    ACTIONS,
    DECLINED_REASONS,
    NOT_ELIGIBLE_REASONS,
    VIEWS,
    InvalidAction,
    SqlStore,
    User,
)
from screener.logging import get_logger

__all__ = ["PUBLIC_PATHS", "SESSION_COOKIE", "create_app", "refresh_store_metrics"]

log = get_logger("screener.web")

SESSION_COOKIE = "screener_session"
LOGIN_CSRF_COOKIE = "screener_login_csrf"
#: Five failed logins for one username within 15 minutes lock that username out for the rest of the window.
LOCKOUT_FAILURES = 5
LOCKOUT_WINDOW = timedelta(minutes=15)
#: Paths served without a session. Everything else refuses anonymous requests.
PUBLIC_PATHS = frozenset({"/login", "/studies", "/api/studies", "/healthz", "/metrics", "/openapi.json", "/static"})
_HERE = Path(__file__).parent
_MD = MarkdownIt("commonmark", {"html": False}).enable("table")
STAGE_LABELS = {
    "new": "New",
    "reviewed": "Reviewed",
    "approached": "Approached",
    "consented": "Consented",
    "enrolled": "Enrolled",
    "not_eligible": "Not eligible",
    "declined": "Declined",
}
URGENCY_LABELS = {0: "Acute", 1: "Closing soon", 2: ""}


# --- API models (the OpenAPI description) ----------------------------------------------------------------------
class Criterion(BaseModel):
    name: str
    group: str = Field(description="include | exclude")
    result: bool | None = Field(description="true, false, or null when unknown (the nurse must verify)")
    evidence: str | None = None
    to_verify: bool


class ActionRecord(BaseModel):
    action: str
    reason: str | None = None
    until: date | None = None
    note: str | None = None
    username: str
    at: Any


class MatchSummary(BaseModel):
    token: str = Field(description="Opaque match id used in URLs")
    study_id: str
    title: str
    patient_id: str = Field(description="Hospital patient id, for the logged-in team member only")
    outcome: str
    stage: str
    urgency: int = Field(description="0 acute, 1 study closing soon, 2 other")
    setting: str | None = None
    matched_at: Any
    snoozed_until: date | None = None
    reopened_at: Any = None
    to_verify: list[str]


class MatchDetail(MatchSummary):
    rule_hash: str
    reason: str | None = None
    criteria: list[Criterion]
    history: list[ActionRecord]


class ActionIn(BaseModel):
    action: str = Field(description=" | ".join(ACTIONS))
    reason: str | None = Field(default=None, description="coded reason for not_eligible and declined")
    until: date | None = Field(default=None, description="snooze until this date (after today)")
    note: str | None = None


class DncChange(BaseModel):
    add: list[str] = []
    remove: list[str] = []


class DncResult(BaseModel):
    added: int
    removed: int
    total: int


class DncEntry(BaseModel):
    patient_id: str
    added_at: Any
    added_by: str
    source: str | None = None


class AuditEntry(BaseModel):
    at: Any
    username: str
    action: str
    object_type: str | None = None
    object_id: str | None = None
    detail: str | None = Field(default=None, description="JSON")


class StudyOut(BaseModel):
    id: str
    title: str
    summary: str
    sponsor: str | None
    settings: list[str]
    opens: date | None
    closes: date | None
    criteria_markdown: str | None


class Me(BaseModel):
    username: str
    role: str
    teams: list[str]


class FunnelRow(BaseModel):
    study_id: str
    stage: str
    n: int


# --- auth plumbing ---------------------------------------------------------------------------------------------
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


def _check_form_csrf(p: Principal, token: str | None) -> None:
    if not auth.constant_time_equal(token, p.csrf):
        raise HTTPException(403, "missing or invalid CSRF token")


def _require_admin(p: Principal) -> None:
    if not p.user.is_admin:
        raise HTTPException(403, "admins only")


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "to_verify": r.get("unknowns", [c["name"] for c in r.get("criteria", []) if c["to_verify"]])}


def _criteria_part(markdown: str) -> str:
    """The criteria from ``Study.render_markdown()``: from its first level-2 heading on (the page already shows
    the title, summary and dates above it); the whole text when it has no such heading."""
    if markdown.startswith("## "):
        return markdown
    at = markdown.find("\n## ")
    return markdown[at + 1 :] if at >= 0 else markdown


def refresh_store_metrics(store: SqlStore) -> bool:
    """Set the store-derived gauges (enrolment, funnel by IMD quintile and ethnic group) on ``store.metrics``
    from the worklist, via :func:`screener.report.publish_store_metrics`. Returns False when there is nothing to
    do (no metrics) or it failed (logged; a scrape must not fail because of it)."""
    if getattr(store, "metrics", None) is None:
        return False
    try:
        from screener.report import load_report_data, publish_store_metrics

        publish_store_metrics(store.metrics, load_report_data(store.engine))
    except Exception as exc:  # observability must never take the worklist down
        log.warning("store_metrics_failed", error=str(exc))
        return False
    return True


def create_app(settings: Any, store: SqlStore, registry: CollectorRegistry | None = None) -> FastAPI:
    """The web app over ``store``. ``registry`` is what ``/metrics`` exports (default: the global registry)."""
    app = FastAPI(
        title="screener worklist",
        version="1",
        docs_url=None,
        redoc_url=None,
        description="Worklist API for research nurses. Matches are addressed by opaque tokens.",
    )
    app.state.store = store
    app.state.settings = settings
    app.state.registry = registry if registry is not None else REGISTRY
    app.state.metrics_refreshed = float("-inf")
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    templates.env.globals.update(stage_labels=STAGE_LABELS, urgency_labels=URGENCY_LABELS)
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")
    secure = bool(getattr(settings, "cookie_secure", False))

    def render(
        request: Request, name: str, status: int = 200, p: Principal | None = None, **context: Any
    ) -> HTMLResponse:
        context.update(user=p.user if p else None, csrf=p.csrf if p else None)
        return templates.TemplateResponse(request, name, context, status_code=status)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self'; script-src 'none'; form-action 'self'; frame-ancestors 'none'",
        )
        if secure:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if not request.url.path.startswith(("/static", "/studies")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(LoginRequired)
    async def to_login(_request: Request, _exc: LoginRequired) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api/") or request.url.path == "/api":
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return render(
            request,
            "error.html",
            status=exc.status_code,
            p=_principal(request),
            code=exc.status_code,
            detail=exc.detail,
        )

    # --- public --------------------------------------------------------------------------------------------
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        now = time.monotonic()
        if now - app.state.metrics_refreshed > 5.0:  # at most every 5 s, however often it is scraped
            app.state.metrics_refreshed = now
            refresh_store_metrics(store)
        return Response(generate_latest(app.state.registry), media_type=CONTENT_TYPE_LATEST)

    def open_studies() -> list[dict[str, Any]]:
        return store.studies(open_on=store.clock().date())

    @app.get("/studies", response_class=HTMLResponse, include_in_schema=False)
    def studies_page(request: Request) -> HTMLResponse:
        rows = open_studies()
        for s in rows:
            s["criteria_html"] = _MD.render(_criteria_part(s["criteria_markdown"])) if s["criteria_markdown"] else None
        return render(request, "studies.html", studies=rows, p=None)

    @app.get("/api/studies", response_model=list[StudyOut], tags=["public"])
    def studies_api() -> list[dict[str, Any]]:
        """Studies open today, with plain-English criteria (Markdown). No login, no patient data."""
        return open_studies()

    # --- login ---------------------------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, failed: bool = False) -> HTMLResponse:
        token = auth.new_token()
        response = render(request, "login.html", login_csrf=token, failed=failed)
        response.set_cookie(
            LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/login", max_age=3600
        )
        return response

    @app.post("/login", include_in_schema=False)
    def login(
        request: Request,
        username: Annotated[str, Form()],
        password: Annotated[str, Form()],
        csrf_token: Annotated[str, Form()] = "",
    ) -> Response:
        if not auth.constant_time_equal(csrf_token, request.cookies.get(LOGIN_CSRF_COOKIE)):
            raise HTTPException(403, "missing or invalid CSRF token; reload the login page")
        if store.failed_logins(username[:128], LOCKOUT_WINDOW) >= LOCKOUT_FAILURES:
            store.audit(username[:128] or "?", "login_locked")
            raise HTTPException(429, "too many failed logins for this user; try again in 15 minutes")
        user = store.authenticate(username, password)
        if user is None:
            store.audit(username[:128] or "?", "login_failed")
            return RedirectResponse("/login?failed=1", status_code=303)
        token, _csrf = store.create_session(user)
        store.audit(user.username, "login")
        response = RedirectResponse("/worklist", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, token, httponly=True, samesite="lax", secure=secure, path="/", max_age=12 * 3600
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(
        request: Request, p: Annotated[Principal, Depends(page_user)], csrf_token: Annotated[str, Form()] = ""
    ) -> Response:
        _check_form_csrf(p, csrf_token)
        store.end_session(request.cookies.get(SESSION_COOKIE))
        store.audit(p.user.username, "logout")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # --- worklist pages ------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def home(_p: Annotated[Principal, Depends(page_user)]) -> Response:
        return RedirectResponse("/worklist", status_code=303)

    def _filters(study: str | None, setting: str | None, outcome: str | None, view: str) -> dict[str, Any]:
        if view not in VIEWS:
            raise HTTPException(422, f"view must be one of {list(VIEWS)}")
        return {"study": study or None, "setting": setting or None, "outcome": outcome or None, "view": view}

    @app.get("/worklist", response_class=HTMLResponse, include_in_schema=False)
    def worklist_page(
        request: Request,
        p: Annotated[Principal, Depends(page_user)],
        study: str | None = None,
        setting: str | None = None,
        outcome: str | None = None,
        view: str = "open",
    ) -> HTMLResponse:
        f = _filters(study, setting, outcome, view)
        rows = store.worklist(p.user, **f)
        store.audit(p.user.username, "view_worklist", detail={k: v for k, v in f.items() if v} | {"n": len(rows)})
        return render(
            request,
            "worklist.html",
            p=p,
            rows=rows,
            filters=f,
            views=VIEWS,
            studies=store.studies(user=p.user),
            settings_=("hospital", "community", "primary-care", "home"),
            outcomes=("eligible", "possible", "ineligible"),
            done=request.query_params.get("done"),
        )

    def _match_or_404(p: Principal, token: str) -> dict[str, Any]:
        m = store.get_match(p.user, token)
        if m is None:
            store.audit(p.user.username, "view_match_denied", "match", token[:64])
            raise HTTPException(404, "no such match")
        store.audit(p.user.username, "view_match", "match", token)
        return m

    @app.get("/matches/{token}", response_class=HTMLResponse, include_in_schema=False)
    def match_page(request: Request, token: str, p: Annotated[Principal, Depends(page_user)]) -> HTMLResponse:
        m = _match_or_404(p, token)
        return render(
            request,
            "match.html",
            p=p,
            m=m,
            actions=ACTIONS,
            not_eligible=NOT_ELIGIBLE_REASONS,
            declined=DECLINED_REASONS,
            today=store.clock().date(),
            error=None,
        )

    @app.post("/matches/{token}/action", include_in_schema=False)
    def match_action(
        request: Request,
        token: str,
        p: Annotated[Principal, Depends(page_user)],
        action: Annotated[str, Form()],
        csrf_token: Annotated[str, Form()] = "",
        reason: Annotated[str, Form()] = "",
        until: Annotated[str, Form()] = "",
        note: Annotated[str, Form()] = "",
    ) -> Response:
        _check_form_csrf(p, csrf_token)
        try:
            until_d = date.fromisoformat(until) if until else None
            m = store.record_action(p.user, token, action, reason=reason or None, until=until_d, note=note)
        except (InvalidAction, ValueError) as exc:
            m = _match_or_404(p, token)
            return render(
                request,
                "match.html",
                status=422,
                p=p,
                m=m,
                actions=ACTIONS,
                not_eligible=NOT_ELIGIBLE_REASONS,
                declined=DECLINED_REASONS,
                today=store.clock().date(),
                error=str(exc),
            )
        if m is None:
            raise HTTPException(404, "no such match")
        return RedirectResponse(f"/worklist?done={action}", status_code=303)

    @app.get("/funnel", response_class=HTMLResponse, include_in_schema=False)
    def funnel_page(request: Request, p: Annotated[Principal, Depends(page_user)]) -> HTMLResponse:
        if p.user.role not in ("coordinator", "admin"):
            raise HTTPException(403, "coordinators and admins only")
        table: dict[str, dict[str, int]] = {}
        for r in store.funnel(p.user):
            table.setdefault(r["study_id"], {})[r["stage"]] = r["n"]
        store.audit(p.user.username, "view_funnel")
        return render(request, "funnel.html", p=p, table=table, stages=list(STAGE_LABELS))

    # --- admin ---------------------------------------------------------------------------------------------
    @app.get("/admin/dnc", response_class=HTMLResponse, include_in_schema=False)
    def dnc_page(request: Request, p: Annotated[Principal, Depends(page_user)]) -> HTMLResponse:
        _require_admin(p)
        store.audit(p.user.username, "view_dnc")
        return render(request, "dnc.html", p=p, entries=store.dnc_entries(), message=request.query_params.get("msg"))

    @app.post("/admin/dnc", include_in_schema=False)
    def dnc_change(
        p: Annotated[Principal, Depends(page_user)],
        op: Annotated[str, Form()],
        patient_ids: Annotated[str, Form()] = "",
        csrf_token: Annotated[str, Form()] = "",
    ) -> Response:
        _check_form_csrf(p, csrf_token)
        _require_admin(p)
        ids = [x for x in patient_ids.replace(",", "\n").split() if x]
        if op == "add":
            n = store.dnc_add(ids, by=p.user.username, source="web")
            msg = f"added {n}"
        elif op == "remove":
            n = store.dnc_remove(ids, by=p.user.username)
            msg = f"removed {n}"
        else:
            raise HTTPException(422, "op must be add or remove")
        return RedirectResponse(f"/admin/dnc?msg={msg.replace(' ', '+')}", status_code=303)

    @app.get("/admin/audit", response_class=HTMLResponse, include_in_schema=False)
    def audit_page(request: Request, p: Annotated[Principal, Depends(page_user)]) -> HTMLResponse:
        _require_admin(p)
        entries = store.audit_entries(500)
        store.audit(p.user.username, "view_audit")
        return render(request, "audit.html", p=p, entries=entries)

    # --- JSON API ------------------------------------------------------------------------------------------
    @app.get("/api/me", response_model=Me, tags=["worklist"])
    def api_me(p: Annotated[Principal, Depends(api_user)]) -> dict[str, Any]:
        return {"username": p.user.username, "role": p.user.role, "teams": sorted(p.user.teams)}

    @app.get("/api/worklist", response_model=list[MatchSummary], tags=["worklist"])
    def api_worklist(
        p: Annotated[Principal, Depends(api_user)],
        study: str | None = None,
        setting: str | None = None,
        outcome: str | None = None,
        view: Annotated[str, Query(description=" | ".join(VIEWS))] = "open",
    ) -> list[dict[str, Any]]:
        """The caller's worklist, most urgent then newest first (same rules as the page)."""
        f = _filters(study, setting, outcome, view)
        rows = store.worklist(p.user, **f)
        store.audit(
            p.user.username, "view_worklist", detail={k: v for k, v in f.items() if v} | {"n": len(rows), "api": True}
        )
        return [_summary(r) for r in rows]

    @app.get("/api/matches/{token}", response_model=MatchDetail, tags=["worklist"])
    def api_match(token: str, p: Annotated[Principal, Depends(api_user)]) -> dict[str, Any]:
        """One match with every criterion (unknowns flagged ``to_verify``) and its action history."""
        m = _match_or_404(p, token)
        return _summary(m)

    @app.post("/api/matches/{token}/actions", response_model=MatchDetail, tags=["worklist"])
    def api_action(token: str, body: ActionIn, p: Annotated[Principal, Depends(api_user)]) -> dict[str, Any]:
        """Record a funnel action. Cookie-authenticated calls need the ``X-CSRF-Token`` header."""
        try:
            m = store.record_action(p.user, token, body.action, reason=body.reason, until=body.until, note=body.note)
        except InvalidAction as exc:
            raise HTTPException(422, str(exc)) from exc
        if m is None:
            raise HTTPException(404, "no such match")
        return _summary(m)

    @app.get("/api/funnel", response_model=list[FunnelRow], tags=["worklist"])
    def api_funnel(p: Annotated[Principal, Depends(api_user)]) -> list[dict[str, Any]]:
        """Matches by study and stage, for the caller's studies."""
        store.audit(p.user.username, "view_funnel", detail={"api": True})
        return store.funnel(p.user)

    @app.get("/api/dnc", response_model=list[DncEntry], tags=["admin"])
    def api_dnc_list(p: Annotated[Principal, Depends(api_user)]) -> list[dict[str, Any]]:
        """The do-not-contact register, newest first (admins)."""
        _require_admin(p)
        store.audit(p.user.username, "view_dnc", detail={"api": True})
        return store.dnc_entries()

    @app.get("/api/audit", response_model=list[AuditEntry], tags=["admin"])
    def api_audit(
        p: Annotated[Principal, Depends(api_user)], limit: Annotated[int, Query(ge=1, le=5000)] = 200
    ) -> list[dict[str, Any]]:
        """The audit log, newest first (admins)."""
        _require_admin(p)
        entries = store.audit_entries(limit)
        store.audit(p.user.username, "view_audit", detail={"api": True})
        return entries

    @app.post("/api/dnc", response_model=DncResult, tags=["admin"])
    def api_dnc(body: DncChange, p: Annotated[Principal, Depends(api_user)]) -> dict[str, int]:
        """Add patients to and remove them from the do-not-contact register (admins)."""
        _require_admin(p)
        added = store.dnc_add(body.add, by=p.user.username, source="api")
        removed = store.dnc_remove(body.remove, by=p.user.username)
        return {"added": added, "removed": removed, "total": store.do_not_contact().len()}

    return app
