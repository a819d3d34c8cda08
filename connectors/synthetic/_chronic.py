"""Clinical modules of the population: diabetes and kidney function, routine adult care, early breast cancer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._base import YEAR, Code, _Rand
from ._facts import _ago, _expand, _Facts, _issues, _People


def _diabetes(f: _Facts, r: _Rand, p: _People, dm: np.ndarray, t1: np.ndarray, now_us: int) -> None:
    idx, age = p.idx, p.age
    pos = np.flatnonzero(dm)
    di = idx[pos]
    diag_days = np.minimum(r.uniform(di, "dm.diag", 1 * YEAR, 15 * YEAR), (age[pos] - 20).clip(0.1) * YEAR)
    f.add(
        pos,
        _ago(now_us, diag_days),
        "condition",
        [("ICD10", "E11.9", None), ("ICD10", "E11.65", None), ("ICD10", "E11.2", None), ("SNOMED", "44054006", None)],
        r.choice(di, "dm.code", [0.6, 0.1, 0.1, 0.2]),
    )
    # HbA1c: per-patient level, 1-4 results in 18 months, a quarter of patients' labs report DCCT %.
    level = np.clip(62 + 13 * r.normal(di, "hba1c.level"), 38, 130)
    counts = 1 + r.poisson(di, "hba1c.n", 1.0)
    rows, k = _expand(counts)
    mmol = np.clip(level[rows] + 4 * r.normal(di[rows], "hba1c.noise", k), 35, 140)
    pct = r.u(di, "hba1c.unit")[rows] < 0.25
    value = np.where(pct, np.round(mmol / 10.929 + 2.15, 1), np.round(mmol))
    f.add(
        pos[rows],
        _ago(now_us, r.uniform(di[rows], "hba1c.t", 1, 540, k)),
        "measurement",
        [("LOINC", "59261-8", "mmol/mol"), ("LOINC", "4548-4", "%")],
        pct.astype(np.int64),
        value,
    )
    # eGFR: a band, then how recently it was measured (or never).
    band = r.choice(di, "egfr.band", [0.08, 0.37, 0.07, 0.48])
    egfr = np.select(
        [band == 0, band == 1, band == 2],
        [r.uniform(di, "egfr.v0", 8, 25), r.uniform(di, "egfr.v1", 25, 60), 60 + np.floor(r.u(di, "egfr.v2") * 3)],
        r.uniform(di, "egfr.v3", 63, 105),
    )
    egfr = np.floor(egfr)
    recency = r.u(di, "egfr.recency")
    latest = np.where(recency < 0.72, r.uniform(di, "egfr.t0", 1, 175), r.uniform(di, "egfr.t1", 200, 700))
    has = recency < 0.90
    counts = np.where(has, 1 + r.poisson(di, "egfr.n", 0.8), 0)
    rows, k = _expand(counts)
    days = latest[rows] + k * r.uniform(di[rows], "egfr.gap", 60, 300, k)
    vals = np.where(k == 0, egfr[rows], np.clip(np.round(egfr[rows] + 4 * r.normal(di[rows], "egfr.old", k)), 5, 120))
    which = np.where(r.u(di[rows], "egfr.badunit", k) < 0.01, 3, r.choice(di[rows], "egfr.code", [0.85, 0.10, 0.05], k))
    f.add(
        pos[rows],
        _ago(now_us, days),
        "measurement",
        [
            ("LOINC", "62238-1", "mL/min/1.73m2"),
            ("LOINC", "33914-3", "mL/min/1.73m2"),
            ("LOINC", "98979-8", "mL/min/1.73m2"),
            ("LOINC", "62238-1", "mL/min"),
        ],
        which,
        vals,
    )
    # Creatinine alongside the latest eGFR (umol/L, or mg/dL from a minority of labs).
    crea = np.clip(np.round(75 * (90 / np.maximum(egfr, 5)) ** 0.9), 40, 900)
    mgdl = r.u(di, "crea.unit") < 0.15
    cre_sel = has
    f.add(
        pos[cre_sel],
        _ago(now_us, latest[cre_sel]),
        "measurement",
        [("LOINC", "14682-9", "umol/L"), ("LOINC", "2160-0", "mg/dL")],
        mgdl[cre_sel].astype(np.int64),
        np.where(mgdl, np.round(crea / 88.4, 2), crea)[cre_sel],
    )
    # CKD coding, dialysis.
    ckd = (egfr < 60) & (r.u(di, "ckd.coded") < 0.6)
    stage = np.select([egfr >= 30, egfr >= 15], [0, 1], 2)
    f.add(
        pos[ckd],
        _ago(now_us, latest[ckd] + r.uniform(di[ckd], "ckd.t", 0, 300)),
        "condition",
        [("ICD10", "N18.3", None), ("ICD10", "N18.4", None), ("ICD10", "N18.5", None)],
        stage[ckd],
    )
    dial = (egfr < 15) & (r.u(di, "dialysis") < 0.7)
    f.add(pos[dial], _ago(now_us, latest[dial] + 30), "condition", ("ICD10", "Z99.2", None))
    # Urine ACR.
    acr = r.u(di, "acr")
    acr_days = np.where(acr < 0.6, r.uniform(di, "acr.t0", 1, 350), r.uniform(di, "acr.t1", 400, 700))
    acr_sel = acr < 0.68
    f.add(
        pos[acr_sel],
        _ago(now_us, acr_days[acr_sel]),
        "measurement",
        ("LOINC", "14958-3", "mg/mmol"),
        value=np.round(np.exp(np.log(3.5) + 1.1 * r.normal(di, "acr.v")), 1)[acr_sel],
    )

    # Medicines: ACE inhibitor / ARB, metformin, insulin, SGLT2 inhibitor (current = within 90 days).
    def current(stream: str, p_now: float, p_past: float, codes: Sequence[Code], probs: Sequence[float]) -> None:
        u = np.full(len(idx), 2.0)
        u[pos] = r.u(di, stream)
        days = np.zeros(len(idx))
        days[pos] = np.where(
            u[pos] < p_now, r.uniform(di, stream + ".t0", 1, 85), r.uniform(di, stream + ".t1", 120, 600)
        )
        _issues(f, r, p, u < p_now + p_past, stream, now_us, days, codes, probs)

    current(
        "raas",
        0.55,
        0.10,
        [("ATC", "C09AA05", None), ("ATC", "C09CA01", None), ("ATC", "C09AA02", None), ("ATC", "C09CA06", None)],
        [0.5, 0.25, 0.15, 0.10],
    )
    current("metformin", 0.68, 0.08, [("ATC", "A10BA02", None)], [1.0])
    current("insulin", 0.15, 0.05, [("ATC", "A10AE04", None), ("ATC", "A10AB05", None)], [0.7, 0.3])
    current(
        "sglt2",
        0.12,
        0.04,
        [("ATC", "A10BK01", None), ("ATC", "A10BK03", None), ("ATC", "A10BD15", None)],
        [0.45, 0.45, 0.10],
    )
    # Type 1 diabetes: diagnosis, insulin, HbA1c.
    pos1 = np.flatnonzero(t1)
    i1 = idx[pos1]
    f.add(
        pos1,
        _ago(now_us, r.u(i1, "t1.diag") * np.maximum(age[pos1] - 1, 0.5) * YEAR),
        "condition",
        [("ICD10", "E10.9", None), ("SNOMED", "46635009", None)],
        r.choice(i1, "t1.code", [0.7, 0.3]),
    )
    _issues(
        f,
        r,
        p,
        t1,
        "t1.insulin",
        now_us,
        np.where(t1, r.uniform(idx, "t1.ins.t", 1, 60), 0),
        [("ATC", "A10AE04", None), ("ATC", "A10AB05", None)],
        [0.5, 0.5],
    )
    f.add(
        pos1,
        _ago(now_us, r.uniform(i1, "t1.hba1c.t", 1, 300)),
        "measurement",
        ("LOINC", "59261-8", "mmol/mol"),
        value=np.round(np.clip(64 + 12 * r.normal(i1, "t1.hba1c"), 40, 120)),
    )


def _routine(f: _Facts, r: _Rand, p: _People, adult: np.ndarray, diabetic: np.ndarray, now_us: int) -> None:
    idx, age = p.idx, p.age
    pos = np.flatnonzero(adult)
    ai = idx[pos]
    occasions = r.poisson(ai, "labs.n", 1.3 + (age[pos] >= 60) * 1.0)
    rows, k = _expand(occasions)
    # Older routine blood panels, 2-6 years ago (a second stream, so the recent panels stay as they were): the
    # history a real record has, older than any sample study's look-back (at most 2 years for these tests).
    old = r.poisson(ai, "labs.old.n", 0.8 + (age[pos] >= 60) * 0.7)
    orows, ok = _expand(old)
    ri = np.concatenate([ai[rows], ai[orows]])
    k = np.concatenate([k, ok + 1_000])  # distinct draw counters for the older panels
    t = _ago(
        now_us,
        np.concatenate(
            [
                r.uniform(ai[rows], "labs.t", 1, 730, k[: len(rows)]),
                r.uniform(ai[orows], "labs.old.t", 2 * YEAR, 6 * YEAR, ok),
            ]
        ),
    )
    rp = np.concatenate([pos[rows], pos[orows]])
    f.add(
        rp,
        t,
        "measurement",
        ("LOINC", "718-7", "g/L"),
        value=np.round(np.where(p.female[rp], 130, 145) + 13 * r.normal(ri, "hb", k)),
    )
    f.add(rp, t, "measurement", ("LOINC", "2951-2", "mmol/L"), value=np.round(139 + 2.5 * r.normal(ri, "na", k)))
    f.add(rp, t, "measurement", ("LOINC", "2823-3", "mmol/L"), value=np.round(4.3 + 0.35 * r.normal(ri, "k", k), 1))
    nd = ~diabetic[rp]
    egfr = np.clip(np.round(97 - 0.7 * np.maximum(age[rp] - 30, 0) + 12 * r.normal(ri, "egfr.r", k)), 8, 130)
    f.add(rp[nd], t[nd], "measurement", ("LOINC", "62238-1", "mL/min/1.73m2"), value=egfr[nd])
    crea = np.clip(np.round(75 * (90 / egfr) ** 0.9), 35, 900)
    mgdl = r.u(ri, "crea.r.unit", k) < 0.15
    f.add(
        rp[nd],
        t[nd],
        "measurement",
        [("LOINC", "14682-9", "umol/L"), ("LOINC", "2160-0", "mg/dL")],
        mgdl[nd].astype(np.int64),
        np.where(mgdl, np.round(crea / 88.4, 2), crea)[nd],
    )
    alt = r.u(ri, "alt.on", k) < 0.5
    f.add(
        rp[alt],
        t[alt],
        "measurement",
        ("LOINC", "1742-6", "U/L"),
        value=np.round(np.exp(np.log(22) + 0.45 * r.normal(ri, "alt", k)))[alt],
    )
    # Blood pressure, BMI, hypertension and its treatment.
    n_bp = 1 + r.poisson(ai, "bp.n", 0.5)
    rows, k = _expand(n_bp)
    f.add(
        pos[rows],
        _ago(now_us, r.uniform(ai[rows], "bp.t", 1, 700, k)),
        "measurement",
        ("LOINC", "8480-6", "mm[Hg]"),
        value=np.round(122 + 0.25 * age[pos[rows]] + 15 * r.normal(ai[rows], "bp", k)),
    )
    bmi = r.u(ai, "bmi.on") < 0.6
    f.add(
        pos[bmi],
        _ago(now_us, r.uniform(ai[bmi], "bmi.t", 1, 700)),
        "measurement",
        ("LOINC", "39156-5", "kg/m2"),
        value=np.round(np.clip(28 + 5 * r.normal(ai[bmi], "bmi"), 16, 55), 1),
    )
    p_htn = np.select([age < 30, age < 50, age < 65], [0.0, 0.08, 0.25], 0.45)
    htn = adult & (r.u(idx, "htn") < p_htn)
    hp = np.flatnonzero(htn)
    f.add(
        hp,
        _ago(now_us, r.uniform(idx[hp], "htn.t", 60, 12 * YEAR) * np.minimum(1, (age[hp] - 25) / 12)),
        "condition",
        [("ICD10", "I10", None), ("SNOMED", "38341003", None)],
        r.choice(idx[hp], "htn.code", [0.75, 0.25]),
    )
    treated = htn & ~diabetic & (r.u(idx, "htn.rx") < 0.6)
    _issues(
        f,
        r,
        p,
        treated,
        "htn.rx",
        now_us,
        np.where(treated, r.uniform(idx, "htn.rx.t", 1, 120), 0),
        [("ATC", "C09AA05", None), ("ATC", "C08CA01", None), ("ATC", "C09CA01", None)],
        [0.4, 0.4, 0.2],
    )


def _breast(f: _Facts, r: _Rand, p: _People, recent: np.ndarray, now_us: int) -> None:
    idx, age = p.idx, p.age
    pos = np.flatnonzero(recent)
    bi = idx[pos]
    diag = r.uniform(bi, "bc.diag", 10, 150)
    f.add(
        pos,
        _ago(now_us, diag),
        "condition",
        [("ICD10", "C50.9", None), ("ICD10", "C50.4", None), ("ICD10", "C50.8", None), ("SNOMED", "254837009", None)],
        r.choice(bi, "bc.code", [0.4, 0.25, 0.15, 0.2]),
    )
    surg_days = diag - r.uniform(bi, "bc.surg.after", 14, 50)
    operated = (r.u(bi, "bc.surg") < 0.85) & (surg_days >= 1)
    mastectomy = r.u(bi, "bc.mx") < 0.2
    f.add(
        pos[operated],
        _ago(now_us, surg_days[operated]),
        "procedure",
        [("OPCS4", "B28.2", None), ("OPCS4", "B28.3", None), ("OPCS4", "B27.4", None)],
        np.where(mastectomy, 2, r.choice(bi, "bc.bcs", [0.4, 0.6]))[operated],
        setting="hospital",
        status="completed",
    )
    ecog = r.u(bi, "ecog")
    ecog_days = np.where(ecog < 0.65, r.uniform(bi, "ecog.t0", 1, 85), r.uniform(bi, "ecog.t1", 95, 150))
    has = ecog < 0.78
    f.add(
        pos[has],
        _ago(now_us, ecog_days[has]),
        "measurement",
        ("LOINC", "89247-1", "{score}"),
        value=r.choice(bi, "ecog.v", [0.55, 0.33, 0.10, 0.02])[has].astype(np.float64),
        setting="hospital",
    )
    mets = r.u(bi, "bc.mets") < 0.05
    f.add(
        pos[mets],
        _ago(now_us, diag[mets] - 5),
        "condition",
        [("ICD10", "C78.0", None), ("ICD10", "C79.5", None)],
        r.choice(bi[mets], "bc.mets.code", [0.5, 0.5]),
    )
    rt = r.u(bi, "bc.rt") < 0.02
    f.add(pos[rt], _ago(now_us, np.full(int(rt.sum()), 3000.0)), "condition", ("ICD10", "Z92.3", None))
    # Breast cancer in the past (excludes from the menopause study; not an early-breast-cancer candidate).
    past = p.female & (age >= 50) & ~recent & (r.u(idx, "bc.past") < 0.03)
    pp = np.flatnonzero(past)
    f.add(pp, _ago(now_us, r.uniform(idx[pp], "bc.past.t", 2 * YEAR, 15 * YEAR)), "condition", ("ICD10", "C50.9", None))
