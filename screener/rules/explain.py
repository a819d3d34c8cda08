"""Explain one patient against one study: every criterion (nested included), its value and its evidence."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from screener.errors import EventError, RuleError
from screener.events import Event, parse_event
from screener.rules.model import Study
from screener.rules.screen import screen_detail
from screener.state import PatientState, apply_events

__all__ = ["Explanation", "ExplanationRow", "explain", "format_table", "load_history"]


@dataclass(frozen=True)
class ExplanationRow:
    name: str
    group: str
    depth: int
    result: bool | None
    evidence: str


@dataclass(frozen=True)
class Explanation:
    study_id: str
    now: datetime
    outcome: str
    rows: tuple[ExplanationRow, ...]


def load_history(path: str | Path) -> list[Event]:
    """Events of a history file ``{"person": {...}, "events": [...]}`` (the test-case shape, JSON).

    ``person`` may carry ``setting`` and ``site``; ``event_id``, ``source`` and ``patient_id`` are filled in.

    :raises EventError: naming the event and the field that is wrong.
    """
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EventError(f"cannot read patient history {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise EventError("a patient history must be a JSON object", expected='{"person": {...}, "events": [...]}')
    person = dict(doc.get("person") or {})
    pid = str(doc.get("patient_id") or "PATIENT")
    pevent: dict[str, Any] = {
        "event_id": "person",
        "source": "history",
        "kind": "person",
        "patient_id": pid,
        "occurred_at": "1900-01-01T00:00:00+00:00",
        "person": {k: v for k, v in person.items() if k not in ("setting", "site")},
    }
    for k in ("setting", "site"):
        if person.get(k) is not None:
            pevent[k] = person[k]
    events = [parse_event(pevent)]
    for i, raw in enumerate(doc.get("events") or []):
        if not isinstance(raw, dict):
            raise EventError(f"event {i + 1} must be an object")
        d = {"event_id": f"e{i + 1}", "source": "history", "patient_id": pid, **raw}
        occurred = d.get("occurred_at")
        if isinstance(occurred, str) and len(occurred) == 10:
            d["occurred_at"] = occurred + "T00:00:00+00:00"
        try:
            events.append(parse_event(d))
        except EventError as exc:
            raise EventError(f"event {i + 1}: {exc}") from exc
    return events


def explain(study: Study, events: list[Event] | PatientState, now: datetime) -> Explanation:
    """Evaluate one patient's history (events or a one-patient state) against ``study`` at ``now``."""
    state = events if isinstance(events, PatientState) else apply_events(PatientState(), events)[0]
    if state.persons.height != 1:
        raise RuleError(f"explain needs exactly one patient, got {state.persons.height}", file=study.path)
    row = screen_detail(state, study, now).row(0, named=True)
    rows: list[ExplanationRow] = []

    def walk(c: Any, depth: int) -> None:
        rows.append(ExplanationRow(c.name, c.group, depth, row[c.name], row[f"{c.name}:evidence"]))
        for child in c.children:
            walk(child, depth + 1)

    for c in study.criteria:
        walk(c, 0)
    return Explanation(study.id, now, row["outcome"], tuple(rows))


def _word(v: bool | None) -> str:
    return "unknown" if v is None else ("true" if v else "false")


def format_table(e: Explanation) -> str:
    """A fixed-width text table: criterion, group, value, evidence; then the outcome."""
    header = ("criterion", "group", "value", "evidence")
    body = [("  " * r.depth + r.name, r.group, _word(r.result), r.evidence) for r in e.rows]
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(3)]
    lines = [f"{e.study_id} at {e.now.isoformat()}"]
    for cells in [header, *body]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells[:3], widths, strict=True)) + "  " + cells[3])
    lines.append(f"outcome: {e.outcome}")
    return "\n".join(lines)
