"""The realistic benchmark population: persons and about 60 facts each, generated vectorised, chunk by chunk.

    persons, facts = generate(100_000, seed=7, now=BENCH_NOW)
    write(directory, 1_000_000)          # Parquet, chunk by chunk (bounded memory), reused when present

Patients are drawn in chunks of :data:`CHUNK` (each chunk has its own seeded generator), so the first 100,000
patients of the 1M population are the 100k population. Per chunk, everything is numpy/Polars over arrays:

- **Persons** (:mod:`bench._realistic_persons`): ages from a hospital caseload pyramid, sex, ethnic group, IMD,
  LSOA, postcode district, setting (2 % unknown), site, do-not-contact, deceased, 0.3 % without a birth date.
- **Activity**: a lognormal multiplier per patient (sigma 0.9) scales every count: the long tail (a few patients
  with hundreds of facts).
- **Themes** (:data:`bench._realistic_themes.THEMES`): each patient joins each theme with its prevalence
  (rising with age for the adult themes; paediatrics only under 18). A theme brings its conditions (statuses,
  severity qualifiers, repeat codings, ICD-10 or SNOMED), its laboratory results (theme baselines, trends,
  reference ranges, some in an alternative unit), repeat prescriptions (28-56 day exposure periods, dose,
  route; ATC, dm+d or RxNorm; active, completed or stopped), procedures (some planned in the next 60 days),
  scores, and event pairs ``first -> then`` 0-1.5 x the pair's lag apart (so relations have near misses).
- **Everyone**: routine panels (U&E, FBC, CRP, lipids, TSH, BMI, blood pressure), visits (outpatient, GP,
  emergency, inpatient stays with a ward and an end; ~3 % of hospital patients admitted now, with a diagnosis
  and a CRP in that encounter), a GP registration, immunizations, coded smoking status (``value_code``), a few
  drug allergies, and a background of ~5,700 codes no study uses (Zipf-weighted).

Laboratory results are the largest share of the facts (see the test). Times are before ``now`` except planned
procedures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from bench._realistic_codes import ROUTINE, SMOKING, Drug, Theme
from bench._realistic_facts import YEAR_DAYS, Blocks, Chunk
from bench._realistic_persons import persons as _persons
from bench._realistic_themes import THEMES, background_codes

__all__ = ["CHUNK", "generate", "write"]

#: the care setting of each fact of a block: ``(labels, index per fact)``
Setting = Callable[[np.ndarray], tuple[list[str], np.ndarray]]

CHUNK = 100_000
_VISITS = ("outpatient", "gp-consultation", "emergency", "inpatient")
_WARDS = ("AMU", "WARD-12", "WARD-7", "CCU", "HASU", "WARD-3")
_BACKGROUND = background_codes()


def _fact_setting(rng: np.random.Generator) -> Setting:
    labels = ("hospital", "community", "primary-care")

    def pick(idx: np.ndarray) -> tuple[list[str], np.ndarray]:
        return list(labels), rng.choice(3, len(idx), p=(0.5, 0.2, 0.3))

    return pick


def _theme_prob(t: Theme, age: np.ndarray) -> np.ndarray:
    if t.children:
        return np.where(age < 18, t.prevalence, 0.0)
    adult = 0.4 + 1.2 * np.clip((age - 18) / 70, 0, 1)
    young = 0.3 if t.name in ("respiratory", "mental_health") else 0.0
    return t.prevalence * np.where(age >= 18, adult, young)


def _theme(b: Blocks, t: Theme, who: np.ndarray, setting: Setting) -> None:
    c = b.chunk
    rng = c.rng
    events: dict[str, tuple[str, list[str], list[str]]] = {}  # name -> (kind, systems, codes), for pairs
    for cond in (*t.conditions, *t.exclusions):
        systems = ["ICD10"] * len(cond.icd10) + ["SNOMED"] * len(cond.snomed)
        codes = [*cond.icd10, *cond.snomed]
        events[cond.name] = ("condition", systems, codes)
        has = who[rng.random(len(who)) < cond.p]
        idx, _ = c.counts(has, cond.n - 1)
        idx = np.concatenate([has, idx])  # at least one coding each
        onset = c.offsets(has, 900, 12, 0.4)
        first = np.zeros(c.n)
        first[has] = onset
        days = np.where(np.arange(len(idx)) < len(has), first[idx], rng.uniform(0, 1, len(idx)) * first[idx])
        resolved = rng.random(len(idx)) < cond.resolved
        b.add(
            idx,
            days,
            "condition",
            systems,
            codes,
            rng.integers(0, len(codes), len(idx)),
            status=(["active", "resolved"], resolved.astype(np.int32)),
            _end=np.where(resolved, rng.uniform(5, 60, len(idx)), np.nan),
            qualifiers=b.qualifiers(len(idx), cond.severe),
            setting=setting(idx),
        )
    for lab in t.labs:
        b.labs(lab, who, lab.per_year, 1.6, False, setting)
    for drug in t.drugs:
        _drug(b, drug, who[rng.random(len(who)) < drug.p], setting)
    for proc in t.procs:
        events[proc.name] = ("procedure", ["OPCS4"] * len(proc.opcs4), list(proc.opcs4))
        has = who[rng.random(len(who)) < proc.p]
        b.add(
            has,
            c.offsets(has, 500, 6, 0.5),
            "procedure",
            "OPCS4",
            proc.opcs4,
            rng.integers(0, len(proc.opcs4), len(has)),
            status="completed",
            setting="hospital",
        )
        plan = who[rng.random(len(who)) < proc.p * proc.planned]
        b.add(plan, -rng.uniform(1, 60, len(plan)), "procedure", "OPCS4", proc.opcs4, 0, status="planned")
    for score in t.scores:
        idx, _ = c.counts(who, score.per_year * 3)
        b.add(
            idx,
            c.offsets(idx, 200, 3, 0.6),
            "observation",
            score.code[0],
            [score.code[1]],
            0,
            value=rng.integers(score.lo, score.hi + 1, len(idx)).astype(np.float64),
            unit="{score}",
            status="active",
            setting=setting(idx),
        )
    for pair in t.pairs:
        has = who[rng.random(len(who)) < pair.p]
        t0 = rng.uniform(pair.lag_days, 4 * YEAR_DAYS, len(has))
        t1 = t0 - rng.uniform(0, 1.5 * pair.lag_days, len(has))
        for name, days in ((pair.first, t0), (pair.then, np.maximum(t1, 0.01))):
            kind, systems, codes = events[name]
            status = "completed" if kind == "procedure" else "active"
            b.add(
                has,
                days,
                kind,
                systems,
                codes,
                rng.integers(0, len(codes), len(has)),
                status=status,
                setting="hospital",
            )


def _drug(b: Blocks, drug: Drug, treated: np.ndarray, setting: Setting) -> None:
    c = b.chunk
    rng = c.rng
    idx, pos = c.counts(treated, drug.issues * 0.65)
    current = rng.random(c.n) < 0.65
    last = np.where(current, rng.uniform(-drug.days * 0.8, drug.days * 0.6, c.n), rng.uniform(60, 5 * YEAR_DAYS, c.n))
    days = last[idx] + pos * drug.days * rng.uniform(1.0, 1.5, len(idx))
    days = np.minimum(days, np.maximum(c.age[idx] * YEAR_DAYS - 1, 0))
    keep = days >= 0
    idx, days = idx[keep], days[keep]
    codes = [*drug.atc, *drug.dmd, *drug.rxnorm]
    systems = ["ATC"] * len(drug.atc) + ["DMD"] * len(drug.dmd) + ["RXNORM"] * len(drug.rxnorm)
    pick_atc = rng.integers(0, len(drug.atc), len(idx))
    other = rng.integers(len(drug.atc), len(codes), len(idx)) if len(codes) > len(drug.atc) else pick_atc
    code_i = np.where(rng.random(len(idx)) < 0.2, other, pick_atc)
    ended = days > drug.days
    stopped = rng.random(len(idx)) < 0.03
    status = np.where(stopped, 2, np.where(ended, 1, 0))
    dose = np.asarray(drug.doses)[rng.integers(0, len(drug.doses), c.n)][idx]
    b.add(
        idx,
        days,
        "drug",
        systems,
        codes,
        code_i,
        status=(["active", "completed", "stopped"], status.astype(np.int32)),
        _end=np.full(len(idx), float(drug.days)),
        dose_value=dose.astype(np.float64),
        dose_unit=drug.dose_unit,
        route=drug.route,
        setting=setting(idx),
    )
    allergic = treated[rng.random(len(treated)) < 0.01]
    b.add(allergic, c.offsets(allergic, 1000, 10, 0.2), "allergy", "ATC", drug.atc, 0, status="active")


def _everyone(b: Blocks, setting: Setting) -> None:
    c = b.chunk
    rng = c.rng
    everyone = np.arange(c.n)
    for lab in ROUTINE:
        b.labs(lab, everyone, lab.base_year, 2, False, setting)
    for t in THEMES:  # the theme labs everyone has now and then (eGFR with every U&E, HbA1c screening)
        for lab in t.labs:
            if lab.base_year:
                b.labs(lab, everyone[~c.members[t.name]], lab.base_year, 2, True, setting)
    idx, _ = c.counts(everyone, 4)
    vk = rng.choice(4, len(idx), p=(0.5, 0.3, 0.1, 0.1))
    stay = np.where(vk == 3, rng.uniform(1, 10, len(idx)), 1 / 24)
    b.add(
        idx,
        c.offsets(idx, 400, 8, 0.5),
        "visit",
        "local",
        _VISITS,
        vk,
        status="completed",
        _end=stay,
        setting=(["hospital", "primary-care"], (vk == 1).astype(np.int32)),
        location=(list(_WARDS), rng.integers(0, len(_WARDS), len(idx))),
    )
    # admitted now: an open stay, with an admission diagnosis and a CRP in the same encounter
    adm = everyone[c.hospital & (rng.random(c.n) < 0.035)]
    start = rng.uniform(0.05, 7, len(adm))
    b.add(
        adm,
        start,
        "visit",
        "local",
        ["inpatient"],
        0,
        status="active",
        _adm=np.ones(len(adm)),
        setting="hospital",
        location=(list(_WARDS), rng.integers(0, len(_WARDS), len(adm))),
    )
    acute = [cond for t in THEMES if not t.children for cond in t.conditions[:2]]
    codes = [cd.icd10[-1] for cd in acute]
    b.add(
        adm,
        start * 0.8,
        "condition",
        "ICD10",
        codes,
        rng.integers(0, len(codes), len(adm)),
        status="active",
        _adm=np.ones(len(adm)),
        setting="hospital",
    )
    b.add(
        adm,
        start * 0.7,
        "measurement",
        "LOINC",
        ["1988-5"],
        0,
        value=np.round(rng.lognormal(3, 1, len(adm)), 0),
        unit="mg/L",
        ref_low=0.0,
        ref_high=5.0,
        _adm=np.ones(len(adm)),
        status="active",
        setting="hospital",
    )
    reg = everyone[rng.random(c.n) < 0.97]
    b.add(
        reg,
        np.minimum(rng.uniform(30, 20 * YEAR_DAYS, len(reg)), c.age[reg] * YEAR_DAYS),
        "registration",
        "local",
        ["gp-registration"],
        0,
        status="active",
        setting="primary-care",
    )
    idx, _ = c.counts(everyone, 1.5)
    b.add(
        idx,
        c.offsets(idx, 500, 4, 0.5),
        "immunization",
        "SNOMED",
        ["86198006", "1119349007", "871751006"],
        rng.integers(0, 3, len(idx)),
        status="completed",
        setting="primary-care",
    )
    adults = everyone[(c.age >= 16) & (rng.random(c.n) < 0.8)]
    idx, _ = c.counts(adults, 1.2)
    b.add(
        idx,
        c.offsets(idx, 700, 6, 0.5),
        "observation",
        "LOINC",
        ["72166-2"],
        0,
        status="active",
        value_system="SNOMED",
        value_code=(list(SMOKING), rng.choice(3, len(idx), p=(0.18, 0.3, 0.52))),
        setting="primary-care",
    )
    for system, kind, mean in (
        ("ICD10", "condition", 2.5),
        ("SNOMED", "observation", 2.0),
        ("LOINC", "measurement", 3.0),
    ):
        pool = _BACKGROUND[system]
        idx, _ = c.counts(everyone, mean)
        z = np.minimum(rng.zipf(1.3, len(idx)) - 1, len(pool) - 1)
        perm = rng.permutation(len(pool))
        extra = {"value": np.round(rng.normal(50, 10, len(idx)), 1), "unit": "U/L"} if kind == "measurement" else {}
        b.add(
            idx,
            c.offsets(idx, 600, 8, 0.4),
            kind,
            system,
            [pool[i] for i in perm],
            z,
            status="active",
            setting=setting(idx),
            **extra,
        )


def _chunk(n: int, first: int, seed: int, now: datetime, first_row: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng([seed, first // CHUNK, n])
    persons, age = _persons(rng, n, first, now)
    hospital = (persons["setting"] == "hospital").fill_null(False).to_numpy()
    activity = rng.lognormal(-0.5 * 0.9**2, 0.9, n)
    c = Chunk(rng, n, age, activity)
    c.hospital = hospital
    b = Blocks(c)
    setting = _fact_setting(rng)
    for t in THEMES:
        c.members[t.name] = rng.random(n) < _theme_prob(t, age)
    for t in THEMES:
        _theme(b, t, np.flatnonzero(c.members[t.name]), setting)
    now_us = int(now.timestamp() * 1_000_000)
    _everyone(b, setting)
    facts = b.frame(now_us, persons["patient_id"], seed, first_row)
    return persons, facts


def generate(n: int, seed: int = 7, now: datetime | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(persons, facts)`` for ``n`` patients in :mod:`screener.state`'s schemas, deterministic per seed."""
    from bench._workload import BENCH_NOW

    now = now or BENCH_NOW
    parts = [_chunk(min(CHUNK, n - s), s, seed, now, s * 1000) for s in range(0, n, CHUNK)]
    return pl.concat([p for p, _ in parts]), pl.concat([f for _, f in parts])


