"""A re-screen against a few studies narrowed to the patients their gates let through and to the facts they read
(screener.engine._narrow) gives the match rows a screen of everyone with every fact gives."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from screener.engine._narrow import gated_patients, narrowing
from screener.rules import screen
from screener.state import PatientState
from tests._support.marks import first_fast
from tests._support.samples import sample_studies

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def studies() -> dict[str, Any]:
    return {s.id: s for s in sample_studies()}


@pytest.fixture(scope="module")
def population() -> PatientState:
    from connectors.synthetic.population import generate_frames

    persons, facts = generate_frames(3000, seed=5, now=NOW)
    return PatientState(persons=persons, facts=facts)


def _matches(state: PatientState, studies: list[Any]) -> pl.DataFrame:
    rows = screen(state, studies, NOW, evidence="outcomes", rows="matches")
    return rows.sort("study_id", "patient_id")


@pytest.mark.parametrize(
    "ids",
    [
        ["CKD-SGLT2-COMM"],  # one gate (type 2 diabetes ever)
        ["NAVIGATOR-R"],  # four gates: a patient needs facts for each
        ["SOUL-T2DM-R", "DAPA-HF-R"],  # two studies: the patients either lets through
    ],
)
def test_the_narrowed_screen_gives_the_same_matches_from_far_fewer_patients(
    studies: dict[str, Any], population: PatientState, ids: list[str]
) -> None:
    chosen = [studies[i] for i in ids]
    narrow = narrowing(chosen, NOW)
    assert narrow is not None and all(g is not None for g in narrow.gates)
    narrowed = narrow.apply(population)
    want = _matches(population, chosen)
    assert want.height > 0, "the population has matches for these studies"
    assert_frame_equal(_matches(narrowed, chosen), want)
    assert narrowed.persons.height < population.persons.height / 3
    assert narrowed.facts.height < population.facts.height / 10, "only the facts the studies read"
    # The rebuild worker's answer from the stored facts is the same set of patients.
    gates = narrow.gate_exprs()
    assert gates is not None
    found = gated_patients(population.facts.lazy(), gates)
    assert found.to_list() == narrowed.persons["patient_id"].sort().to_list()


def test_a_known_match_is_screened_and_a_study_without_gates_screens_everyone(
    studies: dict[str, Any], population: PatientState
) -> None:
    ckd = narrowing([studies["CKD-SGLT2-COMM"]], NOW)
    assert ckd is not None
    outside = population.persons.join(ckd.apply(population).persons, on="patient_id", how="anti")["patient_id"][0]
    kept = ckd.apply(population, keep=pl.Series([outside]))
    assert outside in kept.persons["patient_id"].to_list(), "a patient holding a match is screened (to close it)"
    # OPTIMISE-BP-R's inclusion criteria all read an attribute or are unknown without facts: no gate.
    for chosen in (["OPTIMISE-BP-R"], ["OPTIMISE-BP-R", "CKD-SGLT2-COMM"]):
        narrow = narrowing([studies[i] for i in chosen], NOW)
        assert narrow is not None and narrow.gate_exprs() is None
        whole = narrow.apply(population)
        assert whole.persons.height == population.persons.height
        assert_frame_equal(
            _matches(whole, [studies[i] for i in chosen]), _matches(population, [studies[i] for i in chosen])
        )


def test_studies_that_are_not_compiled_are_not_narrowed() -> None:
    from tests.unit.engine.conftest import MiniStudy

    assert narrowing([MiniStudy("X", icd10="E11")], NOW) is None
    assert narrowing([], NOW) is None


def _study(sid: str, include: str) -> str:
    return f"""\
study:
  id: {sid}
  title: "t"
  summary: "s"
  sponsor: non-commercial
  portfolio: false
  target: 10
  opens: 2020-01-01
  closes: 2035-12-31
  settings: [community, hospital]
  team: t
concepts:
  t2dm: {{icd10: [E11]}}
  htn: {{icd10: [I10]}}
