"""Record types the canonical event v2 added, at realistic rates: GP registrations, allergies, immunizations,
resolved acute episodes, planned procedures and coded smoking status.

- Registration: everyone, with their GP practice (``local/gp-registration``), from birth (children, and 60 %
  of adults) or a move 1-30 years ago; open (still registered).
- Allergies: penicillin 7 %, other drug 3 %, peanut 1.5 % (more in children), with a SNOMED severity qualifier.
- Immunizations: seasonal influenza each autumn for 75 % of the over-65s (last 3 seasons) and 35 % of
  younger adults; COVID-19 boosters for 60 % of the over-75s.
- Resolved acute episodes: pneumonia (2 % of adults a year), urinary tract infection (4 % of women),
  community-acquired cellulitis (1 %), each ``resolved`` with an ``ended_at`` 5-21 days later; 40 % of the
  pneumonias are admitted (a hospital admission on the respiratory ward, with a CRP measured in it).
- Planned procedures: 2 % of adults have one planned 1-90 days ahead (``planned``, no setting: a plan does not
  move the patient), e.g. a colonoscopy or a cataract operation.
- Smoking status (LOINC 72166-2) as a coded value (SNOMED never / ex / current smoker) for 70 % of adults.
"""

from __future__ import annotations

import numpy as np

from ._base import DAY, HOUR, YEAR, _Rand
from ._facts import WARDS, _ago, _expand, _Facts, _People

__all__ = ["records"]

_SEVERITY = (("SNOMED", "255604002"), ("SNOMED", "6736007"), ("SNOMED", "24484000"))  # mild, moderate, severe


def records(f: _Facts, r: _Rand, p: _People, now_us: int) -> None:
    """Add every record type of this module for the block's people."""
    _registrations(f, r, p, now_us)
    _allergies(f, r, p, now_us)
    _immunizations(f, r, p, now_us)
    _episodes(f, r, p, now_us)
    _planned(f, r, p, now_us)
    _smoking(f, r, p, now_us)


def _registrations(f: _Facts, r: _Rand, p: _People, now_us: int) -> None:
    idx, age = p.idx, p.age
    pos = np.arange(len(idx))
    from_birth = (age < 18) | (r.u(idx, "reg.birth") < 0.6)
    years = np.where(from_birth, age, np.minimum(age, r.uniform(idx, "reg.t", 1, 30)))
    f.add(
        pos,
        _ago(now_us, np.minimum(years * YEAR, np.floor(age * YEAR))),  # never before the birth date
        "registration",
        ("local", "gp-registration", None),
        setting="primary-care",
    )


def _allergies(f: _Facts, r: _Rand, p: _People, now_us: int) -> None:
    idx, age = p.idx, p.age
    u = r.u(idx, "allergy")
    child = age < 18
    kind = np.select([u < 0.07, u < 0.10, u < np.where(child, 0.13, 0.115)], [0, 1, 2], -1)
    pos = np.flatnonzero(kind >= 0)
    ai = idx[pos]
    days = r.u(ai, "allergy.t") * np.maximum(np.floor(age[pos] * YEAR) - 30, 0)
    severity = r.choice(ai, "allergy.severity", [0.5, 0.35, 0.15])
    options = [
        ("SNOMED", "91936005", None, _SEVERITY[s])
        for s in range(3)  # allergy to penicillin
    ] + [("SNOMED", "294505008", None, _SEVERITY[s]) for s in range(3)]  # allergy to NSAID
    options += [("SNOMED", "91935009", None, _SEVERITY[s]) for s in range(3)]  # allergy to peanuts
    f.add(pos, _ago(now_us, days), "allergy", options, kind[pos] * 3 + severity)


