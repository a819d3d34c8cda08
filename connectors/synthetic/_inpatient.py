"""Admissions in progress at ``now`` that the v2 sample studies screen: bronchiolitis, influenza, brain bleeds.

Each is an open inpatient stay (a hospital ``visit`` coded ``local/inpatient`` or ``local/encounter``, no end,
status ``active``); the facts recorded during it are hospital facts, so ``_link_encounters`` attaches them to it.

- Bronchiolitis (late-November peak): 12 % of infants under one are in hospital with it now (a demo
  enrichment: a bad RSV week), admitted 2-60 hours ago; oxygen saturation measured in the last 5 hours for
  75 % (45 % of them under 92 %).
- Influenza: 0.3 % of adults (0.9 % of the over-75s) are in hospital with an influenza-like illness now; a NAAT
  test (70 % Detected, 15 % Not detected, 15 % ordered with no result yet), an ICD-10 influenza diagnosis for
  most with a positive test; 1 % of them are allergic to oseltamivir.
- Intracerebral haemorrhage: 0.8 % of the over-45s arrived 0.5-7 hours ago with a primary bleed (I61); GCS
  for 85 %, a pre-stroke modified Rankin score for half, 15 % on an anticoagulant.
"""

from __future__ import annotations

import numpy as np

from ._base import HOUR, MINUTE, YEAR, _Rand
from ._facts import WARDS, _Facts, _issues, _People

__all__ = ["inpatients"]


def inpatients(f: _Facts, r: _Rand, p: _People, now_us: int) -> np.ndarray:
    """Add the admissions of this module; the patients admitted (their care setting is the hospital)."""
    admitted: np.ndarray = _bronchiolitis(f, r, p, now_us) | _influenza(f, r, p, now_us) | _ich(f, r, p, now_us)
    return admitted


def _admit(
    f: _Facts,
    r: _Rand,
    p: _People,
    sel: np.ndarray,
    stream: str,
    lo_h: float,
    hi_h: float,
    now_us: int,
    code: str,
    ward: str,
) -> tuple[np.ndarray, np.ndarray]:
    pos = np.flatnonzero(sel)
    t = now_us - np.round(r.uniform(p.idx[pos], stream + ".admit.t", lo_h, hi_h) * HOUR).astype(np.int64)
    f.add(pos, t, "visit", ("local", code, None), setting="hospital", location=np.full(len(pos), WARDS.index(ward)))
    return pos, t


def _bronchiolitis(f: _Facts, r: _Rand, p: _People, now_us: int) -> np.ndarray:
    sel = (p.age < 1) & (r.u(p.idx, "bronchiolitis") < 0.12)
    pos, t = _admit(f, r, p, sel, "bronch", 2, 60, now_us, "inpatient", "WARD-12")
    bi = p.idx[pos]
    f.add(
        pos,
        t + 30 * MINUTE,
        "condition",
        [("ICD10", "J21.0", None), ("ICD10", "J21.9", None), ("SNOMED", "4120002", None)],
        r.choice(bi, "bronch.code", [0.4, 0.4, 0.2]),
        setting="hospital",
    )
    sats = r.u(bi, "spo2.on") < 0.75
    value = np.where(r.u(bi, "spo2.low") < 0.45, r.uniform(bi, "spo2.lo", 82, 92), r.uniform(bi, "spo2.hi", 92, 99))
    when = np.maximum(now_us - np.round(r.uniform(bi, "spo2.t", 0.2, 5) * HOUR).astype(np.int64), t + HOUR)
    f.add(
        pos[sats],
        when[sats],
        "measurement",
        [("LOINC", "59408-5", "%"), ("LOINC", "2708-6", "%")],
        r.choice(bi, "spo2.code", [0.8, 0.2])[sats],
        np.floor(value[sats]),
        setting="hospital",
    )
    chd = r.u(bi, "bronch.chd") < 0.03
    f.add(pos[chd], t[chd] + HOUR, "condition", ("ICD10", "Q21.3", None))
    out = np.zeros(len(p.idx), dtype=bool)
    out[pos] = True
    return out


