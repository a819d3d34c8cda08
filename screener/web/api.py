"""The JSON API under ``/api`` (bearer token or session cookie + ``X-CSRF-Token``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from screener.alerts.store import VIEWS, InvalidAction
from screener.web.deps import (
    Principal,
    Store,
    api_user,
    require_admin,
    summary,
)
from screener.web.match import _match_or_404
from screener.web.models import (
    ActionIn,
    AuditEntry,
    DncChange,
    DncEntry,
    DncResult,
    FunnelRow,
    MatchDetail,
    MatchSummary,
    Me,
)
from screener.web.pages import _filters

router = APIRouter()


@router.get("/api/me", response_model=Me, tags=["worklist"])
def api_me(p: Annotated[Principal, Depends(api_user)]) -> dict[str, Any]:
    return {"username": p.user.username, "role": p.user.role, "teams": sorted(p.user.teams)}


@router.get("/api/worklist", response_model=list[MatchSummary], tags=["worklist"])
def api_worklist(
    st: Store,
    p: Annotated[Principal, Depends(api_user)],
    study: str | None = None,
    setting: str | None = None,
    outcome: str | None = None,
    view: Annotated[str, Query(description=" | ".join(VIEWS))] = "open",
    sort: Annotated[str, Query(description="urgency | newest | oldest | study")] = "urgency",
    limit: Annotated[int, Query(ge=1, le=500)] = 500,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    """The caller's worklist, most urgent then newest first (same rules as the page); ``limit``/``offset`` page it."""
    f = _filters(study, setting, outcome, view)
    try:
        rows = st.worklist(p.user, **f, sort=sort, limit=limit, offset=offset)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    st.audit(p.user.username, "view_worklist", detail={k: v for k, v in f.items() if v} | {"n": len(rows), "api": True})
    return [summary(r) for r in rows]


@router.get("/api/matches/{token}", response_model=MatchDetail, tags=["worklist"])
def api_match(st: Store, token: str, p: Annotated[Principal, Depends(api_user)]) -> dict[str, Any]:
    """One match with every criterion (unknowns flagged ``to_verify``) and its action history."""
    m = _match_or_404(st, p, token)
    return summary(m)


@router.post("/api/matches/{token}/actions", response_model=MatchDetail, tags=["worklist"])
def api_action(st: Store, token: str, body: ActionIn, p: Annotated[Principal, Depends(api_user)]) -> dict[str, Any]:
    """Record a funnel action. Cookie-authenticated calls need the ``X-CSRF-Token`` header."""
    try:
        m = st.record_action(p.user, token, body.action, reason=body.reason, until=body.until, note=body.note)
    except InvalidAction as exc:
        raise HTTPException(422, str(exc)) from exc
    if m is None:
        raise HTTPException(404, "no such match")
    return summary(m)


@router.get("/api/funnel", response_model=list[FunnelRow], tags=["worklist"])
def api_funnel(st: Store, p: Annotated[Principal, Depends(api_user)]) -> list[dict[str, Any]]:
    """Matches by study and stage, for the caller's studies."""
    st.audit(p.user.username, "view_funnel", detail={"api": True})
    return st.funnel(p.user)


@router.get("/api/dnc", response_model=list[DncEntry], tags=["admin"])
def api_dnc_list(st: Store, p: Annotated[Principal, Depends(api_user)]) -> list[dict[str, Any]]:
    """The do-not-contact register, newest first (admins)."""
    require_admin(p)
    st.audit(p.user.username, "view_dnc", detail={"api": True})
    return st.dnc_entries()


@router.get("/api/audit", response_model=list[AuditEntry], tags=["admin"])
def api_audit(
    st: Store, p: Annotated[Principal, Depends(api_user)], limit: Annotated[int, Query(ge=1, le=5000)] = 200
) -> list[dict[str, Any]]:
    """The audit log, newest first (admins)."""
    require_admin(p)
    entries = st.audit_entries(limit)
    st.audit(p.user.username, "view_audit", detail={"api": True})
    return entries


@router.post("/api/dnc", response_model=DncResult, tags=["admin"])
def api_dnc(st: Store, body: DncChange, p: Annotated[Principal, Depends(api_user)]) -> dict[str, int]:
    """Add patients to and remove them from the do-not-contact register (admins)."""
    require_admin(p)
    added = st.dnc_add(body.add, by=p.user.username, source="api")
    removed = st.dnc_remove(body.remove, by=p.user.username)
    return {"added": added, "removed": removed, "total": st.do_not_contact().len()}