def _immunizations(f: _Facts, r: _Rand, p: _People, now_us: int) -> None:
    idx, age = p.idx, p.age
    adult = age >= 18
    rate = np.where(age >= 65, 0.75, np.where(adult, 0.35, 0.0))
    seasons = np.where(adult, 3, 0)
    rows, k = _expand(seasons)
    took = r.u(idx[rows], "flu", k) < rate[rows]
    now_day = now_us / DAY
    # 1 October - 30 November of each of the last three autumns (days before now)
    year_start = now_day % 365.25
    autumn = (year_start - 273.0) % 365.25 + k * 365.25
    days = autumn + r.uniform(idx[rows], "flu.t", 0, 60, k)
    keep = took & (days > 1) & (days < np.floor(age[rows] * YEAR))
    f.add(rows[keep], _ago(now_us, days[keep]), "immunization", ("SNOMED", "86198006", None), status="completed")
    old = np.flatnonzero((age >= 75) & (r.u(idx, "covid") < 0.6))
    f.add(
        old,
        _ago(now_us, r.uniform(idx[old], "covid.t", 30, 400)),
        "immunization",
        ("SNOMED", "1119349007", None),
        status="completed",
    )


def _episodes(f: _Facts, r: _Rand, p: _People, now_us: int) -> None:
    idx, age = p.idx, p.age
    adult = age >= 18
    u = r.u(idx, "episode")
    lam = np.where(p.female, 0.04, 0.0) + 0.02 + 0.01
    has = adult & (u < lam * 3)  # over the last three years
    pos = np.flatnonzero(has)
    ei = idx[pos]
    which = r.choice(ei, "episode.code", [0.35, 0.45, 0.20])
    which = np.where(~p.female[pos] & (which == 1), 0, which)
    start = _ago(now_us, r.uniform(ei, "episode.t", 25, 3 * YEAR))
    end = start + np.round(r.uniform(ei, "episode.len", 5, 21) * DAY).astype(np.int64)
    codes = [("ICD10", "J18.9", None), ("ICD10", "N39.0", None), ("ICD10", "L03.9", None)]
    # 40 % of pneumonias are admitted: a hospital admission (respiratory ward) for the episode's first days
    admitted = (which == 0) & (r.u(ei, "episode.admit") < 0.4)
    f.add(pos[~admitted], start[~admitted], "condition", codes, which[~admitted], end=end[~admitted], status="resolved")
    f.add(
        pos[admitted],
        start[admitted],
        "condition",
        codes,
        which[admitted],
        end=end[admitted],
        status="resolved",
        setting="hospital",
    )
    stay = start[admitted] + np.round(r.uniform(ei[admitted], "episode.los", 2, 8) * DAY).astype(np.int64)
    arrive = start[admitted] - 2 * HOUR
    ward = np.full(len(stay), WARDS.index("WARD-9"))
    f.add(
        pos[admitted],
        arrive,
        "visit",
        ("local", "encounter", None),
        setting="hospital",
        end=stay,
        status="completed",
        location=ward,
    )
    f.add(
        pos[admitted],
        start[admitted] + HOUR,
        "measurement",
        ("LOINC", "1988-5", "mg/L"),  # C-reactive protein on admission
        value=np.round(np.exp(np.log(120) + 0.5 * r.normal(ei[admitted], "episode.crp")), 0),
        setting="hospital",
    )


def _planned(f: _Facts, r: _Rand, p: _People, now_us: int) -> None:
    idx, age = p.idx, p.age
    pos = np.flatnonzero((age >= 18) & (r.u(idx, "planned") < 0.02))
    pi = idx[pos]
    ahead = np.round(r.uniform(pi, "planned.t", 1, 90) * DAY).astype(np.int64)
    codes = [
        ("SNOMED", "73761001", None),
        ("SNOMED", "110473004", None),
        ("OPCS4", "H22.9", None),
    ]  # colonoscopy, cataract
    f.add(
        pos,
        now_us + ahead,
        "procedure",
        codes,
        r.choice(pi, "planned.code", [0.4, 0.4, 0.2]),
        status="planned",
        no_setting=True,
    )


def _smoking(f: _Facts, r: _Rand, p: _People, now_us: int) -> None:
    idx, age = p.idx, p.age
    pos = np.flatnonzero((age >= 18) & (r.u(idx, "smoking") < 0.7))
    si = idx[pos]
    status = r.choice(si, "smoking.status", [0.55, 0.30, 0.15])  # never, ex, current
    options = [
        ("LOINC", "72166-2", None, ("SNOMED", "266919005")),
        ("LOINC", "72166-2", None, ("SNOMED", "8517006")),
        ("LOINC", "72166-2", None, ("SNOMED", "77176002")),
    ]
    f.add(pos, _ago(now_us, r.uniform(si, "smoking.t", 10, 5 * YEAR)), "observation", options, status)