def _influenza(f: _Facts, r: _Rand, p: _People, now_us: int) -> np.ndarray:
    rate = np.where(p.age >= 75, 0.009, np.where(p.age >= 18, 0.003, 0.0))
    sel = r.u(p.idx, "flu.adm") < rate
    pos, t = _admit(f, r, p, sel, "flu", 3, 120, now_us, "inpatient", "AMU")
    fi = p.idx[pos]
    result = r.choice(fi, "flu.result", [0.70, 0.15, 0.15])  # detected, not detected, pending
    options = [
        ("LOINC", "92142-9", None, ("SNOMED", "260373001")),
        ("LOINC", "92142-9", None, ("SNOMED", "260415000")),
        ("LOINC", "92142-9", None),
    ]
    status = np.where(result == 2, 3, 0)  # ordered / active
    taken = t + np.round(r.uniform(fi, "flu.test.t", 1, 3) * HOUR).astype(np.int64)
    # a pending test is ``ordered``: taken, no result yet
    f.add(pos, taken, "observation", options, result, setting="hospital", status=status)
    diagnosed = r.u(fi, "flu.dx") < np.where(result == 0, 0.7, 0.2)
    f.add(
        pos[diagnosed],
        taken[diagnosed] + 2 * HOUR,
        "condition",
        [("ICD10", "J10.1", None), ("ICD10", "J11.1", None)],
        r.choice(fi[diagnosed], "flu.dx.code", [0.6, 0.4]),
        setting="hospital",
    )
    allergic = r.u(fi, "flu.allergy") < 0.01
    f.add(pos[allergic], t[allergic] - int(5 * YEAR * 24 * HOUR), "allergy", ("ATC", "J05AH02", None))
    out = np.zeros(len(p.idx), dtype=bool)
    out[pos] = True
    return out


def _ich(f: _Facts, r: _Rand, p: _People, now_us: int) -> np.ndarray:
    sel = (p.age >= 45) & (r.u(p.idx, "ich.acute") < 0.008)
    pos, t = _admit(f, r, p, sel, "ich", 0.5, 7, now_us, "encounter", "STROKE-UNIT")
    ii = p.idx[pos]
    scan = t + np.round(r.uniform(ii, "ich.scan", 10, 40) * MINUTE).astype(np.int64)
    f.add(
        pos,
        scan,
        "condition",
        [("ICD10", "I61.9", None), ("ICD10", "I61.0", None), ("SNOMED", "274100004", None)],
        r.choice(ii, "ich.code", [0.5, 0.3, 0.2]),
        setting="hospital",
    )
    gcs_t = scan + np.round(r.uniform(ii, "gcs.t", 5, 25) * MINUTE).astype(np.int64)
    ok = (r.u(ii, "gcs.on") < 0.85) & (gcs_t < now_us)
    gcs = np.floor(np.clip(r.uniform(ii, "gcs.v", 2, 16), 3, 15))
    f.add(pos[ok], gcs_t[ok], "measurement", ("LOINC", "9269-2", "{score}"), value=gcs[ok], setting="hospital")
    mrs = r.u(ii, "mrs.on") < 0.5
    f.add(
        pos[mrs],
        gcs_t[mrs] + 30 * MINUTE,
        "measurement",
        ("LOINC", "75859-9", "{score}"),
        value=r.choice(ii, "mrs.v", [0.35, 0.25, 0.15, 0.12, 0.08, 0.05])[mrs].astype(np.float64),
        setting="hospital",
    )
    anticoag = np.zeros(len(p.idx), dtype=bool)
    anticoag[pos] = r.u(ii, "ich.anticoag") < 0.15
    _issues(
        f,
        r,
        p,
        anticoag,
        "ich.anticoag",
        now_us,
        np.where(anticoag, r.uniform(p.idx, "ich.anticoag.t", 2, 25), 0),
        [("ATC", "B01AF02", None), ("ATC", "B01AA03", None)],
        [0.6, 0.4],
        interval=28.0,
    )
    out = np.zeros(len(p.idx), dtype=bool)
    out[pos] = True
    return out