include:
{include}
"""


def _people(log: Any, make_event: Any, codes: dict[str, list[str]]) -> None:
    for pid, icd10 in codes.items():
        log.publish("ev", make_event(kind="person", patient_id=pid, person={"birth_date": "1970-01-01"}, code=None))
        for code in icd10:
            log.publish("ev", make_event(patient_id=pid, code={"system": "ICD10", "value": code}))


# the rebuild's loads in its thread in the loop; in the worker process (a Python started at nice 10: seconds of
# wall time on a busy host) in CI. tests/unit/engine/test_rebuild_delta.py runs that worker's gate scan here.
@pytest.mark.parametrize("loads", first_fast("thread", "process"))
def test_a_rule_change_screens_only_the_gated_patients_and_still_closes_a_known_match(
    loads: str, settings: Any, make_event: Any, tmp_path: Path
) -> None:
    """The engine's wiring: the gate scan of the store (in the rebuild thread or its worker process), the
    catch-up's patients, the known matches."""
    from structlog.testing import capture_logs

    from screener.alerts.memory import MemoryStore
    from screener.clock import FixedClock
    from screener.history import open_store
    from screener.testing import InMemoryLog
    from tests._support.engines import started_engine

    rules = Path(settings.rules_dir)
    (rules / "dm.yaml").write_text(_study("DM", "  adult: age >= 18\n  diabetic: t2dm|ever\n"))
    log, store = InMemoryLog(2), MemoryStore()
    engine = started_engine(settings, log, store, clock=FixedClock(NOW), history=open_store(tmp_path / "h"))
    engine.rebuild_in_process = loads == "process"

    def drain(steps: int = 6) -> None:
        for _ in range(steps):
            engine.clock.advance(0.002)  # type: ignore[attr-defined]
            engine.step()

    stored = {f"S{i}": ["E11.9"] for i in range(4)} | {f"H{i}": ["I10"] for i in range(3)} | {"B0": ["E11.9", "I10"]}
    stored |= {f"N{i}": ["J45"] for i in range(12)}  # neither: ruled out by both studies' gates
    _people(log, make_event, stored)
    drain()
    engine.clock.advance(settings.snapshot_interval_s + 1)  # type: ignore[attr-defined]
    engine.step()
    engine._wait_snapshots()
    assert all(part.saved_offset == part.offset for part in engine._parts.values())
    _people(log, make_event, {"U0": ["E11.9", "I10"]})  # applied, not in the store at the rule change
    drain()
    dm = set(store.matches().filter(pl.col("study_id") == "DM")["patient_id"])
    assert dm == {"S0", "S1", "S2", "S3", "B0", "U0"}
    # DM now also needs hypertension: S0-S3 are ruled out by the new gate, without facts for it.
    (rules / "dm.yaml").write_text(_study("DM", "  adult: age >= 18\n  diabetic: t2dm|ever\n  hyp: htn|ever\n"))
    with capture_logs() as logs:
        drain(1)
        assert engine.rebuilding
        _people(log, make_event, {"L0": ["E11.9", "I10"]})  # during the rebuild
        drain(1)
        # swapped in now, or already by that step when the rebuild was quick (then finish_rebuild has nothing to do)
        engine.finish_rebuild(timeout=120)
        assert not engine.rebuilding
        drain()
    assert not engine._queue
    gated = sum(e["patients"] for e in logs if e["event"] == "rules_rebuild_gated")
    assert gated == 1, "of the stored patients only B0 has facts for both gates (U0 and L0 come from the catch-up)"
    rows = store.matches().filter(pl.col("study_id") == "DM")
    outcome = dict(zip(rows["patient_id"], rows["outcome"], strict=True))
    assert {p for p, o in outcome.items() if o in ("eligible", "possible")} == {"B0", "U0", "L0"}
    assert {p for p, o in outcome.items() if o == "ineligible"} == {"S0", "S1", "S2", "S3"}, "closed, with reason"
    everyone = len(stored) + 2
    screens = engine.metrics.registry.get_sample_value("screener_screens_total", {"trigger": "rules"})
    assert screens == everyone, "every patient counted once against the changed study, screened or ruled out"
    engine.close()


def test_selecting_from_a_live_views_parts_gives_what_selecting_then_narrowing_gives(
    studies: dict[str, Any], population: PatientState, make_event: Any
) -> None:
    from screener.events import dump_event
    from screener.ingest import decode_batch
    from screener.state import LiveState

    narrow = narrowing([studies["CKD-SGLT2-COMM"]], NOW)
    assert narrow is not None
    live = LiveState(population)
    ids = population.persons["patient_id"].sort()
    # Two patients the gate ruled out get a diagnosis: their rows are now in the view's tail.
    before = set(narrow.apply(population).persons["patient_id"])
    changed = [p for p in ids.slice(0, 500).to_list() if p not in before][:2]
    events = [make_event(patient_id=p, code={"system": "ICD10", "value": "E11.9"}) for p in changed]
    live.apply(*decode_batch([dump_event(e) for e in events]).frames)
    assert live.parts().tail_ids.len() == 2
    chunk = ids.slice(0, 500)
    got = narrow.select(live.parts(), chunk)
    assert got is not None
    want = narrow.apply(live.select(chunk))
    key = ["patient_id", "event_id"]
    assert_frame_equal(got.facts.sort(key), want.facts.sort(key))
    assert_frame_equal(got.persons.sort("patient_id"), want.persons.sort("patient_id"))
    assert set(changed) <= set(got.persons["patient_id"]), "now diabetic: through the gate, from the tail"


def test_the_workers_one_read_finds_the_same_delta_and_gated_patients(
    studies: dict[str, Any], population: PatientState, tmp_path: Path
) -> None:
    from screener.engine._delta import delta_and_gated, delta_facts
    from screener.history import open_store
    from screener.state import FactFilter

    store = open_store(tmp_path / "h")
    store.write_base(0, population.persons, population.facts, population.retracted, 7)
    others = [s for sid, s in studies.items() if sid != "CKD-SGLT2-COMM"]
    old_expr = pl.lit(False)
    for s in others:
        old_expr = old_expr | s.fact_filter()
    old, new = FactFilter(old_expr), FactFilter(old_expr | studies["CKD-SGLT2-COMM"].fact_filter())
    narrow = narrowing([studies["CKD-SGLT2-COMM"]], NOW)
    assert narrow is not None
    gates = narrow.gate_exprs()
    assert gates is not None
    got = delta_and_gated(store, 0, old, new, gates)
    want = delta_facts(store, 0, old, new)
    assert got is not None and want is not None and want[0] is not None and got[0] is not None
    assert want[0].height > 0 and got[1] == 7
    assert_frame_equal(got[0], want[0])
    assert got[2] is not None
    assert got[2].to_list() == narrow.apply(population).persons["patient_id"].sort().to_list()


def test_a_narrowing_that_cannot_be_built_screens_everything(
    studies: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import screener.engine._narrow as narrow_module

    def broken(study: Any, now: datetime) -> None:
        raise RuntimeError("a gate the rules cannot evaluate")

    monkeypatch.setattr(narrow_module, "_gates", broken)
    assert narrow_module.safe_narrowing([studies["CKD-SGLT2-COMM"]], NOW) is None
    with pytest.raises(RuntimeError):
        narrow_module.narrowing([studies["CKD-SGLT2-COMM"]], NOW)
