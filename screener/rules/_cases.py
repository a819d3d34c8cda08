"""The ``tests:`` block of a rule file: test cases with their events validated as canonical events."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

from screener.errors import did_you_mean
from screener.events import parse_event
from screener.rules._context import OUTCOMES, Context
from screener.rules._yaml import Map, Seq
from screener.rules.model import TestCase

__all__ = ["CasesMixin", "parse_datetime"]


def parse_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0, 0), tzinfo=UTC)
    if isinstance(value, str):
        try:
            return parse_datetime(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


class CasesMixin(Context):
    def tests(self, doc: Map, meta: dict[str, Any], names: set[str]) -> tuple[TestCase, ...]:
        section = doc.get("tests")
        if section is None:
            return ()
        if not isinstance(section, Seq):
            self.err("'tests' must be a list of test cases", doc.value_marks["tests"])
            return ()
        out = []
        allowed = ("name", "now", "person", "events", "expect", "criteria")
        for i, case in enumerate(section):
            cmark = section.marks[i]
            if not isinstance(case, Map):
                self.err("a test case must be a mapping (name, person, events, expect)", cmark)
                continue
            self.unknown_keys(case, allowed, "test case")
            tname = str(case.get("name") or f"test {i + 1}")
            now = datetime.combine(meta["opens"], time(12, 0), tzinfo=UTC)
            if "now" in case:
                parsed = parse_datetime(case["now"])
                if parsed is None:
                    self.err(
                        f"test '{tname}': 'now' must be a timestamp like 2026-06-01T09:00:00Z", case.value_marks["now"]
                    )
                else:
                    now = parsed
            expect = case.get("expect")
            if expect not in OUTCOMES:
                self.err(
                    f"test '{tname}': 'expect' must be one of {', '.join(OUTCOMES)}",
                    case.value_marks.get("expect", cmark),
                    did_you_mean(str(expect), OUTCOMES),
                )
            person = case.get("person") or Map()
            if not isinstance(person, Map):
                self.err(f"test '{tname}': 'person' must be a mapping", case.value_marks["person"])
                person = Map()
            events = self.test_events(tname, person, case.get("events"), case, now)
            crit: dict[str, bool | None] = {}
            expected = case.get("criteria") or Map()
            if not isinstance(expected, Map):
                self.err(
                    f"test '{tname}': 'criteria' must be a mapping name -> true/false/unknown",
                    case.value_marks["criteria"],
                )
                expected = Map()
            for cname, v in expected.items():
                if cname not in names:
                    self.err(
                        f"test '{tname}': unknown criterion '{cname}'",
                        expected.marks[cname],
                        did_you_mean(str(cname), names),
                    )
                elif v is None or v == "unknown":
                    crit[str(cname)] = None
                elif isinstance(v, bool):
                    crit[str(cname)] = v
                else:
                    self.err(
                        f"test '{tname}': expected value of '{cname}' must be true, false or unknown",
                        expected.value_marks[cname],
                    )
            out.append(TestCase(tname, now, dict(person), tuple(events), str(expect), crit, cmark[0], cmark[1]))
        return tuple(out)

    def test_events(self, tname: str, person: Map, events: Any, case: Map, now: datetime) -> list[Any]:
        from screener.errors import EventError

        pid = "TEST"
        out = []
        pfields = {k: v for k, v in person.items() if k not in ("setting", "site")}
        for k, v in list(pfields.items()):
            if isinstance(v, date):
                pfields[k] = v.isoformat()
        pevent: dict[str, Any] = {
            "event_id": "person",
            "source": "rules-test",
            "kind": "person",
            "patient_id": pid,
            "occurred_at": datetime(1900, 1, 1, tzinfo=UTC).isoformat(),
            "person": pfields,
        }
        for k in ("setting", "site"):
            if person.get(k) is not None:
                pevent[k] = person[k]
        try:
            out.append(parse_event(pevent))
        except EventError as exc:
            self.err(f"test '{tname}': person: {exc}", case.value_marks.get("person", case.mark))
        if events is None:
            return out
        if not isinstance(events, Seq):
            self.err(f"test '{tname}': 'events' must be a list", case.value_marks["events"])
            return out
        for j, ev in enumerate(events):
            if not isinstance(ev, Map):
                self.err(f"test '{tname}': an event must be a mapping", events.marks[j])
                continue
            d: dict[str, Any] = {"event_id": f"e{j + 1}", "source": "rules-test", "patient_id": pid}
            for k, v in ev.items():
                if k in ("occurred_at", "recorded_at", "ended_at"):
                    if isinstance(v, date) and not isinstance(v, datetime):
                        d[k] = v.isoformat()  # a calendar date stays one (the event is flagged date_only)
                    else:
                        ts = parse_datetime(v)
                        d[k] = ts.isoformat() if ts else v
                elif isinstance(v, Map):
                    d[k] = {kk: (str(vv) if kk == "value" else vv) for kk, vv in v.items()}
                else:
                    d[k] = v
            try:
                out.append(parse_event(d))
            except EventError as exc:
                self.err(f"test '{tname}': event {j + 1}: {exc}", events.marks[j])
        return out
