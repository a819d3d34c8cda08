"""The code -> studies index (screener.engine._affects) and the engine screening only the studies a batch affects.

Two properties: the index judges every fact key exactly as the studies' own ``fact_filter`` expressions do; and
for random batches over the sample studies (facts from their test cases, corrections, entered-in-error events,
merges, person updates, do-not-contact), the engine that screens only the affected studies records the same
matches as the one that screens every study for every touched patient, both equal to a full screen at the end.
Here that second property runs on a few fixed streams (two engines each, about a second a stream); its random
search over streams (:func:`check_affected_only_records_the_same_matches`) runs in
tests/integration/engine/test_affects_streams.py.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from screener.alerts.memory import MemoryStore
from screener.clock import FixedClock
from screener.engine import Engine
from screener.engine._affects import AffectsIndex
from screener.events import event_dict
from screener.metrics import Metrics
from screener.rules import load_studies, screen
from screener.state import LiveState
from screener.testing import InMemoryConsumer, InMemoryLog, InMemoryProducer
from tests._support.engines import still_settings
from tests.hypothesis_profiles import examples

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def studies() -> list[Any]:
    return [s for s in _loader([ROOT / "rules"]).studies if s.is_open(NOW)]


@pytest.fixture(scope="module")
def case_events(studies: list[Any]) -> list[dict[str, Any]]:
    """Every sample test case's events, as dicts (their codes reach every study)."""
    out: list[dict[str, Any]] = []
    for s in studies:
        for case in s.tests:
            out.extend(event_dict(e) for e in case.events)
    return out


def _expected(studies: list[Any], keys: pl.DataFrame) -> pl.DataFrame:
    rows = [keys.filter(s.fact_filter().fill_null(False)).with_columns(pl.lit(s.id).alias("study_id")) for s in studies]
    return pl.concat(rows).select("patient_id", "study_id").unique().sort(pl.all())


def test_the_index_judges_every_key_as_the_fact_filters_do(
    studies: list[Any], case_events: list[dict[str, Any]]
) -> None:
    codes = [(e["kind"], e["code"]["system"], e["code"]["value"]) for e in case_events if e.get("code")]
    # Spelling variants and near misses of the same codes: dots, case, spaces, a longer and a cut prefix code.
    variants = []
    for kind, system, code in codes:
        variants += [
            (kind, system, code.replace(".", "")),
            (kind, system, f" {code.lower()} "),
            (kind, system, code + "9"),
            (kind, system, code[:-1]),
            ("visit", system, code),
            ("registration", "local", "x"),
            (kind, "SNOMED" if system != "SNOMED" else "LOINC", code),
        ]
    keys = pl.DataFrame(codes + variants + [("condition", None, None)], schema=["kind", "system", "code"], orient="row")
    keys = keys.with_columns(pl.format("P{}", pl.int_range(pl.len())).alias("patient_id"))
    index = AffectsIndex(studies)
    assert index.keys == ["kind", "system", "code"]
    index.learn(keys.head(40))  # part of them cached first: the rest are judged on the next call
    got = index.pairs(keys).sort(pl.all())
    expected = _expected(studies, keys)
    assert expected.height > 100  # the keys reach the studies: the comparison is not vacuous
    assert got.equals(expected)
    # The pruning filter's fast judge: the same answers as the OR of the expressions.
    keep = keys.select(pl.any_horizontal([s.fact_filter().fill_null(False) for s in studies]))[:, 0]
    assert 0 < keep.sum() < keys.height
    assert index.keeps(keys.select("kind", "system", "code")).to_list() == keep.to_list()


def test_person_columns_reach_the_studies_that_read_them(studies: list[Any]) -> None:
    index = AffectsIndex(studies)
    assert index.columns["birth_date"] is None and index.columns["do_not_contact"] is None
    assert index.columns["location"] == frozenset()  # no criterion reads the person's location
    sex_readers = {s.id for s in studies if "sex" in s.attributes()}
    assert sex_readers and index.columns["sex"] == frozenset(sex_readers)


