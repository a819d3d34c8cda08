"""The worklist web app (FastAPI): server-rendered pages for research nurses and a JSON API under ``/api``.

Routers, one per area: :mod:`screener.web.public` (no session: health, metrics, the public studies page, login),
:mod:`screener.web.pages` (worklist, match, funnel, admin pages) and :mod:`screener.web.api` (JSON). Shared
request plumbing (who is asking, CSRF, rendering) is in :mod:`screener.web.deps`, the API models in
:mod:`screener.web.models`.

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

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import REGISTRY, CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from screener.alerts.store import SqlStore
from screener.web import api, feasibility, match, pages, public
from screener.web.deps import SESSION_COOKIE, STAGE_LABELS, LoginRequired, _principal, render
from screener.web.present import install_filters
from screener.web.public import refresh_store_metrics

if TYPE_CHECKING:
    from screener.settings import Settings

__all__ = ["PUBLIC_PATHS", "SESSION_COOKIE", "create_app", "refresh_store_metrics"]

#: Paths served without a session. Everything else refuses anonymous requests.
PUBLIC_PATHS = frozenset(
    {"/login", "/studies", "/api/studies", "/healthz", "/metrics", "/openapi.json", "/static", "/docs", "/docs/assets"}
)
_HERE = Path(__file__).parent
URGENCY_LABELS = {0: "Acute", 1: "Closing soon", 2: ""}
CSP = "default-src 'self'; style-src 'self'; script-src 'none'; form-action 'self'; frame-ancestors 'none'"


def create_app(settings: Settings, store: SqlStore, registry: CollectorRegistry | None = None) -> FastAPI:
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
    install_filters(templates.env, str(getattr(settings, "timezone", "Europe/London")))
    app.state.templates = templates
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")
    _mount_docs_assets(app)
    secure = bool(getattr(settings, "cookie_secure", False))

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Content-Security-Policy", CSP)
        if secure:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if not request.url.path.startswith(("/static", "/studies", "/docs")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(LoginRequired)
    async def to_login(_request: Request, _exc: LoginRequired) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api/") or request.url.path == "/api":
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        p = _principal(request)
        page = render(request, "error.html", status=exc.status_code, p=p, code=exc.status_code, detail=exc.detail)
        for name, value in (exc.headers or {}).items():  # Retry-After on 429, WWW-Authenticate on 401
            page.headers[name] = value
        return page

    app.include_router(public.router)
    app.include_router(pages.router)
    app.include_router(match.router)
    app.include_router(feasibility.router)
    app.include_router(api.router)
    return app


def _mount_docs_assets(app: FastAPI) -> None:
    """Serve Swagger UI's files from the installed ``swagger-ui-bundle`` package (no CDN); without the package
    /docs still answers, and says so in the browser console."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return
    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
