"""Feasibility counts and rule diffs against a small history (screener.feasibility, screener feasibility CLI)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
from click.testing import CliRunner

from screener.cli import main
from screener.events import parse_event
from screener.feasibility import as_of, disclosed, feasibility, month_steps, rules_diff
from screener.rules import loads_study
from screener.state import PatientState, apply_events

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

STUDY = """
study:
  id: FEAS-T2DM
  title: "Type 2 diabetes with a high HbA1c"
  summary: "Test study."
  sponsor: non-commercial
  portfolio: true
  target: {target}
  opens: 2025-01-01
  closes: 2027-12-31
  team: t
concepts:
  t2dm: {{icd10: [E11]}}
  hba1c: {{loinc: ["4548-4"], unit: mmol/mol}}
include:
  adult: age >= 18
  diabetic: t2dm|ever
  high_hba1c: hba1c|latest('1y') >= {threshold}
"""


def _study(threshold: int = 58, target: int = 100) -> object:
    return loads_study(STUDY.format(threshold=threshold, target=target), "feas.yaml")


def _event(pid: str, n: int, **fields: object) -> dict[str, object]:
    return {"event_id": f"{pid}-{n}", "source": "test", "patient_id": pid, **fields}


def _history() -> tuple[pl.DataFrame, pl.DataFrame, dict[str, dict[str, object]]]:
    """40 patients: patient k is diagnosed k*9 days before AT (so they become eligible month by month), HbA1c
    60 (eligible) for even k and 55 for odd k (eligible only with threshold 55); patient 'late' has a fact
    dated long ago but recorded yesterday; 'dnc' opted out."""
    events: list[dict[str, object]] = []
    truth: dict[str, dict[str, object]] = {}
    for k in range(40):
        pid = f"p{k:02d}"
        dx = AT - timedelta(days=k * 9 + 1)
        hb = 60 if k % 2 == 0 else 55
        setting = "community" if k % 3 else "hospital"
        events.append(
            _event(
                pid,
                0,
                kind="person",
                occurred_at="2020-01-01T00:00:00Z",
                setting=setting,
                person={"birth_date": "1960-01-01", "sex": "F", "imd_decile": 1 + k % 10, "ethnic_group": "white"},
            )
        )
        events.append(
            _event(pid, 1, kind="condition", code={"system": "ICD10", "value": "E11.9"}, occurred_at=dx.isoformat())
        )
        events.append(
            _event(
                pid,
                2,
                kind="measurement",
                code={"system": "LOINC", "value": "4548-4"},
                value=hb,
                unit="mmol/mol",
                occurred_at=dx.isoformat(),
            )
        )
        truth[pid] = {"dx": dx, "hb": hb}
    for pid in ("dnc",):
        events.append(
            _event(pid, 0, kind="person", occurred_at="2020-01-01T00:00:00Z", person={"birth_date": "1960-01-01"})
        )
        events.append(
            _event(
                pid, 1, kind="condition", code={"system": "ICD10", "value": "E11"}, occurred_at="2026-01-01T00:00:00Z"
            )
        )
        events.append(
            _event(
                pid,
                2,
                kind="measurement",
                code={"system": "LOINC", "value": "4548-4"},
                value=70,
                unit="mmol/mol",
                occurred_at="2026-11-01T00:00:00Z",
            )
        )
        events.append(
            _event(
                pid,
                3,
                kind="consent",
                code={"system": "local", "value": "do-not-contact"},
                occurred_at="2026-11-02T00:00:00Z",
            )
        )
    state, _ = apply_events(PatientState(), [parse_event(e) for e in events])
    return state.persons, state.facts, truth


def test_disclosure_rule() -> None:
    assert [disclosed(n) for n in (0, 1, 7, 8, 12, 13, 100)] == [0, None, None, 10, 10, 15, 100]


def test_month_steps_are_calendar_months_oldest_first() -> None:
    steps = month_steps(datetime(2026, 3, 31, 9, tzinfo=UTC), 2)
    assert [s.date().isoformat() for s in steps] == ["2026-01-31", "2026-02-28", "2026-03-31"]


def test_counts_now_and_the_monthly_series_add_up() -> None:
    persons, facts, truth = _history()
    result = feasibility(persons, facts, _study(), AT, months=6)
    eligible_now = [p for p, t in truth.items() if t["hb"] >= 58 and AT - t["dx"] <= timedelta(days=365)]
    assert result.eligible == len(eligible_now) == 20
    assert result.possible == 0
    # first eligible in each month: eligible at the month's end, not at any earlier end (nor the start)
    steps = month_steps(AT, 6)
    expected = []
    for i in range(1, len(steps)):
        expected.append(
            sum(1 for p in eligible_now if steps[i - 1] < truth[p]["dx"] <= steps[i])  # type: ignore[operator]
        )
    assert [n for _t, n in result.monthly] == expected
    assert result.new_eligible == sum(expected)
    # the opted-out patient is never counted
    assert result.eligible + result.possible == 20
    assert sum(result.breakdown["setting"].values()) == 20


def test_output_is_disclosure_controlled() -> None:
    persons, facts, _ = _history()
    data = feasibility(persons, facts, _study(), AT, months=6).to_json()
    assert data["eligible"] == 20
    per_month = [m["patients"] for m in data["new_eligible_per_month"]]  # type: ignore[index]
    assert all(v is None or v == 0 or v % 5 == 0 for v in per_month)
    assert None in per_month  # 3-4 new patients a month: suppressed
    quintiles = data["breakdown"]["imd_quintile"]  # type: ignore[index]
    assert all(v is None or v % 5 == 0 for v in quintiles.values())


def test_a_fact_recorded_after_the_instant_is_not_used() -> None:
    persons, facts, _ = _history()
    at = AT - timedelta(days=30)
    late = facts.filter(pl.col("patient_id") == "p00").with_columns(
        pl.lit(AT - timedelta(days=1)).cast(pl.Datetime("us", "UTC")).alias("recorded_at")
    )
    facts2 = pl.concat([facts.filter(pl.col("patient_id") != "p00"), late])
    assert "p00" not in as_of(persons, facts2, at).facts["patient_id"].to_list()
    assert "p00" in as_of(persons, facts2, AT).facts["patient_id"].to_list()


def test_a_patient_known_only_later_is_not_counted_earlier() -> None:
    persons, facts, truth = _history()
    at = AT - timedelta(days=200)
    known = set(as_of(persons, facts, at).facts["patient_id"].unique().to_list())
    assert known == {p for p, t in truth.items() if t["dx"] <= at}


def test_rules_diff_lists_the_patients_an_edit_adds_and_removes() -> None:
    persons, facts, truth = _history()
    old, new = _study(58), _study(55)
    result = rules_diff(persons, facts, old, new, AT)
    in_year = {p for p, t in truth.items() if AT - t["dx"] <= timedelta(days=365)}
    assert result.added == sorted(p for p in in_year if truth[p]["hb"] == 55)
    assert result.removed == []
    back = rules_diff(persons, facts, new, old, AT)
    assert back.removed == result.added
    assert back.removed_by == {"high_hba1c": len(result.added)}
    assert back.unchanged == 20


def test_cli_feasibility_and_diff_from_an_events_file(tmp_path: Path) -> None:
    persons, facts, _ = _history()
    # write the history back out as canonical events: rebuild from the same generator
    events_path = tmp_path / "history.ndjson"
    import screener.events as ev

    raw = []
    for row in persons.iter_rows(named=True):
        if row["patient_id"] == "dnc":
            continue
        raw.append(
            _event(
                row["patient_id"],
                0,
                kind="person",
                occurred_at="2020-01-01T00:00:00Z",
                setting=row["setting"],
                person={"birth_date": str(row["birth_date"]), "imd_decile": row["imd_decile"]},
            )
        )
    for i, row in enumerate(facts.iter_rows(named=True)):
        e = _event(
            row["patient_id"],
            100 + i,
            kind=row["kind"],
            code={"system": row["system"], "value": row["code"]},
            occurred_at=row["occurred_at"].isoformat(),
        )
        if row["value"] is not None:
            e.update(value=row["value"], unit=row["unit"])
        raw.append(e)
    events_path.write_text("\n".join(json.dumps(ev.event_dict(parse_event(e))) for e in raw) + "\n")
    old = tmp_path / "old.yaml"
    new = tmp_path / "new.yaml"
    old.write_text(STUDY.format(threshold=58, target=100))
    new.write_text(STUDY.format(threshold=55, target=100))
    runner = CliRunner()
    at = "--at=2026-11-30T12:00:00Z"
    out = runner.invoke(main, ["feasibility", str(new), "--events", str(events_path), at, "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["eligible"] == 40
    out = runner.invoke(
        main, ["rules", "diff", str(old), str(new), "--events", str(events_path), at, "--show-patients"]
    )
    assert out.exit_code == 0, out.output
    assert "Added to the worklist: **" in out.output
    added = rules_diff(persons, facts, _study(58), _study(55), AT).added
    assert f"Added to the worklist: **{len(added)}**" in out.output
    assert ", ".join(added) in out.output
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"event_id": "x"}\n')
    out = runner.invoke(main, ["feasibility", str(new), "--events", str(bad)])
    assert out.exit_code != 0
    assert "bad.ndjson:1" in out.output


def test_cli_reads_the_history_store(tmp_path: Path) -> None:
    """`--store URL` reads what the engine wrote: the same figures as from the frames themselves."""
    from screener.events import parse_event as parse
    from screener.history import open_store
    from screener.state import events_to_frames

    events = []
    for k in range(12):
        pid = f"s{k:02d}"
        events += [
            _event(pid, 0, kind="person", occurred_at="2020-01-01T00:00:00Z", person={"birth_date": "1960-01-01"}),
            _event(pid, 1, kind="condition", code={"system": "ICD10", "value": "E11"}, occurred_at="2026-10-01"),
            _event(
                pid,
                2,
                kind="measurement",
                code={"system": "LOINC", "value": "4548-4"},
                value=60,
                unit="mmol/mol",
                occurred_at="2026-10-01T10:00:00Z",
            ),
        ]
    persons_upd, facts, control = events_to_frames([parse(e) for e in events])
    store = open_store(tmp_path / "store")
    assert store.append(0, facts, persons_upd, control, offset=len(events))
    rule = tmp_path / "s.yaml"
    rule.write_text(STUDY.format(threshold=58, target=100))
    out = CliRunner().invoke(
        main,
        ["feasibility", str(rule), "--store", str(tmp_path / "store"), "--at=2026-11-30T12:00:00Z", "--format", "json"],
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["eligible"] == 10  # 12 patients, rounded to the nearest 5