def batches(seed: int, studies: list[Any]) -> list[list[dict[str, Any]]]:
    """Six patients, each given a sample test case's events (so eligible and possible matches arise), then
    noise from other cases, re-sent event ids, corrections, entered-in-error events, merges, do-not-contact and
    setting changes, shuffled and cut into batches: all of it chosen by ``seed``."""
    rng = random.Random(seed)
    cases = [c for s in studies for c in s.tests]
    events: list[dict[str, Any]] = []
    for p in range(6):
        case = rng.choice(cases)
        for j, e in enumerate(case.events):
            ev = event_dict(e)
            ev["patient_id"], ev["event_id"] = f"P{p}", f"P{p}-{j}"
            events.append(ev)
    pool = [event_dict(e) for c in cases for e in c.events if e.kind != "person"]
    ids = [ev["event_id"] for ev in events]
    for i in range(rng.randint(0, 12)):
        ev = dict(rng.choice(pool))
        patient = f"P{rng.randrange(6)}"
        ev["patient_id"], ev["event_id"] = patient, rng.choice(ids) if rng.random() < 0.2 else f"n{i}"
        r = rng.random()
        if r < 0.2:
            ev["corrects"] = rng.choice(ids)
        elif r < 0.35:
            ev["event_id"], ev["status"] = rng.choice(ids), "entered-in-error"
        elif r < 0.45:
            ev = {"kind": "person", "person": {"merged_from": f"P{rng.randrange(6)}"}, "occurred_at": ev["occurred_at"]}
        elif r < 0.55:
            ev = {
                "kind": "consent",
                "code": {"system": "local", "value": "do-not-contact"},
                "status": rng.choice(["active", "resolved"]),
                "occurred_at": ev["occurred_at"],
            }
        elif r < 0.7:
            ev["setting"] = rng.choice(["primary-care", "inpatient", "outpatient", "emergency"])
        ev.setdefault("patient_id", patient)
        ev.setdefault("event_id", f"x{i}")
        ev.setdefault("source", "test")
        events.append(ev)
    rng.shuffle(events)
    n = len(events)
    cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(0, 4))))
    return [events[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]


_DEMO = """study:
  id: {id}
  title: t
  summary: s
  sponsor: non-commercial
  portfolio: false
  target: 1
  opens: 2020-01-01
  closes: 2035-12-31
  settings: [primary-care]
  team: t
concepts:
  htn: {{icd10: [I10]}}
include:
  old: {include}
exclude:
  htn_ever: htn|ever
"""


_LOADED: dict[str, Any] = {}


def _loader(paths: Any) -> Any:
    """The sample rules and two studies that match on demographics alone, loaded once for the module (loading
    them again for every engine would take seconds)."""
    if "rules" not in _LOADED:
        import shutil
        import tempfile

        folder = Path(tempfile.mkdtemp()) / "rules"
        shutil.copytree(ROOT / "rules", folder)
        (folder / "demo-a.yaml").write_text(_DEMO.format(id="DEMO-A", include="age >= 60"))
        (folder / "demo-b.yaml").write_text(_DEMO.format(id="DEMO-B", include="sex == 'F' || imd_decile <= 3"))
        _LOADED["rules"] = load_studies([folder])
        assert not _LOADED["rules"].errors, _LOADED["rules"].errors
    return _LOADED["rules"]


def _run(studies_dir: Path, tmp: Path, batches: list[list[dict[str, Any]]], affected_only: bool) -> Engine:
    log = InMemoryLog(partitions=2)
    engine = Engine(
        still_settings(studies_dir, tmp / ("on" if affected_only else "off")),
        MemoryStore(),
        metrics=Metrics(CollectorRegistry()),
        clock=FixedClock(NOW),
        consumer=InMemoryConsumer(log),
        producer=InMemoryProducer(log),
        loader=_loader,
    )
    engine.screen_affected_only = affected_only
    engine.start()
    for batch in batches:
        for ev in batch:
            log.append("ev", ev["patient_id"].encode(), json.dumps(ev).encode())
        while engine.records_processed < log.size("ev"):
            engine.step(overlap=False)
    return engine


def _recorded(engine: Engine) -> pl.DataFrame:
    m: pl.DataFrame = engine.store.matches()  # type: ignore[attr-defined]  # the memory store's test helper
    return m.select("study_id", "patient_id", "outcome", "criteria").sort("study_id", "patient_id")


def check_affected_only_records_the_same_matches(seed: int, studies: list[Any], tmp: Path) -> pl.DataFrame:
    """Runs the stream of ``seed`` through an engine that screens only the affected studies and one that screens
    every study, asserts they record the same matches, both equal to a full screen of the final state, and
    returns the recorded matches."""
    stream = batches(seed, studies)
    on = _run(ROOT / "rules", tmp, stream, affected_only=True)
    off = _run(ROOT / "rules", tmp, stream, affected_only=False)
    got, want = _recorded(on), _recorded(off)
    assert got.equals(want)
    assert on.metrics.screens.labels("event")._value.get() <= off.metrics.screens.labels("event")._value.get()
    # Both equal a full screen of the final state: every pair's last screen saw its final facts.
    for p in sorted(on._parts):
        whole = on._parts[p].state.to_state()
        part = screen(whole, studies, NOW, evidence="outcomes", rows="matches")
        flags = whole.persons.filter(pl.col("do_not_contact") | pl.col("deceased"))["patient_id"]
        final = part.filter(~pl.col("patient_id").is_in(flags.implode()))
        open_now = got.filter(pl.col("outcome").is_in(["eligible", "possible"]))
        here = whole.persons["patient_id"].filter(~whole.persons["patient_id"].is_in(flags.implode()))
        mine = open_now.filter(pl.col("patient_id").is_in(here.implode()))
        assert set(zip(mine["study_id"], mine["patient_id"], strict=True)) == set(
            zip(final["study_id"], final["patient_id"], strict=True)
        )
    on.close()
    off.close()
    return got


#: A stream whose noise holds corrections, retractions, merges and do-not-contact, cut into four batches, and
#: whose matches include eligible and possible ones (the test checks both, so a changed generator cannot make it
#: vacuous).
FIXED_SEEDS = (23,)


@pytest.mark.parametrize("seed", FIXED_SEEDS)
def test_screening_only_affected_studies_records_the_same_matches(
    seed: int, studies: list[Any], tmp_path: Path
) -> None:
    stream = batches(seed, studies)
    events = [ev for batch in stream for ev in batch]
    assert len(stream) >= 3
    assert {"corrects" in ev for ev in events} == {True, False}
    assert any(ev.get("status") == "entered-in-error" for ev in events)
    assert any(ev["kind"] == "person" and "merged_from" in ev.get("person", {}) for ev in events)
    assert any(ev["kind"] == "consent" for ev in events)
    got = check_affected_only_records_the_same_matches(seed, studies, tmp_path)
    assert set(got["outcome"]) >= {"eligible", "possible"}  # the agreement is not vacuous


def _ev(**kw: Any) -> Any:
    from screener.events import parse_event

    base = {"source": "test", "occurred_at": "2026-11-01T09:00:00Z"}
    return parse_event({**base, **kw})


def test_changes_name_the_facts_that_came_and_went_and_the_person_columns() -> None:
    from screener.state import events_to_frames

    state = LiveState()
    first = [
        _ev(event_id="a", kind="person", patient_id="P1", person={"birth_date": "1950-01-01", "sex": "F"}),
        _ev(event_id="b", kind="condition", patient_id="P1", code={"system": "ICD10", "value": "E11.9"}),
        _ev(event_id="c", kind="condition", patient_id="P2", code={"system": "ICD10", "value": "I10"}),
    ]
    ch = state.apply_changes(*events_to_frames(first))
    assert ch.touched.to_list() == ["P1", "P2"]
    assert sorted(ch.persons.rows()) == [("P1", None), ("P2", None)]  # new person rows: every study
    second = [
        _ev(event_id="d", kind="condition", patient_id="P1", code={"system": "ICD10", "value": "N18.3"}, corrects="b"),
        _ev(event_id="e", kind="person", patient_id="P2", person={"sex": "M"}, occurred_at="2026-11-02T09:00:00Z"),
        _ev(event_id="f", kind="person", patient_id="P3", person={"merged_from": "P2"}),
    ]
    ch = state.apply_changes(*events_to_frames(second))
    # the corrected fact went, its correction came (both under P1, by their own codes)
    assert sorted(ch.facts.filter(pl.col("patient_id") == "P1")["code"].to_list()) == ["E11.9", "N18.3"]
    assert ch.whole.to_list() == ["P3"]  # merged into: every study
    assert ("P3", None) in ch.persons.rows()
    assert "P1" not in ch.persons["patient_id"].to_list()  # P1's person row did not change


def test_a_study_without_a_fact_filter_is_screened_for_every_touched_patient(studies: list[Any]) -> None:
    class Bare:
        id = "BARE"

    index = AffectsIndex([*studies[:2], Bare()])
    assert index.always == frozenset({"BARE"})
    state = LiveState()
    from screener.state import events_to_frames

    state.apply_changes(*events_to_frames([_ev(event_id="a", kind="person", patient_id="P1", person={"sex": "F"})]))
    ch = state.apply_changes(
        *events_to_frames(
            [_ev(event_id="b", kind="condition", patient_id="P1", code={"system": "local", "value": "x1"})]
        )
    )
    plan = index.plan(ch, [studies[0].id, studies[1].id, "BARE"])
    assert [(ids.to_list(), only) for ids, only in plan] == [(["P1"], frozenset({"BARE"}))]


@settings(max_examples=examples(60), deadline=None)
@given(
    need=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 7)), max_size=120),
    whole=st.lists(st.integers(31, 40), max_size=5, unique=True),
)
def test_the_screens_cover_every_needed_pair(need: list[tuple[int, int]], whole: list[int]) -> None:
    from screener.engine._cover import cover

    studies = [f"S{k}" for k in range(8)]
    pairs = pl.DataFrame(
        [(f"P{p:02d}", f"S{s}") for p, s in need], schema={"patient_id": pl.String, "study_id": pl.String}, orient="row"
    ).unique()
    everything = pl.Series("patient_id", [f"P{p}" for p in whole], dtype=pl.String)
    screens = cover(pairs, everything, studies)
    covered = {(p, s) for ids, only in screens for p in ids.to_list() for s in (only or studies)}
    assert set(pairs.iter_rows()) <= covered
    assert {(p, s) for p in everything.to_list() for s in studies} <= covered
    assert all(only is None or only < frozenset(studies) for _, only in screens)
    assert len(screens) <= len(studies) + 1


