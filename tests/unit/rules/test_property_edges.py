"""Differential property test at the edges of v2's time arithmetic: compiled Polars path vs reference evaluator.

The broad v2 test (test_property_v2.py) rarely puts two facts exactly a gap apart. Here every history is a chain
of facts whose spacing is exactly one of the rule's windows or gaps, or one second either side, and whose periods
end exactly on such a step, so the inclusive ends of `episodes`, `after`/`before`, `continuous`,
`exposure_days`, `count_days`, `on_now` and `within` are crossed in almost every example. One rule checks all of
them at once; outcomes and every criterion's value must be identical.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from screener.rules import loads_study
from screener.rules.reference import reference_screen
from screener.rules.screen import screen_detail
from screener.rules.windows import parse_window
from tests.hypothesis_profiles import examples

STEPS = ["6h", "1d", "7d", "14d", "30d", "1mo", "90d"]
CONCEPTS = """\
concepts:
  dx:     {icd10: [E11]}
  drug:   {atc: [A10B]}
  statin: {atc: [C10AA]}
"""
CODES = {
    "dx": ("ICD10", "E11.9", "condition"),
    "drug": ("ATC", "A10BA02", "drug"),
    "statin": ("ATC", "C10AA05", "drug"),
}
NUDGE = [timedelta(0), timedelta(0), timedelta(0), timedelta(seconds=1), -timedelta(seconds=1)]


def criteria(w: str, g: str) -> dict[str, str]:
    """Every edge-sensitive construct over windows ``w`` and gaps ``g`` (counts compared with several values)."""
    out = {
        "after": f"dx|after(drug, '{w}')",
        "before": f"dx|before(drug, '{w}')",
        "after_filtered": f"dx[.status == 'active']|after(drug[.status != 'stopped'], '{g}')",
        "continuous": f"statin|continuous('{w}', '{g}')",
        "on_now": "statin|on_now",
        "within": f"dx|within('{w}')",
        "upcoming": f"drug|upcoming('{w}')",
    }
    for k in (1, 2, 3):
        out[f"episodes_{k}"] = f"dx|episodes('{g}') == {k}"
        out[f"episodes_w_{k}"] = f"dx|episodes('{g}', '{w}') == {k}"
        out[f"days_{k}"] = f"dx|count_days('{w}') == {k}"
    for k in (1, 2, 7, 8, 14, 15, 30, 31):
        out[f"exposure_{k}"] = f"statin|exposure_days('{w}') >= {k}"
    return out


@st.composite
def histories(draw: Any, now: Any, w: str, g: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    steps = [parse_window(s) for s in {w, g, *draw(st.lists(st.sampled_from(STEPS), max_size=1))}]
    persons, facts = [], []
    for i in range(draw(st.integers(1, 4))):
        pid = f"P{i}"
        persons.append({"patient_id": pid, "birth_date": date(1960, 1, 1), "sex": "F"})
        # the chain starts exactly one step before now (or at now), then walks by exact steps
        t = draw(st.sampled_from(steps)).start(now) if draw(st.integers(0, 3)) else now
        t -= draw(st.sampled_from([timedelta(0), *(s.start(now) - now for s in steps)]))
        for j in range(draw(st.integers(1, 6))):
            name = draw(st.sampled_from(list(CODES)))
            system, code, kind = CODES[name]
            step = draw(st.sampled_from(steps))
            end = None
            if name == "statin" and draw(st.integers(0, 2)):
                end = step.end(t) + draw(st.sampled_from(NUDGE))
                end = end if end >= t else None
            facts.append(
                {
                    "patient_id": pid,
                    "event_id": f"{pid}-{j:02d}",
                    "kind": kind,
                    "system": system,
                    "code": code,
                    "occurred_at": t,
                    "ended_at": end,
                    "status": draw(st.sampled_from(["active", "active", "completed", "stopped", "planned"])),
                    "qualifiers": [],
                }
            )
            nxt = (end or t) if draw(st.booleans()) else t  # the next fact follows this one or its period's end
            t = (step.end(nxt) if draw(st.integers(0, 3)) else step.start(nxt)) + draw(st.sampled_from(NUDGE))
    return persons, facts


@settings(
    max_examples=examples(200),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_edges_compiled_equals_reference(data, kit):
    w, g = data.draw(st.sampled_from(STEPS), label="window"), data.draw(st.sampled_from(STEPS), label="gap")
    text = (
        "study:\n  id: PROP-3\n  title: t\n  sponsor: commercial\n  target: 1\n  opens: 2026-01-01\n"
        "  closes: 2026-12-31\n  team: t\n" + CONCEPTS + f"include: {json.dumps(criteria(w, g))}\n"
    )
    study = loads_study(text, "edges.yaml")
    now = kit.NOW + timedelta(minutes=data.draw(st.sampled_from([0, 1, 60 * 12, 60 * 24 * 17])))
    persons, facts = data.draw(histories(now, w, g), label="history")
    state = kit.make_state(persons, facts)
    detail = {r["patient_id"]: r for r in screen_detail(state, study, now).to_dicts()}
    for ref in reference_screen(state, [study], now):
        pid = ref["patient_id"]
        assert detail[pid]["outcome"] == ref["outcome"], (pid, ref)
        for name, value in ref["results"].items():
            assert detail[pid][name] == value, (pid, name, value, detail[pid][f"{name}:evidence"])
