"""Clinical detail that the v2 sample studies read, for patients the other modules already made ill.

- Heart failure: a NYHA class (a SNOMED finding, 85 %: I 15 %, II 50 %, III 30 %, IV 5 %) and a recent
  eGFR (75 % in the last 80 days) for the heart-failure patients.
- Early breast cancer: pathology (ER and HER2 status as coded values, positive nodes, grade as a local coded
  value, tumour size) after the operation or the biopsy, and adjuvant endocrine therapy for most ER-positive
  women who had surgery; operations are ``completed``.
- Hypertension: half of the hypertensive over-70s take two antihypertensives now (ACE inhibitor and
  amlodipine or indapamide), with 28-day issues that run to now.
- Menopause: a hot-flush diary (``local/vms-per-day``, 50 % in the last 4 weeks), FSH (60 % in the year).
- Severe asthma (10 % of asthmatics aged 12-80): high-dose inhaled beclometasone and montelukast issued every
  28 days for over a year, 1-3 attacks in the year, ACQ-6 and a pre-bronchodilator FEV1 % predicted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._base import DAY, Code, _Rand
from ._facts import STATUS, _ago, _expand, _Facts, _People

__all__ = ["trials"]

_POS, _NEG = ("SNOMED", "10828004"), ("SNOMED", "260385009")  # Positive, Negative
PRE_BD = "local|pre-bd"


def trials(f: _Facts, r: _Rand, p: _People, hf: np.ndarray, recent_bc: np.ndarray, now_us: int) -> None:
    """Add every record of this module for the block's people."""
    _heart_failure_detail(f, r, p, hf, now_us)
    _breast_pathology(f, r, p, recent_bc, now_us)
    _dual_therapy(f, r, p, now_us)
    _menopause_detail(f, r, p, now_us)
    _severe_asthma(f, r, p, now_us)


def _repeats(
    f: _Facts,
    r: _Rand,
    p: _People,
    sel: np.ndarray,
    stream: str,
    now_us: int,
    latest: np.ndarray,
    months: np.ndarray | float,
    codes: Sequence[Code],
    probs: Sequence[float],
) -> None:
    """Regular 28-day issues, one every 29-31 days (gaps of 1-3 days), from ``latest`` days ago back over
    ``months`` months: a patient who takes the medicine continuously."""
    pos = np.flatnonzero(sel)
    idx = p.idx[pos]
    which = r.choice(idx, stream + ".code", probs)
    counts = np.maximum(
        1, np.round(np.broadcast_to(np.asarray(months, dtype=np.float64), sel.shape)[pos] * 30.4 / 26.5)
    )
    rows, k = _expand(counts.astype(np.int64))
    days = latest[pos][rows] + k * 30.0 + r.uniform(idx[rows], stream + ".jitter", 0, 1, k)
    start = _ago(now_us, np.maximum(days, 0.5))
    end = start + 28 * DAY
    status = np.where(end < now_us, STATUS.index("completed"), STATUS.index("active"))
    f.add(pos[rows], start, "drug", codes, which[rows], end=end, status=status)


def _heart_failure_detail(f: _Facts, r: _Rand, p: _People, hf: np.ndarray, now_us: int) -> None:
    pos = np.flatnonzero(hf)
    hi = p.idx[pos]
    has = r.u(hi, "nyha.on") < 0.85
    codes = [("SNOMED", c, None) for c in ("420300004", "421704003", "420913000", "422293003")]
    f.add(
        pos[has],
        _ago(now_us, r.uniform(hi[has], "nyha.t", 1, 180)),
        "condition",  # a coded finding, as a GP or heart-failure clinic records the class
        codes,
        r.choice(hi[has], "nyha.class", [0.15, 0.50, 0.30, 0.05]),
    )
    recent = r.u(hi, "hf.egfr.on") < 0.75
    value = np.floor(np.clip(58 + 18 * r.normal(hi, "hf.egfr.v"), 12, 110))
    f.add(
        pos[recent],
        _ago(now_us, r.uniform(hi[recent], "hf.egfr.t", 1, 80)),
        "measurement",
        ("LOINC", "62238-1", "mL/min/1.73m2"),
        value=value[recent],
    )


