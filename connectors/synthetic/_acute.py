"""Clinical modules of the population: asthma, heart failure, acute stroke, women's health."""

from __future__ import annotations

import numpy as np

from ._base import HOUR, MINUTE, YEAR, _Rand
from ._facts import WARDS, _ago, _events_at, _expand, _Facts, _issues, _People


def _asthma(f: _Facts, r: _Rand, p: _People, now_us: int) -> None:
    idx, age = p.idx, p.age
    asthma = (age >= 3) & (r.u(idx, "asthma") < np.where(age < 18, 0.15, 0.08))
    pos = np.flatnonzero(asthma)
    ai = idx[pos]
    f.add(
        pos,
        _ago(now_us, r.u(ai, "asthma.diag") * np.maximum(age[pos] - 3, 0.5) * YEAR),
        "condition",
        [("ICD10", "J45.9", None), ("ICD10", "J45.0", None), ("SNOMED", "195967001", None)],
        r.choice(ai, "asthma.code", [0.45, 0.2, 0.35]),
    )
    young = asthma & (age < 19)
    ics = r.u(idx, "ics")
    ics_days = np.where(ics < 0.75, r.uniform(idx, "ics.t0", 1, 170), r.uniform(idx, "ics.t1", 200, 500))
    _issues(
        f,
        r,
        p,
        (young & (ics < 0.85)) | (asthma & ~young & (ics < 0.5)),
        "ics",
        now_us,
        ics_days,
        [("ATC", "R03BA05", None), ("ATC", "R03BA02", None), ("ATC", "R03AK06", None)],
        [0.45, 0.25, 0.3],
        interval=60.0,
    )
    # A latent severity: 40 % of children have hard-to-control asthma (courses, relievers, attacks).
    severe = young & (r.u(idx, "asthma.severe") < 0.4)
    _events_at(
        f,
        r,
        p,
        young,
        "ocs",
        now_us,
        np.where(severe, 2.2, 0.4),
        1,
        360,
        "drug",
        [("ATC", "H02AB06", None), ("ATC", "H02AB02", None)],
        [0.9, 0.1],
    )
    _events_at(
        f,
        r,
        p,
        asthma,
        "saba",
        now_us,
        np.select([severe, young], [7.0, 2.5], 2.0),
        1,
        360,
        "drug",
        [("ATC", "R03AC02", None), ("ATC", "R03AC03", None)],
        [0.9, 0.1],
    )
    attack = young & (r.u(idx, "attack") < np.where(severe, 0.45, 0.08))
    ap = np.flatnonzero(attack)
    f.add(
        ap,
        _ago(now_us, r.uniform(idx[ap], "attack.t", 1, 360)),
        "condition",
        ("ICD10", "J46", None),
        setting="hospital",
    )
    eos = r.u(idx, "eos")
    has = young & (eos < 0.65)
    ep = np.flatnonzero(has)
    days = np.where(eos[ep] < 0.55, r.uniform(idx[ep], "eos.t0", 1, 350), r.uniform(idx[ep], "eos.t1", 400, 700))
    f.add(
        ep,
        _ago(now_us, days),
        "measurement",
        [("LOINC", "26449-9", "10*9/L"), ("LOINC", "711-2", "10*9/L")],
        r.choice(idx[ep], "eos.code", [0.6, 0.4]),
        np.round(np.exp(np.log(0.32) + 0.6 * r.normal(idx[ep], "eos.v")), 2),
    )
    cf = young & (r.u(idx, "cf") < 0.004)
    f.add(np.flatnonzero(cf), _ago(now_us, np.full(int(cf.sum()), 2000.0)), "condition", ("ICD10", "E84.0", None))
    bio = young & (r.u(idx, "biologic") < 0.015)
    bp = np.flatnonzero(bio)
    f.add(
        bp, _ago(now_us, r.uniform(idx[bp], "biologic.t", 1, 150)), "drug", ("ATC", "R03DX05", None), setting="hospital"
    )


