"""The nurse's and coordinator's pages: worklist, match, funnel, and the admin pages."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from screener.alerts.store import ACTIONS, DECLINED_REASONS, NOT_ELIGIBLE_REASONS, VIEWS, InvalidAction, SqlStore
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


@router.get("/worklist", response_class=HTMLResponse, include_in_schema=False)
def worklist_page(
    st: Store,
    request: Request,
    p: Annotated[Principal, Depends(page_user)],
    study: str | None = None,
    setting: str | None = None,
    outcome: str | None = None,
    view: str = "open",
) -> HTMLResponse:
    f = _filters(study, setting, outcome, view)
    rows = st.worklist(p.user, **f)
    st.audit(p.user.username, "view_worklist", detail={k: v for k, v in f.items() if v} | {"n": len(rows)})
    return render(
        request,
        "worklist.html",
        p=p,
        rows=rows,
        filters=f,
        views=VIEWS,
        studies=st.studies(user=p.user),
        settings_=("hospital", "community", "primary-care", "home"),
        outcomes=("eligible", "possible", "ineligible"),
        done=request.query_params.get("done"),
    )


def _match_or_404(st: SqlStore, p: Principal, token: str) -> dict[str, Any]:
    m = st.get_match(p.user, token)
    if m is None:
        st.audit(p.user.username, "view_match_denied", "match", token[:64])
        raise HTTPException(404, "no such match")
    st.audit(p.user.username, "view_match", "match", token)
    return m


@router.get("/matches/{token}", response_class=HTMLResponse, include_in_schema=False)
def match_page(st: Store, request: Request, token: str, p: Annotated[Principal, Depends(page_user)]) -> HTMLResponse:
    m = _match_or_404(st, p, token)
    return render(
        request,
        "match.html",
        p=p,
        m=m,
        actions=ACTIONS,
        not_eligible=NOT_ELIGIBLE_REASONS,
        declined=DECLINED_REASONS,
        today=st.clock().date(),
        error=None,
    )


@router.post("/matches/{token}/action", include_in_schema=False)
def match_action(
    st: Store,
    request: Request,
    token: str,
    p: Annotated[Principal, Depends(page_user)],
    action: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    until: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
) -> Response:
    check_form_csrf(p, csrf_token)
    try:
        until_d = date.fromisoformat(until) if until else None
        m = st.record_action(p.user, token, action, reason=reason or None, until=until_d, note=note)
    except (InvalidAction, ValueError) as exc:
        m = _match_or_404(st, p, token)
        return render(
            request,
            "match.html",
            status=422,
            p=p,
            m=m,
            actions=ACTIONS,
            not_eligible=NOT_ELIGIBLE_REASONS,
            declined=DECLINED_REASONS,
            today=st.clock().date(),
            error=str(exc),
        )
    if m is None:
        raise HTTPException(404, "no such match")
    return RedirectResponse(f"/worklist?done={action}", status_code=303)


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