def _breast_pathology(f: _Facts, r: _Rand, p: _People, recent: np.ndarray, now_us: int) -> None:
    pos = np.flatnonzero(recent)
    bi = p.idx[pos]
    # the same draws as _chronic._breast: diagnosis and operation days
    diag = r.uniform(bi, "bc.diag", 10, 150)
    surg_days = diag - r.uniform(bi, "bc.surg.after", 14, 50)
    operated = (r.u(bi, "bc.surg") < 0.85) & (surg_days >= 1)
    path_days = np.where(operated, np.maximum(surg_days - 6, 0.5), np.maximum(diag - 3, 0.5))
    t = _ago(now_us, path_days)
    er_pos = r.u(bi, "bc.er") < 0.78
    f.add(
        pos,
        _ago(now_us, diag - 2),
        "observation",
        [("LOINC", "16112-5", None, _POS), ("LOINC", "16112-5", None, _NEG)],
        (~er_pos).astype(np.int64),
    )
    her2 = r.u(bi, "bc.her2")
    has_her2 = her2 < 0.92
    f.add(
        pos[has_her2],
        _ago(now_us, diag[has_her2] - 4),
        "observation",
        [("LOINC", "48676-1", None, _NEG), ("LOINC", "48676-1", None, _POS)],
        (her2[has_her2] > 0.78).astype(np.int64),
    )
    nodes = np.select(
        [r.u(bi, "bc.nodes") < 0.45, r.u(bi, "bc.nodes") < 0.75],
        [0, 1 + np.floor(3 * r.u(bi, "bc.nodes.few"))],
        4 + np.floor(r.uniform(bi, "bc.nodes.many", 0, 12)),
    )
    f.add(pos[operated], t[operated], "measurement", ("LOINC", "21893-3", "{nodes}"), value=nodes[operated])
    grade = r.choice(bi, "bc.grade", [0.15, 0.45, 0.40])
    options = [("local", "breast-grade", None, ("local", g)) for g in ("G1", "G2", "G3")]
    f.add(pos, t, "observation", options, grade)
    size = np.round(np.clip(np.exp(np.log(22) + 0.5 * r.normal(bi, "bc.size")), 3, 120))
    f.add(pos[operated], t[operated], "measurement", ("LOINC", "21889-1", "mm"), value=size[operated])
    # performance status at the oncology clinic after the operation (60 %)
    clinic = operated & (r.u(bi, "bc.ecog2") < 0.6)
    f.add(
        pos[clinic],
        _ago(now_us, np.maximum(surg_days - 14, 1)[clinic]),
        "measurement",
        ("LOINC", "89247-1", "{score}"),
        value=r.choice(bi, "bc.ecog2.v", [0.6, 0.3, 0.1])[clinic].astype(np.float64),
        setting="hospital",
    )
    et = operated & er_pos & (r.u(bi, "bc.et") < 0.8) & (surg_days > 30)
    sel = np.zeros(len(p.idx), dtype=bool)
    sel[pos[et]] = True
    started = np.zeros(len(p.idx))  # days ago: 3-6 weeks after the operation
    started[pos] = np.maximum(surg_days - r.uniform(bi, "bc.et.after", 21, 40), 1)
    latest = np.where(sel, np.mod(started, 30.0) + 0.5, 0)
    codes = [("ATC", "L02BG04", None), ("ATC", "L02BA01", None)]
    _repeats(f, r, p, sel, "bc.et", now_us, latest, started / 30.4, codes, [0.6, 0.4])


def _dual_therapy(f: _Facts, r: _Rand, p: _People, now_us: int) -> None:
    idx, age = p.idx, p.age
    # the same draw as _chronic._routine's hypertension
    p_htn = np.select([age < 30, age < 50, age < 65], [0.0, 0.08, 0.25], 0.45)
    htn = (age >= 70) & (r.u(idx, "htn") < p_htn)
    dual = htn & (r.u(idx, "htn.dual") < 0.5)
    latest = np.where(dual, r.uniform(idx, "htn.dual.t", 1, 26), 0)
    for stream, codes, probs in (
        ("htn.dual.a", [("ATC", "C09AA05", None), ("ATC", "C09CA01", None)], [0.7, 0.3]),
        ("htn.dual.b", [("ATC", "C08CA01", None), ("ATC", "C03BA11", None)], [0.6, 0.4]),
    ):
        _repeats(f, r, p, dual, stream, now_us, latest, r.uniform(idx, stream + ".months", 2, 24), codes, probs)