def write(persons_path: Path, facts_path: Path, n: int, seed: int = 7, now: datetime | None = None) -> None:
    """Generate ``n`` patients into the two Parquet files, streaming: the facts of one chunk in memory at a time
    (a Polars IO source feeding ``sink_parquet``), each file written once, under a temporary name then renamed
    (a half-written file is never taken for a cached population)."""
    from polars.io.plugins import register_io_source

    from bench._workload import BENCH_NOW
    from screener.state import FACTS_SCHEMA

    now = now or BENCH_NOW
    persons: list[pl.DataFrame] = []

    def chunks(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        for s in range(0, n, CHUNK):
            p, f = _chunk(min(CHUNK, n - s), s, seed, now, s * 1000)
            persons.append(p)
            if with_columns is not None:
                f = f.select(with_columns)
            yield f if predicate is None else f.filter(predicate)

    tmp_facts = facts_path.with_name(f".{facts_path.name}.tmp")
    register_io_source(chunks, schema=FACTS_SCHEMA).sink_parquet(tmp_facts, compression="lz4")
    pl.concat(persons).write_parquet(persons_path.with_name(f".{persons_path.name}.tmp"), compression="lz4")
    persons_path.with_name(f".{persons_path.name}.tmp").replace(persons_path)
    tmp_facts.replace(facts_path)
