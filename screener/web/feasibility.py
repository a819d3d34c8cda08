"""The feasibility page (``GET /feasibility``): how many patients could an open study recruit, from the history.

Coordinators and admins only (403 for anyone else); a coordinator picks among the open studies of their teams,
an admin among all. Everything is a GET with query parameters (``study``, ``at``: a date or an instant, default
now; ``months``: 1-60, default 12; ``conversion``: 0-1, default 1), so nothing changes state and no CSRF token
is involved; each report viewed is written to the audit log.

The study is the rule file under ``settings.rules_dir`` with that id; the history is the store at
``settings.history_url()`` (``SCREENER_STATE_URL``, else ``SCREENER_STATE_DIR``/history), read as the engine
wrote it. The figures are :func:`screener.feasibility.feasibility`'s, and only their disclosure-controlled form
reaches the page (:meth:`Feasibility.to_json`: counts of 1-7 suppressed, the rest rounded to 5).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from screener.errors import ScreenerError
from screener.logging import get_logger
from screener.web.deps import Principal, Store, page_user, render

__all__ = ["router"]

router = APIRouter()
log = get_logger(__name__)

_DIMENSION_LABELS = {"setting": "Care setting", "imd_quintile": "IMD quintile (1 = most deprived)"}


def _instant(text: str | None, now: datetime) -> datetime:
    """``at`` from the form: empty = now; a date = the end of that day (UTC); else an ISO instant."""
    if not text:
        return now
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(23, 59, 59), tzinfo=UTC)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise HTTPException(422, "at must be a date like 2026-06-01 or an instant like 2026-06-01T09:00") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _report(settings: Any, study_id: str, at: datetime, months: int, conversion: float) -> dict[str, Any]:
    """The disclosure-controlled report, or ``{"error": "..."}`` in words when the rule file or the history cannot
    be read (never a patient identifier: errors name files and the store)."""
    from screener.feasibility import feasibility
    from screener.history import open_store
    from screener.rules import load_studies

    loaded = load_studies([settings.rules_dir])
    study = next((s for s in loaded.studies if s.id == study_id), None)
    if study is None:
        return {"error": f"no rule file in {settings.rules_dir} defines study {study_id}; it cannot be screened"}
    try:
        persons, facts = open_store(settings.history_url()).scan()
        result = feasibility(persons.collect(), facts.collect(), study, at, months)
    except ScreenerError as exc:
        log.warning("feasibility_failed", study_id=study_id, error=type(exc).__name__)
        return {"error": f"the history store cannot be read ({type(exc).__name__}); ask an administrator"}
    return result.to_json(conversion)


@router.get("/feasibility", response_class=HTMLResponse, include_in_schema=False)
def feasibility_page(
    st: Store,
    request: Request,
    p: Annotated[Principal, Depends(page_user)],
    study: str | None = None,
    at: str | None = None,
    months: Annotated[int, Query(ge=1, le=60)] = 12,
    conversion: Annotated[float, Query(gt=0, le=1)] = 1.0,
) -> HTMLResponse:
    """The study picker, and for ``?study=ID`` its feasibility report."""
    if p.user.role not in ("coordinator", "admin"):
        raise HTTPException(403, "coordinators and admins only")
    now = st.clock()
    studies = st.studies(open_on=now.date(), user=p.user)
    report: dict[str, Any] | None = None
    if study:
        if study not in {s["id"] for s in studies}:
            raise HTTPException(404, "no open study with that id among your teams' studies")
        instant = _instant(at, now)
        report = _report(request.app.state.settings, study, instant, months, conversion)
        st.audit(p.user.username, "view_feasibility", "study", study, {"at": instant.isoformat(), "months": months})
    return render(
        request,
        "feasibility.html",
        p=p,
        studies=studies,
        chosen=study,
        at=at or "",
        months=months,
        conversion=conversion,
        report=report,
        dimension_labels=_DIMENSION_LABELS,
    )
