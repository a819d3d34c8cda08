"""The nurse's and coordinator's pages: worklist, match, funnel, and the admin pages."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from screener.alerts.store import VIEWS, SqlStore
from screener.vocab import SETTINGS, MatchOutcome
from screener.web.deps import (
    STAGE_LABELS,
    Principal,
    Store,
    check_form_csrf,
    page_user,
    render,
    require_admin,
)

router = APIRouter()


@router.get("/", include_in_schema=False)
def home(_p: Annotated[Principal, Depends(page_user)]) -> Response:
    return RedirectResponse("/worklist", status_code=303)


def _filters(study: str | None, setting: str | None, outcome: str | None, view: str) -> dict[str, Any]:
    if view not in VIEWS:
        raise HTTPException(422, f"view must be one of {list(VIEWS)}")
    return {"study": study or None, "setting": setting or None, "outcome": outcome or None, "view": view}


VIEW_LABELS = {"open": "Open", "snoozed": "Snoozed", "closed": "Closed or no longer eligible", "all": "All"}
SORT_LABELS = {"urgency": "Most urgent first", "newest": "Newest first", "oldest": "Oldest first", "study": "By study"}
OUTCOME_LABELS: dict[MatchOutcome, str] = {"eligible": "Eligible", "possible": "Possibly eligible"}


def _empty_state(st: SqlStore, p: Principal, f: dict[str, Any], studies: list[dict[str, Any]]) -> dict[str, Any]:
    """Why the page has no rows, in words: no studies loaded yet, no matches yet (the feed may still be starting),
    or nothing with these filters (with how many are snoozed or closed)."""
    if not studies:
        return {"kind": "no_studies"}
    counts = {v: st.worklist_count(p.user, view=v) for v in ("all", "snoozed", "closed")}
    if counts["all"] == 0:
        started = max((s["updated_at"] for s in studies if s.get("updated_at")), default=None)
        return {"kind": "no_matches", "since": started}
    filtered = any(f.get(k) for k in ("study", "setting", "outcome"))
    return {"kind": "filtered" if filtered else "none_open", **counts}


@router.get("/worklist", response_class=HTMLResponse, include_in_schema=False)
def worklist_page(
    st: Store,
    request: Request,
    p: Annotated[Principal, Depends(page_user)],
    study: str | None = None,
    setting: str | None = None,
    outcome: str | None = None,
    view: str = "open",
    sort: str = "urgency",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    """One page of the worklist; ``?page=N`` and ``?sort=`` page and order it. The page refreshes itself with an
    HTML meta refresh every ``settings.worklist_refresh_s`` seconds (no script: the CSP allows none)."""
    f = _filters(study, setting, outcome, view)
    if sort not in SORT_LABELS:
        raise HTTPException(422, f"sort must be one of: {', '.join(SORT_LABELS)}")
    settings = request.app.state.settings
    size = int(getattr(settings, "worklist_page_size", 50))
    total = st.worklist_count(p.user, **f)
    pages = max(1, -(-total // size))
    page = min(page, pages)
    rows = st.worklist(p.user, **f, sort=sort, limit=size, offset=(page - 1) * size)
    seen = st.last_viewed_many(p.user.username, [r["token"] for r in rows])
    for r in rows:  # "changed": the engine changed it after this user last opened it
        r["changed"] = bool(r["token"] in seen and r["changed_at"] and r["changed_at"] > seen[r["token"]])
    st.audit(p.user.username, "view_worklist", detail={k: v for k, v in f.items() if v} | {"n": len(rows)})
    studies = st.studies(user=p.user)
    query = {
        k: v for k, v in {**f, "sort": sort}.items() if v and (k, v) not in (("view", "open"), ("sort", "urgency"))
    }
    return render(
        request,
        "worklist.html",
        p=p,
        rows=rows,
        filters=f,
        sort=sort,
        views=VIEW_LABELS,
        sorts=SORT_LABELS,
        studies=studies,
        settings_=SETTINGS,
        outcomes=OUTCOME_LABELS,
        done=request.query_params.get("done"),
        page=page,
        pages=pages,
        total=total,
        first=(page - 1) * size + 1,
        query=urlencode(query),
        refresh_s=int(getattr(settings, "worklist_refresh_s", 60)),
        empty=None if rows else _empty_state(st, p, f, studies),
    )


@router.get("/funnel", response_class=HTMLResponse, include_in_schema=False)
def funnel_page(st: Store, request: Request, p: Annotated[Principal, Depends(page_user)]) -> HTMLResponse:
    if p.user.role not in ("coordinator", "admin"):
        raise HTTPException(403, "coordinators and admins only")
    table: dict[str, dict[str, int]] = {}
    for r in st.funnel(p.user):
        table.setdefault(r["study_id"], {})[r["stage"]] = r["n"]
    st.audit(p.user.username, "view_funnel")
    return render(request, "funnel.html", p=p, table=table, stages=list(STAGE_LABELS))


# --- admin ---------------------------------------------------------------------------------------------
@router.get("/admin/dnc", response_class=HTMLResponse, include_in_schema=False)
def dnc_page(st: Store, request: Request, p: Annotated[Principal, Depends(page_user)]) -> HTMLResponse:
    require_admin(p)
    st.audit(p.user.username, "view_dnc")
    return render(request, "dnc.html", p=p, entries=st.dnc_entries(), message=request.query_params.get("msg"))


@router.post("/admin/dnc", include_in_schema=False)
def dnc_change(
    st: Store,
    p: Annotated[Principal, Depends(page_user)],
    op: Annotated[str, Form()],
    patient_ids: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    check_form_csrf(p, csrf_token)
    require_admin(p)
    ids = [x for x in patient_ids.replace(",", "\n").split() if x]
    if op == "add":
        n = st.dnc_add(ids, by=p.user.username, source="web")
        msg = f"added {n}"
    elif op == "remove":
        n = st.dnc_remove(ids, by=p.user.username)
        msg = f"removed {n}"
    else:
        raise HTTPException(422, "op must be add or remove")
    return RedirectResponse(f"/admin/dnc?msg={msg.replace(' ', '+')}", status_code=303)


@router.get("/admin/audit", response_class=HTMLResponse, include_in_schema=False)
def audit_page(st: Store, request: Request, p: Annotated[Principal, Depends(page_user)]) -> HTMLResponse:
    require_admin(p)
    entries = st.audit_entries(500)
    st.audit(p.user.username, "view_audit")
    return render(request, "audit.html", p=p, entries=entries)