def test_studies_needed_by_the_same_patients_share_a_screen() -> None:
    from screener.engine._cover import cover

    rows = [(f"P{p:03d}", s) for p in range(300) for s in ("A1", "A2", "A3")]  # three replicas, same patients
    rows += [(f"Q{p:03d}", s) for p in range(300) for s in ("B1", "B2")]  # two more, other patients
    pairs = pl.DataFrame(rows, schema={"patient_id": pl.String, "study_id": pl.String}, orient="row")
    screens = cover(pairs, pl.Series("patient_id", [], dtype=pl.String), ["A1", "A2", "A3", "B1", "B2", "C"])
    got = sorted((ids.len(), sorted(only or [])) for ids, only in screens)
    # Merging the two would screen 600 patients x 5 studies instead of 300 x 3 + 300 x 2: kept apart.
    assert got == [(300, ["A1", "A2", "A3"]), (300, ["B1", "B2"])]


def _demographic_studies() -> list[Any]:
    return [s for s in _loader([ROOT / "rules"]).studies if s.id.startswith("DEMO")]


@pytest.fixture(scope="module")
def blank_studies() -> frozenset[str]:
    """The studies that rule out a patient with no facts, judged once (it screens every sample study)."""
    from screener.engine._affects import blank_ineligible

    studies = _loader([ROOT / "rules"]).studies
    assert len(_demographic_studies()) == 2
    blank = blank_ineligible(studies, lambda st_, ss, now: screen(st_, ss, now))
    # Every sample needs some fact; the two demographic studies can match on the person alone.
    assert blank == frozenset(s.id for s in studies if not s.id.startswith("DEMO"))
    return blank


