"""The match page: who, where, by when, why, who to call, and the forms that record what happened."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from screener.alerts.store import DECLINED_REASONS, NOT_ELIGIBLE_REASONS, InvalidAction, SqlStore
from screener.vocab import ACTIONS, DISMISSED_STAGES, Action
from screener.web.deps import Principal, Store, check_form_csrf, page_user, render
from screener.web.present import deadline, parse_day, time_left

router = APIRouter()

#: Actions without a reason or a date, recorded from the first form (in funnel order).
SIMPLE_ACTIONS = tuple(a for a in ACTIONS if a not in DISMISSED_STAGES and a != "snoozed")
ACTION_LABELS: dict[Action, str] = {
    "reviewed": "Reviewed",
    "approached": "Approached the patient",
    "consented": "Consented",
    "enrolled": "Enrolled",
    "not_eligible": "Not eligible",
    "declined": "Declined",
    "snoozed": "Snoozed",
}
REASON_LABELS = {**NOT_ELIGIBLE_REASONS, **DECLINED_REASONS}


def _match_or_404(st: SqlStore, p: Principal, token: str) -> dict[str, Any]:
    m = st.get_match(p.user, token)
    if m is None:
        st.audit(p.user.username, "view_match_denied", "match", token[:64])
        raise HTTPException(404, "no such match")
    st.audit(p.user.username, "view_match", "match", token)
    return m


def _page(
    st: SqlStore, request: Request, p: Principal, token: str, *, error: str | None = None, form: dict[str, str]
) -> HTMLResponse:
    last_seen = st.last_viewed(p.user.username, token)  # read before this view is audited
    m = _match_or_404(st, p, token)
    now = st.clock()
    due = deadline(m["criteria"])
    changed = bool(last_seen and m.get("changed_at") and m["changed_at"] > last_seen)
    return render(
        request,
        "match.html",
        status=422 if error else 200,
        p=p,
        m=m,
        simple_actions=SIMPLE_ACTIONS,
        action_labels=ACTION_LABELS,
        reason_labels=REASON_LABELS,
        not_eligible=NOT_ELIGIBLE_REASONS,
        declined=DECLINED_REASONS,
        example_day=f"{now + timedelta(days=7):%d/%m/%Y}",
        deadline=due,
        time_left=time_left(due[0], now) if due else None,
        changed=changed,
        last_seen=last_seen,
        error=error,
        form=form,
    )


@router.get("/matches/{token}", response_class=HTMLResponse, include_in_schema=False)
def match_page(st: Store, request: Request, token: str, p: Annotated[Principal, Depends(page_user)]) -> HTMLResponse:
    return _page(st, request, p, token, form={})


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
    """Record an action; on a mistake the page comes back (422) with the error in words and the input kept."""
    check_form_csrf(p, csrf_token)
    try:
        until_d = parse_day(until)
        m = st.record_action(p.user, token, action, reason=reason or None, until=until_d, note=note)
    except (InvalidAction, ValueError) as exc:
        form = {"action": action, "reason": reason, "until": until, "note": note}
        return _page(st, request, p, token, error=str(exc), form=form)
    if m is None:
        raise HTTPException(404, "no such match")
    return RedirectResponse(f"/worklist?done={action}", status_code=303)
