"""A seeded, reproducible synthetic hospital population for demos, tests and benchmarks (pure: no Kafka).

Two entry points that describe the *same* patients:

``generate(n, seed=, now=, start_index=)``   yields each patient's canonical events (person event first, then
                                             the facts in time order), for connectors and tests;
``generate_frames(n, seed=, now=)``          returns the state frames (``PERSONS_SCHEMA``, ``FACTS_SCHEMA``)
                                             directly, vectorised, for benchmarks of a million patients.

``apply_events(PatientState(), <all events of generate(n)>)`` equals ``generate_frames(n)`` row for row.

Reproducibility: every random draw is a counter-based hash of ``(seed, patient index, stream, k)``, so patient
``i`` is identical whatever the batch size, ``start_index`` or ``n``; pass ``now`` explicitly for identical
timestamps (the default is the current time, whole seconds). All clinical times are before ``now`` except
planned procedures.

The mix (documented choices):

- Ethnic group (ONS 2021 high-level, West Yorkshire Census 2021): White 76.6 %, Asian 15.8 %, Black 3.1 %,
  Mixed 2.5 %, Other 2.0 % of those with a stated group; 1 % have none stated (NHS category ``Z``). Asian
  patients are mostly Pakistani (category ``J``), as in Bradford and Kirklees.
- Deprivation: about 25 % in national IMD decile 1 overall (42 % of minority-ethnic patients, 20 % of White
  patients), falling to 6 % in decile 10.
- Ages 0-95 from a West Yorkshire-like pyramid; sex F 50.7 %, M 49.15 %, U 0.15 %.
- Settings: hospital, community and primary care (and home for some heart-failure patients); a patient's
  setting is where their latest record came from (as the state frames compute it).
- Records: about 23 facts per patient on average (22.7 at seed 0): recent care plus routine history, visits
  3-10 years ago and blood panels (Hb, sodium, potassium, creatinine/eGFR, ALT) 2-6 years ago, older than
  any sample study's look-back, so they make records realistic without moving any study's outcome.
- Event v2 content: repeat prescriptions are 28-day exposure periods (``ended_at``, ``completed`` once over;
  issues ~56 days apart leave gaps) with dose and route; most labs carry the laboratory's reference range;
  visits have an end, hospital ones are admissions (a ward as ``location``) or clinics, and hospital facts
  during a hospital visit carry its ``encounter_id`` (an acute stroke's admission is still open); plus GP
  registrations, allergies, immunizations, resolved acute episodes, planned procedures (after ``now``, no
  setting) and a coded smoking status (``value_code``): see :mod:`connectors.synthetic._records`.
- Control events (``_control_events``): ~1 % on the do-not-contact register (a ``consent`` event, code
  ``local/do-not-contact``, status ``active``); deaths by age (~0.6 % overall, 6 % of the over-80s), a
  ``death`` event 1-90 days after the last record; ~1.2 % of patients with one lab result later marked
  ``entered-in-error`` (an event that ``corrects`` it). ``generate_frames`` applies them as
  ``screener.state.apply_events`` would: flags set, the retracted result left out.
- Identifiers: ``patient_id`` is the hospital number ``RXX`` + 9 digits; the NHS number (in the person event
  only) is in the ``999`` test range reserved for synthetic data, with a valid modulus 11 check digit. It is
  not guaranteed unique (the ``999`` range has ~0.9 M valid numbers); ``patient_id`` is the key.
- Clinical content is *enriched* compared with a general population (it is a hospital's caseload) so that a
  few thousand patients already give every sample study in ``rules/`` eligible patients, near misses
  (eGFR 60-62, 17-year-olds, a stroke 6 h 1-40 min ago, NT-proBNP just under 400, ...) and unknowns (no recent
  eGFR, no ECOG, no glucose yet, no pain score, ...). Units vary as real feeds do: HbA1c in % or mmol/mol,
  creatinine in umol/L or mg/dL, glucose in mmol/L or mg/dL, and about 1 % of the diabetes clinic's eGFR results
  in an unconvertible unit (``mL/min``), which the rules leave out and count.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from connectors.synthetic._formats import to_fhir, to_hl7v2
from screener.connector.common import is_valid_nhs_number, nhs_check_digit  # re-exported (the one NHS check)
from screener.events import Event
from screener.state import FACTS_SCHEMA, PERSONS_SCHEMA, upgrade_facts, upgrade_persons
from screener.vocab import NOT_DONE_STATUSES

from ._acute import _asthma, _heart_failure, _stroke, _womens_health
from ._base import (
    _GROUPS,
    _HOME_SITE,
    _SETTINGS,
    CENSUS_ETHNIC_MIX,
    DAY,
    HOUR,
    MINUTE,
    SOURCE,
    YEAR,
    _nhs_numbers,
    _Rand,
)
from ._chronic import _breast, _diabetes, _routine
from ._control import _EVENT_COLUMNS, _control_events, _merge
from ._events import _fact_event, _person_event
from ._facts import NO_SETTING, _ago, _expand, _Facts, _labels, _people
from ._inpatient import inpatients
from ._records import records
from ._trials import trials
from ._visits import _link_encounters, _visits

__all__ = [
    "CENSUS_ETHNIC_MIX",
    "SOURCE",
    "generate",
    "generate_frames",
    "generate_tables",
    "is_valid_nhs_number",
    "nhs_check_digit",
    "to_fhir",
    "to_hl7v2",
]


def _block(start: int, stop: int, seed: int, now: datetime) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Patients ``[start, stop)``: (persons with person-event extras, facts, control events).

    Facts and control events have the ``_EVENT_COLUMNS``; control events (consent, death, retractions) also an
    ``order`` key that places them among the facts (see :func:`_merge`).
    """
    r = _Rand(seed)
    now_us = int(now.timestamp() * 1_000_000)
    idx = np.arange(start, stop, dtype=np.int64)
    p, extra = _people(r, idx)
    m = len(idx)
    f = _Facts()
    age, female = p.age, p.female
    adult = age >= 18
    override = np.full(m, -1, dtype=np.int64)  # a module may move a patient's care setting

    # -- everyone: visits --------------------------------------------------------------------------------
    # A hospital visit is an admission (30 %: 1-10 days, on a ward) or an outpatient clinic (1-3 hours); other
    # contacts last 15-30 minutes. Each visit's event id is its encounter id; hospital facts during it link to it.
    n_visits = 1 + r.poisson(idx, "visit.n", 2.5)
    rows, k = _expand(n_visits)
    vdays = r.u(idx[rows], "visit.t", k) * np.minimum(3 * YEAR, np.maximum(age[rows] * YEAR - 1, 0.0))
    hosp_visit = r.u(idx[rows], "visit.where", k) < 0.25
    _visits(f, r, idx, rows, k, _ago(now_us, vdays), hosp_visit, now_us, "visit")
    # Older routine contacts, 3-10 years ago (never before birth): history no sample study looks back to.
    n_old = r.poisson(idx, "visit.old.n", np.where(age >= 60, 3.0, 2.0))
    rows, k = _expand(n_old)
    odays = r.uniform(idx[rows], "visit.old.t", 3 * YEAR, 10 * YEAR, k)
    born = odays < age[rows] * YEAR - 1
    hosp_old = r.u(idx[rows], "visit.old.where", k) < 0.2
    _visits(f, r, idx, rows[born], k[born], _ago(now_us, odays[born]), hosp_old[born], now_us, "visit.old")

    # -- type 2 / type 1 diabetes and kidney function -------------------------------------------------------
    p_dm = np.select([age < 30, age < 45, age < 65], [0.002, 0.035, 0.10], 0.16)
    p_dm = p_dm * np.select([p.group == 1, p.group == 2], [2.0, 1.5], 1.0) * np.where(p.imd <= 2, 1.25, 1.0)
    dm = r.u(idx, "dm") < p_dm
    t1 = (~dm) & (age >= 2) & (r.u(idx, "t1dm") < 0.005)
    _diabetes(f, r, p, dm, t1, now_us)

    # -- routine care for adults ---------------------------------------------------------------------------
    _routine(f, r, p, adult, dm | t1, now_us)

    # -- early breast cancer ------------------------------------------------------------------------------
    recent_bc = female & (age >= 30) & (r.u(idx, "bc") < np.where((age >= 40) & (age < 80), 0.03, 0.01))
    override[recent_bc] = 0
    _breast(f, r, p, recent_bc, now_us)

    # -- asthma ------------------------------------------------------------------------------------------
    _asthma(f, r, p, now_us)

    # -- heart failure -------------------------------------------------------------------------------------
    p_hf = np.select([age < 45, age < 65, age < 80], [0.0, 0.012, 0.05], 0.10)
    hf = r.u(idx, "hf") < p_hf
    home = hf & (r.u(idx, "hf.home") < 0.2)
    override[home] = 3
    override[hf & ~home & (p.setting == 2)] = 1  # HF nurses see primary-care patients in community clinics
    _heart_failure(f, r, p, hf, now_us)

    # -- acute stroke (last 24 h) and stroke history ------------------------------------------------------
    stroke = (age >= 45) & (r.u(idx, "stroke") < 0.012)
    override[stroke] = 0
    _stroke(f, r, p, stroke, now_us)

    # -- women's health --------------------------------------------------------------------------------
    _womens_health(f, r, p, now_us)

    # -- the detail the v2 sample studies read; admissions in progress now ---------------------------------
    trials(f, r, p, hf, recent_bc, now_us)
    override[inpatients(f, r, p, now_us)] = 0

    # -- registrations, allergies, immunizations, resolved episodes, planned procedures, smoking status -----
    records(f, r, p, now_us)

    # -- frames --------------------------------------------------------------------------------------------
    setting = np.where(override >= 0, override, p.setting)
    birth = np.datetime64(now.date(), "D") - np.floor(age * YEAR).astype("timedelta64[D]")
    site_by_setting = np.stack(
        [extra["hosp_site"], extra["comm_site"], extra["gp_site"], np.full(m, _HOME_SITE, dtype=object)], axis=1
    )
    persons = pl.DataFrame(
        {
            "pos": np.arange(m, dtype=np.int64),
            "patient_id": np.char.add("RXX", (100_000_000 + idx).astype(str)),
            "birth_date": birth.astype("datetime64[D]"),
            "sex": extra["sex"].astype(str),
            # Built by index, not from a numpy object array: Polars infers an object array's type from its first
            # element, so a block whose first patient has no stated group (None) became an Object column and
            # failed to cast to String (seed 23, patient 4000).
            "ethnic_group": _labels(p.group, _GROUPS),
            "ethnic_category": extra["letter"],
            "lsoa": extra["lsoa"].astype(str),
            "imd_decile": p.imd.astype(np.int8),
            "postcode_district": extra["district"],
            "home_setting": _labels(setting, _SETTINGS),
            "site_hospital": extra["hosp_site"],
            "site_community": extra["comm_site"],
            "site_primary-care": extra["gp_site"],
            "site_home": np.full(m, _HOME_SITE, dtype=object),
            "home_site": site_by_setting[np.arange(m), setting],
            "nhs_number": _nhs_numbers(idx, seed),
        },
        schema_overrides={
            "ethnic_group": pl.String,
            "ethnic_category": pl.String,
            "postcode_district": pl.String,
            "home_setting": pl.String,
            "site_hospital": pl.String,
            "site_community": pl.String,
            "site_primary-care": pl.String,
            "site_home": pl.String,
            "home_site": pl.String,
        },
    )
    facts = f.frame()
    # Every fact happens before `now` (a record in the future would be a data error, not a near miss).
    # A planned procedure is the only fact after `now` (that is what makes it planned).
    planned = pl.col("status").is_in(NOT_DONE_STATUSES)
    whole = pl.col("t") // 1_000_000 * 1_000_000
    facts = facts.with_columns(
        pl.when(planned).then(whole).otherwise(whole.clip(upper_bound=now_us - MINUTE)).alias("t")
    )
    facts = facts.with_columns(
        pl.when(pl.col("end").is_not_null())
        .then(pl.max_horizontal(pl.col("end") // 1_000_000 * 1_000_000, "t"))
        .alias("end")
    )
    facts = (
        facts.join(
            persons.select(
                "pos", "patient_id", "home_setting", "site_hospital", "site_community", "site_primary-care", "site_home"
            ),
            on="pos",
            how="left",
        )
        .with_columns(
            pl.when(pl.col("setting") >= 0)
            .then(
                pl.col("setting").replace_strict(list(range(4)), list(_SETTINGS), return_dtype=pl.String, default=None)
            )
            .when(pl.col("setting") == NO_SETTING)
            .then(pl.lit(None, pl.String))
            .otherwise(pl.col("home_setting"))
            .alias("setting")
        )
        .with_columns(
            pl.when(pl.col("setting") == "hospital")
            .then(pl.col("site_hospital"))
            .when(pl.col("setting") == "community")
            .then(pl.col("site_community"))
            .when(pl.col("setting") == "primary-care")
            .then(pl.col("site_primary-care"))
            .when(pl.col("setting") == "home")
            .then(pl.col("site_home"))
            .alias("site")
        )
        .sort(["pos", "t", "kind", "code", "value"], maintain_order=True, nulls_last=True)
        .with_columns(pl.int_range(1, pl.len() + 1).over("pos").alias("ordinal"))
        .with_columns(
            pl.format("syn{}-{}-f{}", pl.lit(seed), pl.col("patient_id"), pl.col("ordinal")).alias("event_id"),
            pl.lit(None, dtype=pl.String).alias("corrects"),
        )
        .pipe(_link_encounters, seed)
        .select(_EVENT_COLUMNS)
    )
    # The person's setting and site are those of their latest fact (consent, death and entered-in-error events
    # do not move a patient, as in screener.state); a retracted fact still counted when it arrived.
    # A fact with no setting (a planned procedure) does not move the patient; its time is not a "last record".
    last = facts.group_by("pos").agg(
        pl.col("t").min().alias("first_t"),
        pl.col("t").filter(pl.col("status") != "planned").max().alias("last_t"),
        pl.col("setting").drop_nulls().last(),
        pl.col("site").filter(pl.col("setting").is_not_null()).last(),
        pl.col("location").drop_nulls().last(),
    )
    persons = persons.join(last, on="pos", how="left").with_columns(
        pl.coalesce("setting", "home_setting").alias("setting"),
        pl.coalesce("site", "home_site").alias("site"),
    )
    control = _control_events(r, p, persons, facts, seed, now_us)
    flags = control.group_by("pos").agg(
        (pl.col("kind") == "consent").any().alias("do_not_contact"),
        (pl.col("kind") == "death").any().alias("deceased"),
        pl.col("t").min().alias("ctl_first_t"),
    )
    persons = persons.join(flags, on="pos", how="left").with_columns(
        pl.col("do_not_contact").fill_null(False),
        pl.col("deceased").fill_null(False),
        pl.from_epoch(
            pl.coalesce(pl.min_horizontal("first_t", "ctl_first_t") - HOUR, pl.lit(now_us - 30 * DAY)), time_unit="us"
        )
        .dt.replace_time_zone("UTC")
        .alias("updated_at"),
    )
    return persons, facts, control


# ---------------------------------------------------------------------------------------------------------
# Public API

_PERSON_EXTRA = ("nhs_number", "home_setting", "home_site")


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC).replace(microsecond=0)
    if now.tzinfo is None:
        raise ValueError("now must carry a timezone (e.g. datetime(2026, 11, 30, 9, tzinfo=UTC))")
    return now.astimezone(UTC)


def generate_tables(
    n_patients: int, *, seed: int = 0, now: datetime | None = None, start_index: int = 0, block_size: int = 100_000
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Blocks of (persons, events) for patients ``start_index .. start_index + n_patients - 1``.

    ``persons`` has the ``PERSONS_SCHEMA`` columns (the flags already applied) plus ``nhs_number``,
    ``home_setting`` and ``home_site`` (for the person event); ``events`` has the ``FACTS_SCHEMA`` columns plus
    ``site`` and ``corrects``, one row per non-person event: facts, ``consent``, ``death`` and
    ``entered-in-error`` retractions, sorted by patient, then time (a retraction right after what it retracts).
    """
    for persons, facts, control in _blocks(n_patients, seed, now, start_index, block_size):
        yield persons, _event_frame(_merge(facts, control))


def _blocks(
    n_patients: int, seed: int, now: datetime | None, start_index: int, block_size: int
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]]:
    if n_patients < 0 or start_index < 0:
        raise ValueError("n_patients and start_index must be >= 0")
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    at = _now(now)
    stop = start_index + n_patients
    for lo in range(start_index, stop, block_size):
        persons, facts, control = _block(lo, min(lo + block_size, stop), seed, at)
        yield (
            upgrade_persons(persons).cast(pl.Schema(PERSONS_SCHEMA)).hstack(persons.select(_PERSON_EXTRA)),
            facts,
            control,
        )


def _event_frame(events: pl.DataFrame) -> pl.DataFrame:
    return events.with_columns(
        pl.from_epoch("t", time_unit="us").dt.replace_time_zone("UTC").alias("occurred_at"),
        pl.from_epoch("end", time_unit="us").dt.replace_time_zone("UTC").alias("ended_at"),
        pl.lit(None, dtype=pl.String).alias("text"),
        pl.lit(False).alias("date_only"),  # synthetic times are instants
        pl.when(pl.col("qualifier").is_not_null()).then(pl.concat_list("qualifier")).alias("qualifiers"),
    ).pipe(lambda f: upgrade_facts(f).cast(pl.Schema(FACTS_SCHEMA)).hstack(f.select("site", "corrects")))


def generate_frames(
    n_patients: int, seed: int = 0, now: datetime | None = None, *, start_index: int = 0, block_size: int = 100_000
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The state frames (``PERSONS_SCHEMA``, ``FACTS_SCHEMA``) for ``n_patients`` patients, vectorised.

    Equal, row for row, to applying every event of :func:`generate` with the same arguments to an empty
    ``PatientState`` (facts ordered by patient and time): retracted facts are left out, consent and death set
    the ``do_not_contact`` and ``deceased`` flags. This is the fast path for benchmarks.
    """
    persons: list[pl.DataFrame] = []
    facts: list[pl.DataFrame] = []
    for p, block_facts, control in _blocks(n_patients, seed, now, start_index, block_size):
        persons.append(p.drop(_PERSON_EXTRA))
        # Facts are already in stream order; control events only flag persons (done) or retract facts.
        retracted = control["corrects"].drop_nulls()
        facts.append(
            _event_frame(block_facts.filter(~pl.col("event_id").is_in(retracted.implode()))).drop("site", "corrects")
        )
    if not persons:
        return pl.DataFrame(schema=PERSONS_SCHEMA), pl.DataFrame(schema=FACTS_SCHEMA)
    return pl.concat(persons, rechunk=True), pl.concat(facts, rechunk=True)


def generate(
    n_patients: int, *, seed: int = 0, now: datetime | None = None, start_index: int = 0, block_size: int = 1_000
) -> Iterator[list[Event]]:
    """Yield each patient's validated canonical events: the person event first, then the rest in time order.

    The person event carries the demographics and the NHS number and happens an hour before the patient's
    first record; every other event carries its care setting and site. Besides clinical facts a few patients
    have a ``consent`` (do-not-contact), a ``death`` or an ``entered-in-error`` retraction (see
    ``_control_events``). Patient ``i`` is the same whatever ``block_size`` or ``start_index`` (see the module
    docstring).
    """
    for persons, events in generate_tables(
        n_patients, seed=seed, now=now, start_index=start_index, block_size=block_size
    ):
        by_patient: dict[str, list[dict[str, Any]]] = {}
        for row in events.iter_rows(named=True):
            by_patient.setdefault(row["patient_id"], []).append(row)
        for person in persons.iter_rows(named=True):
            pid = person["patient_id"]
            out = [_person_event(person, seed)]
            out.extend(_fact_event(row) for row in by_patient.get(pid, ()))
            yield out