@settings(max_examples=examples(40), deadline=None)
@given(
    birth=st.one_of(st.none(), st.dates(min_value=date(1920, 1, 1), max_value=date(2026, 11, 1))),
    sex=st.sampled_from([None, "F", "M", "O", "U"]),
    imd=st.one_of(st.none(), st.integers(1, 10)),
    setting=st.sampled_from([None, "primary-care", "inpatient", "outpatient", "emergency", "community"]),
    ethnic=st.sampled_from([None, "white", "asian", "black", "mixed", "other"]),
)
def test_a_blank_ineligible_study_rules_out_every_patient_without_its_facts(
    blank_studies: frozenset[str],
    birth: date | None,
    sex: str | None,
    imd: int | None,
    setting: str | None,
    ethnic: str | None,
) -> None:
    from screener.state import PERSONS_SCHEMA, PatientState

    studies = _loader([ROOT / "rules"]).studies
    blank = blank_studies
    row = {c: None for c in PERSONS_SCHEMA} | {"patient_id": "Q", "do_not_contact": False, "deceased": False}
    row |= {"birth_date": birth, "sex": sex, "imd_decile": imd, "setting": setting, "ethnic_group": ethnic}
    person = pl.DataFrame([row], schema=PERSONS_SCHEMA)
    result = screen(PatientState(persons=person), [s for s in studies if s.id in blank], NOW)
    assert set(result["outcome"].to_list()) == {"ineligible"}
