"""The synthetic population rendered as HL7 v2 and FHIR (H2's renderers) reads back to the same facts."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from connectors.fhir import parse_payload
from connectors.hl7v2 import parse_message
from connectors.synthetic import RateLimiter, population
from screener.cli import main
from screener.events import Event

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def fact(e: Event) -> tuple[Any, ...]:
    return (
        e.kind,
        e.patient_id,
        e.code.system if e.code else None,
        e.code.value if e.code else None,
        e.value,
        e.unit,
        e.occurred_at,
        e.setting,
    )


@pytest.fixture(
    scope="module", params=[(0, 50), pytest.param((50, 100), marks=pytest.mark.slow)], ids=["first-50", "next-100"]
)
def patients(request: pytest.FixtureRequest) -> list[list[Event]]:
    """150 patients of seed 7: the first 50 in the loop, the next 100 in CI (the same patients as one
    ``generate(150)``: tests/unit/connectors/test_synthetic_population.py checks that)."""
    start, n = request.param
    return list(population.generate(n, seed=7, now=NOW, start_index=start))


def test_hl7v2_roundtrip_keeps_measurements_conditions_and_demographics(patients: list[list[Event]]) -> None:
    for events in patients:
        parsed = [e for m in population.to_hl7v2(events) for e in parse_message(m).events]
        # HL7 carries measurements, text observations, conditions and deaths (drugs/visits are not sent)
        sent = Counter(fact(e) for e in events if e.kind in ("measurement", "observation", "condition"))
        # (a W result also retracts its preliminary and abnormal-flag versions: auxiliary retractions, not facts)
        got = Counter(
            fact(e)
            for e in parsed
            if e.kind in ("measurement", "observation", "condition")
            and not (e.code and e.code.value.startswith("abnormal-flag"))
            and not e.event_id.endswith(("-p", "-flag"))
        )
        assert got == sent
        src = next(e.person for e in events if e.kind == "person")
        person = next(e.person for e in parsed if e.kind == "person")
        assert src is not None and person is not None
        assert (person.birth_date, person.sex, person.ethnic_group, person.nhs_number, person.postcode_district) == (
            src.birth_date,
            src.sex,
            src.ethnic_group,
            src.nhs_number,
            src.postcode_district,
        )


def test_fhir_roundtrip_keeps_every_clinical_fact(patients: list[list[Event]]) -> None:
    for events in patients:
        parsed = parse_payload(population.to_fhir(events)).events
        kinds = ("measurement", "observation", "condition", "drug", "procedure")
        assert Counter(fact(e) for e in parsed if e.kind in kinds) == Counter(
            fact(e) for e in events if e.kind in kinds
        )
        visits = [e for e in parsed if e.kind == "visit"]
        assert sorted((v.occurred_at, v.setting) for v in visits) == sorted(
            (e.occurred_at, e.setting) for e in events if e.kind == "visit"
        )


def test_synthetic_cli_canonical_dry_run_is_reproducible() -> None:
    args = ["connect", "synthetic", "--patients", "3", "--seed", "5", "--now", "2026-06-01T00:00:00Z", "--dry-run"]
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout and first.stdout.count('"kind":"person"') == 3


def test_synthetic_cli_hl7v2_to_stdout_parses() -> None:
    result = CliRunner().invoke(
        main, ["connect", "synthetic", "--patients", "2", "--format", "hl7v2", "--now", "2026-06-01T00:00:00Z"]
    )
    assert result.exit_code == 0, result.output
    messages = [line.replace("\\r", "\r") for line in result.stdout.splitlines() if line.startswith("MSH")]
    assert messages and all(parse_message(m).events for m in messages)


def test_rate_limiter_paces_with_an_injected_clock() -> None:
    t = [0.0]
    slept: list[float] = []
    pacer = RateLimiter(10, clock=lambda: t[0], sleep=lambda d: (slept.append(d), t.__setitem__(0, t[0] + d)))
    for _ in range(5):
        pacer.tick()
    assert t[0] == pytest.approx(0.5) and len(slept) == 5