def _menopause_detail(f: _Facts, r: _Rand, p: _People, now_us: int) -> None:
    idx, age = p.idx, p.age
    meno = p.female & (age >= 42) & (age < 63) & (r.u(idx, "meno") < 0.18)  # as _acute._womens_health
    pos = np.flatnonzero(meno)
    mi = idx[pos]
    diary = r.u(mi, "vms.on") < 0.5
    level = np.exp(np.log(6.5) + 0.45 * r.normal(mi, "vms.level"))
    counts = np.where(diary, 1 + r.poisson(mi, "vms.n", 1.5), 0)
    rows, k = _expand(counts)
    f.add(
        pos[rows],
        _ago(now_us, r.uniform(mi[rows], "vms.t", 1, 27, k)),
        "measurement",
        ("local", "vms-per-day", "{flushes-per-day}"),
        value=np.round(np.clip(level[rows] + 1.2 * r.normal(mi[rows], "vms.v", k), 0, 30)),
    )
    fsh = r.u(mi, "fsh.on") < 0.6
    post = r.u(mi, "fsh.post") < np.clip((age[pos] - 40) / 15, 0.2, 0.9)
    value = np.where(post, r.uniform(mi, "fsh.hi", 41, 120), r.uniform(mi, "fsh.lo", 4, 39))
    f.add(
        pos[fsh],
        _ago(now_us, r.uniform(mi[fsh], "fsh.t", 5, 330)),
        "measurement",
        ("LOINC", "15067-2", "IU/L"),
        value=np.round(value[fsh]),
    )


def _severe_asthma(f: _Facts, r: _Rand, p: _People, now_us: int) -> None:
    idx, age = p.idx, p.age
    asthma = (age >= 3) & (r.u(idx, "asthma") < np.where(age < 18, 0.15, 0.08))  # as _acute._asthma
    severe = asthma & (age >= 12) & (age <= 80) & (r.u(idx, "sev.asthma") < 0.10)
    pos = np.flatnonzero(severe)
    si = idx[pos]
    latest = np.where(severe, r.uniform(idx, "sev.ics.t", 1, 25), 0)
    ics = severe & (r.u(idx, "sev.ics.on") < 0.85)
    _repeats(
        f, r, p, ics, "sev.ics", now_us, latest, r.uniform(idx, "sev.ics.m", 6, 30), [("ATC", "R03BA01", None)], [1.0]
    )
    lt = severe & (r.u(idx, "sev.lt.on") < 0.75)
    _repeats(
        f, r, p, lt, "sev.lt", now_us, latest, r.uniform(idx, "sev.lt.m", 2, 12), [("ATC", "R03DC03", None)], [1.0]
    )
    attacks = r.choice(si, "sev.attacks", [0.3, 0.35, 0.25, 0.1])
    rows, k = _expand(attacks)
    # attacks at least 3 weeks apart: one per slot of the year
    slot = 360.0 / np.maximum(attacks[rows], 1)
    days = 1 + k * slot + r.uniform(si[rows], "sev.attack.t", 0, 1, k) * (slot - 21)
    f.add(pos[rows], _ago(now_us, days), "condition", ("ICD10", "J46", None), setting="hospital")
    acq = r.u(si, "acq.on") < 0.8
    f.add(
        pos[acq],
        _ago(now_us, r.uniform(si[acq], "acq.t", 1, 85)),
        "measurement",
        ("local", "ACQ6", "{score}"),
        value=np.round(np.clip(2.1 + 0.8 * r.normal(si, "acq.v"), 0, 6), 1)[acq],
    )
    fev = r.u(si, "fev1.on") < 0.8
    f.add(
        pos[fev],
        _ago(now_us, r.uniform(si[fev], "fev1.t", 5, 330)),
        "measurement",
        ("LOINC", "20152-5", "%", None, PRE_BD),
        value=np.round(np.clip(70 + 14 * r.normal(si, "fev1.v"), 25, 120))[fev],
    )