def _heart_failure(f: _Facts, r: _Rand, p: _People, hf: np.ndarray, now_us: int) -> None:
    idx = p.idx
    pos = np.flatnonzero(hf)
    hi = idx[pos]
    f.add(
        pos,
        _ago(now_us, r.uniform(hi, "hf.diag", 0.3 * YEAR, 8 * YEAR)),
        "condition",
        [("ICD10", "I50.0", None), ("ICD10", "I50.9", None), ("ICD10", "I11.0", None), ("SNOMED", "84114007", None)],
        r.choice(hi, "hf.code", [0.35, 0.30, 0.10, 0.25]),
    )
    bnp = r.u(hi, "bnp")
    has = bnp < 0.75
    days = np.where(bnp < 0.6, r.uniform(hi, "bnp.t0", 1, 175), r.uniform(hi, "bnp.t1", 200, 600))
    f.add(
        pos[has],
        _ago(now_us, days[has]),
        "measurement",
        ("LOINC", "33762-6", "pg/mL"),
        value=np.round(np.exp(np.log(900) + 1.0 * r.normal(hi, "bnp.v")))[has],
    )
    acute = r.u(hi, "hf.acute") < 0.2
    f.add(
        pos[acute],
        _ago(now_us, r.uniform(hi[acute], "hf.acute.t", 1, 360)),
        "condition",
        [("ICD10", "I50.1", None), ("SNOMED", "56675007", None)],
        r.choice(hi[acute], "hf.acute.code", [0.7, 0.3]),
        setting="hospital",
    )
    loop_now = np.zeros(len(idx), dtype=bool)
    loop_now[pos] = r.u(hi, "loop") < 0.65
    _issues(
        f,
        r,
        p,
        loop_now,
        "loop",
        now_us,
        np.where(loop_now, r.uniform(idx, "loop.t", 1, 80), 0),
        [("ATC", "C03CA01", None), ("ATC", "C03CA02", None)],
        [0.85, 0.15],
        extra_mean=2.0,
        interval=28.0,
    )
    bb = np.zeros(len(idx), dtype=bool)
    bb[pos] = r.u(hi, "bb") < 0.7
    _issues(
        f, r, p, bb, "bb", now_us, np.where(bb, r.uniform(idx, "bb.t", 1, 80), 0), [("ATC", "C07AB07", None)], [1.0]
    )
    ef = r.u(hi, "lvef.on") < 0.7
    f.add(
        pos[ef],
        _ago(now_us, r.uniform(hi[ef], "lvef.t", 1, 700)),
        "measurement",
        ("LOINC", "10230-1", "%"),
        value=np.round(np.clip(38 + 12 * r.normal(hi, "lvef"), 10, 70))[ef],
        setting="hospital",
    )
    cre = r.u(hi, "hf.crea")
    cdays = np.where(cre < 0.75, r.uniform(hi, "hf.crea.t0", 1, 85), r.uniform(hi, "hf.crea.t1", 100, 400))
    umol = np.round(np.exp(np.log(120) + 0.38 * r.normal(hi, "hf.crea.v")))
    mgdl = r.u(hi, "hf.crea.unit") < 0.15
    f.add(
        pos,
        _ago(now_us, cdays),
        "measurement",
        [("LOINC", "14682-9", "umol/L"), ("LOINC", "2160-0", "mg/dL")],
        mgdl.astype(np.int64),
        np.where(mgdl, np.round(umol / 88.4, 2), umol),
    )
    dev = r.u(hi, "device") < 0.15
    f.add(
        pos[dev],
        _ago(now_us, r.uniform(hi[dev], "device.t", 1 * YEAR, 6 * YEAR)),
        "procedure",
        [("OPCS4", "K59.1", None), ("OPCS4", "K61.1", None)],
        r.choice(hi[dev], "device.code", [0.6, 0.4]),
        setting="hospital",
    )


def _stroke(f: _Facts, r: _Rand, p: _People, acute: np.ndarray, now_us: int) -> None:
    idx, age = p.idx, p.age
    pos = np.flatnonzero(acute)
    si = idx[pos]
    w = r.u(si, "stroke.when")
    hours = np.select(
        [w < 0.7, w < 0.8],
        [r.uniform(si, "stroke.h0", 0.25, 5.9), 6 + r.uniform(si, "stroke.h1", 1, 40) / 60],
        r.uniform(si, "stroke.h2", 6.7, 23),
    )
    onset = now_us - np.round(hours * HOUR).astype(np.int64)
    # the admission in progress (no end yet): every hospital fact of the acute stroke belongs to it
    f.add(
        pos,
        onset,
        "visit",
        ("local", "encounter", None),
        setting="hospital",
        location=np.full(len(pos), WARDS.index("STROKE-UNIT")),
    )
    f.add(
        pos,
        onset,
        "condition",
        [("ICD10", "I63.9", None), ("ICD10", "I63.5", None), ("ICD10", "I63.3", None), ("SNOMED", "422504002", None)],
        r.choice(si, "stroke.code", [0.4, 0.25, 0.15, 0.2]),
        setting="hospital",
    )
    nihss_t = onset + np.round(r.uniform(si, "nihss.t", 15, 50) * MINUTE).astype(np.int64)
    nv = r.u(si, "nihss.band")
    nihss = np.floor(
        np.select(
            [nv < 0.2, nv < 0.9],
            [r.uniform(si, "nihss.v0", 0, 5), r.uniform(si, "nihss.v1", 5, 26)],
            r.uniform(si, "nihss.v2", 26, 35),
        )
    )
    ok = (r.u(si, "nihss.on") < 0.85) & (nihss_t < now_us)
    f.add(pos[ok], nihss_t[ok], "measurement", ("LOINC", "70182-1", "{score}"), value=nihss[ok], setting="hospital")
    glu_t = onset + np.round(r.uniform(si, "glu.t", 10, 40) * MINUTE).astype(np.int64)
    extreme = r.u(si, "glu.extreme") < 0.04
    mmol = np.where(extreme, r.uniform(si, "glu.x", 23, 30), np.clip(7.4 + 2.2 * r.normal(si, "glu.v"), 2.2, 21))
    mgdl = r.u(si, "glu.unit") < 0.2
    ok = (r.u(si, "glu.on") < 0.7) & (glu_t < now_us)
    f.add(
        pos[ok],
        glu_t[ok],
        "measurement",
        [("LOINC", "14749-6", "mmol/L"), ("LOINC", "2345-7", "mg/dL")],
        mgdl[ok].astype(np.int64),
        np.where(mgdl, np.round(mmol * 18.016), np.round(mmol, 1))[ok],
        setting="hospital",
    )
    ich_t = onset + 30 * MINUTE
    ich = (r.u(si, "ich") < 0.04) & (ich_t < now_us)
    f.add(pos[ich], ich_t[ich], "condition", ("ICD10", "I61.9", None), setting="hospital")
    anticoag = r.u(si, "stroke.anticoag") < 0.12
    f.add(
        pos[anticoag],
        now_us - np.round(r.uniform(si[anticoag], "anticoag.t", 4, 40) * HOUR).astype(np.int64),
        "drug",
        [("ATC", "B01AF02", None), ("ATC", "B01AF01", None), ("ATC", "B01AA03", None)],
        r.choice(si[anticoag], "anticoag.code", [0.5, 0.3, 0.2]),
    )
    aspirin = r.u(si, "stroke.aspirin") < 0.3
    f.add(
        pos[aspirin],
        now_us - np.round(r.uniform(si[aspirin], "aspirin.t", 8, 40) * HOUR).astype(np.int64),
        "drug",
        ("ATC", "B01AC06", None),
    )
    past = (age >= 60) & ~acute & (r.u(idx, "stroke.past") < 0.03)
    pp = np.flatnonzero(past)
    f.add(pp, _ago(now_us, r.uniform(idx[pp], "stroke.past.t", YEAR, 10 * YEAR)), "condition", ("ICD10", "I63.9", None))


def _womens_health(f: _Facts, r: _Rand, p: _People, now_us: int) -> None:
    idx, age, female = p.idx, p.age, p.female
    endo = female & (age >= 18) & (age < 53) & (r.u(idx, "endo") < 0.10)
    pos = np.flatnonzero(endo)
    ei = idx[pos]
    f.add(
        pos,
        _ago(now_us, r.u(ei, "endo.diag") * np.minimum(12, age[pos] - 16) * YEAR + 30),
        "condition",
        [
            ("ICD10", "N80.0", None),
            ("ICD10", "N80.1", None),
            ("ICD10", "N80.3", None),
            ("ICD10", "N80.9", None),
            ("SNOMED", "129103003", None),
        ],
        r.choice(ei, "endo.code", [0.3, 0.2, 0.15, 0.1, 0.25]),
    )
    pain = r.u(ei, "pain")
    has = pain < 0.8
    latest = np.where(pain < 0.55, r.uniform(ei, "pain.t0", 1, 85), r.uniform(ei, "pain.t1", 100, 300))
    counts = np.where(has, 1 + r.poisson(ei, "pain.n", 0.7), 0)
    rows, k = _expand(counts)
    f.add(
        pos[rows],
        _ago(now_us, latest[rows] + k * r.uniform(ei[rows], "pain.gap", 90, 200, k)),
        "measurement",
        ("LOINC", "72514-3", "{score}"),
        value=np.floor(r.uniform(ei[rows], "pain.v", 2, 11, k)),
    )
    hyst = r.u(ei, "hyst") < 0.03
    f.add(
        pos[hyst],
        _ago(now_us, r.uniform(ei[hyst], "hyst.t", 100, 5 * YEAR)),
        "procedure",
        ("OPCS4", "Q07.4", None),
        setting="hospital",
    )
    gnrh = r.u(ei, "gnrh") < 0.06
    f.add(pos[gnrh], _ago(now_us, r.uniform(ei[gnrh], "gnrh.t", 1, 80)), "drug", ("ATC", "L02AE03", None))
    preg = female & (age >= 18) & (age < 45) & (r.u(idx, "pregnant") < 0.04)
    pp = np.flatnonzero(preg)
    f.add(
        pp,
        _ago(now_us, r.uniform(idx[pp], "preg.t", 1, 250)),
        "condition",
        [("ICD10", "Z34.0", None), ("ICD10", "Z33.1", None), ("SNOMED", "77386006", None)],
        r.choice(idx[pp], "preg.code", [0.5, 0.3, 0.2]),
    )
    meno = female & (age >= 42) & (age < 63) & (r.u(idx, "meno") < 0.18)
    mp = np.flatnonzero(meno)
    mi = idx[mp]
    f.add(
        mp,
        _ago(now_us, r.uniform(mi, "meno.t", 1, 360)),
        "condition",
        [("ICD10", "N95.1", None), ("SNOMED", "198436008", None)],
        r.choice(mi, "meno.code", [0.7, 0.3]),
    )
    hrt = np.zeros(len(idx), dtype=bool)
    hrt[mp] = r.u(mi, "hrt") < 0.3
    _issues(
        f,
        r,
        p,
        hrt,
        "hrt",
        now_us,
        np.where(hrt, r.uniform(idx, "hrt.t", 1, 85), 0),
        [("ATC", "G03CA03", None), ("ATC", "G03FA01", None)],
        [0.7, 0.3],
        interval=84.0,
    )
