"""A seeded, reproducible synthetic hospital population for demos, tests and benchmarks (pure: no Kafka).

Two entry points that describe the *same* patients:

``generate(n, seed=, now=, start_index=)``   yields each patient's canonical events (person event first, then
                                             the facts in time order), for connectors and tests;
``generate_frames(n, seed=, now=)``          returns the state frames (``PERSONS_SCHEMA``, ``FACTS_SCHEMA``)
                                             directly, vectorised, for benchmarks of a million patients.

``apply_events(PatientState(), <all events of generate(n)>)`` equals ``generate_frames(n)`` row for row.

Reproducibility: every random draw is a counter-based hash of ``(seed, patient index, stream, k)``, so patient
``i`` is identical whatever the batch size, ``start_index`` or ``n``; pass ``now`` explicitly for identical
timestamps (the default is the current time, whole seconds). All clinical times are before ``now``.

The mix (documented choices):

- Ethnic group (ONS 2021 high-level, West Yorkshire Census 2021): White 76.6 %, Asian 15.8 %, Black 3.1 %,
  Mixed 2.5 %, Other 2.0 % of those with a stated group; 1 % have none stated (NHS category ``Z``). Asian
  patients are mostly Pakistani (category ``J``), as in Bradford and Kirklees.
- Deprivation: about 25 % in national IMD decile 1 overall (42 % of minority-ethnic patients, 20 % of White
  patients), falling to 6 % in decile 10.
- Ages 0-95 from a West Yorkshire-like pyramid; sex F 50.7 %, M 49.15 %, U 0.15 %.
- Settings: hospital, community and primary care (and home for some heart-failure patients); a patient's
  setting is where their latest record came from (as the state frames compute it).
- Records: about 20 facts per patient on average (19.7 at seed 0): recent care plus routine history, visits
  3-10 years ago and blood panels (Hb, sodium, potassium, creatinine/eGFR, ALT) 2-6 years ago, older than
  any sample study's look-back, so they make records realistic without moving any study's outcome.
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

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from connectors.synthetic._formats import to_fhir, to_hl7v2
from screener.events import Event, Person
from screener.state import FACTS_SCHEMA, PERSONS_SCHEMA, upgrade_facts, upgrade_persons

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

SOURCE = "synthetic"
DAY = 86_400_000_000  # microseconds
HOUR = 3_600_000_000
MINUTE = 60_000_000
YEAR = 365.25

#: ONS 2021 high-level groups among those with a stated group (West Yorkshire, Census 2021).
CENSUS_ETHNIC_MIX: dict[str, float] = {"white": 0.766, "asian": 0.158, "black": 0.031, "mixed": 0.025, "other": 0.020}
_GROUPS = ("white", "asian", "black", "mixed", "other")
_NOT_STATED = 0.01
#: NHS Data Dictionary ethnic category letters within each group, with West Yorkshire-like weights.
_CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "white": (("A", "B", "C"), (0.90, 0.01, 0.09)),
    "asian": (("H", "J", "K", "L"), (0.22, 0.66, 0.06, 0.06)),
    "black": (("M", "N", "P"), (0.30, 0.60, 0.10)),
    "mixed": (("D", "E", "F", "G"), (0.40, 0.15, 0.25, 0.20)),
    "other": (("S",), (1.0,)),
}
_IMD_WHITE = (0.200, 0.135, 0.105, 0.095, 0.085, 0.085, 0.078, 0.076, 0.074, 0.067)
_IMD_MINORITY = (0.42, 0.16, 0.10, 0.07, 0.06, 0.05, 0.04, 0.04, 0.03, 0.03)
_AGE_BANDS = (  # (lowest age, width in years, weight)
    (0, 5, 6.0),
    (5, 5, 6.5),
    (10, 5, 6.5),
    (15, 5, 6.0),
    (20, 5, 6.3),
    (25, 5, 6.6),
    (30, 5, 6.7),
    (35, 5, 6.5),
    (40, 5, 6.2),
    (45, 5, 6.3),
    (50, 5, 6.8),
    (55, 5, 6.6),
    (60, 5, 5.8),
    (65, 5, 4.9),
    (70, 5, 4.8),
    (75, 5, 3.5),
    (80, 5, 2.4),
    (85, 5, 1.4),
    (90, 6, 0.7),
)
_SETTINGS = ("hospital", "community", "primary-care", "home")
_HOSPITAL_SITES = ("RXX01", "RXX02")
_COMMUNITY_SITES = ("COMM-RXX-01", "COMM-RXX-02", "COMM-RXX-03", "COMM-RXX-04")
_GP_SITES = ("GP-B83001", "GP-B83005", "GP-B82018", "GP-B86010", "GP-B87003", "GP-B85011")
_HOME_SITE = "HOME-RXX-VW"
_DISTRICTS = (
    "BD1",
    "BD3",
    "BD4",
    "BD5",
    "BD7",
    "BD8",
    "BD9",
    "BD10",
    "BD18",
    "BD21",
    "LS4",
    "LS6",
    "LS7",
    "LS8",
    "LS9",
    "LS11",
    "LS12",
    "LS14",
    "LS17",
    "LS28",
    "HD1",
    "HD2",
    "HD3",
    "HD4",
    "HX1",
    "HX3",
    "WF1",
    "WF2",
    "WF10",
    "WF13",
    "WF17",
)

# ---------------------------------------------------------------------------------------------------------
# Counter-based randomness: u(seed, index, stream, k) in [0, 1), independent of how patients are batched.

_M64 = (1 << 64) - 1


def _mix_int(x: int) -> int:
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = x ^ (x >> np.uint64(31))
    return out


class _Rand:
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def u(self, idx: np.ndarray, stream: str, k: np.ndarray | int = 0) -> np.ndarray:
        key = np.uint64(_mix_int(_mix_int(self.seed * 0x9E3779B97F4A7C15 + 1) ^ zlib.crc32(stream.encode())))
        with np.errstate(over="ignore"):
            x = idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + key
            x = x + np.asarray(k, dtype=np.int64).astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)
            x = _mix(_mix(x))
        out: np.ndarray = (x >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
        return out

    def normal(self, idx: np.ndarray, stream: str, k: np.ndarray | int = 0) -> np.ndarray:
        u1 = 1.0 - self.u(idx, stream + ".1", k)
        u2 = self.u(idx, stream + ".2", k)
        out: np.ndarray = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        return out

    def uniform(self, idx: np.ndarray, stream: str, lo: Any, hi: Any, k: np.ndarray | int = 0) -> np.ndarray:
        out: np.ndarray = lo + (np.asarray(hi) - lo) * self.u(idx, stream, k)
        return out

    def poisson(self, idx: np.ndarray, stream: str, lam: Any) -> np.ndarray:
        """Poisson counts by inverting the CDF (small means only; capped at 40)."""
        u = self.u(idx, stream)
        lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), u.shape)
        pmf = np.exp(-lam)
        cdf = pmf.copy()
        count = np.zeros(u.shape, dtype=np.int64)
        for k in range(1, 41):
            count += u > cdf
            pmf = pmf * lam / k
            cdf = cdf + pmf
        return count

    def choice(self, idx: np.ndarray, stream: str, probs: Sequence[float], k: np.ndarray | int = 0) -> np.ndarray:
        cum = np.cumsum(np.asarray(probs, dtype=np.float64))
        out: np.ndarray = np.minimum(
            np.searchsorted(cum / cum[-1], self.u(idx, stream, k), side="right"), len(probs) - 1
        )
        return out


def nhs_check_digit(nine: str) -> int | None:
    """The modulus 11 check digit of a 9-digit NHS number body, or ``None`` when the body is unusable (10)."""
    total = sum(int(d) * w for d, w in zip(nine, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def is_valid_nhs_number(number: str) -> bool:
    """True when ``number`` is 10 digits whose last digit is the modulus 11 check digit of the first nine."""
    return len(number) == 10 and number.isdigit() and nhs_check_digit(number[:9]) == int(number[9])


def _nhs_numbers(idx: np.ndarray, seed: int) -> np.ndarray:
    """Valid NHS numbers in the 999 test range, vectorised (10-digit strings)."""
    six = (idx.astype(np.int64) * 7919 + seed * 104_729 + 12_345) % 1_000_000
    weights = np.array([10, 9, 8, 7, 6, 5, 4, 3, 2])

    def checks(body6: np.ndarray) -> np.ndarray:
        digits = np.stack([np.full_like(body6, 9)] * 3 + [(body6 // 10**p) % 10 for p in range(5, -1, -1)], axis=1)
        c = 11 - (digits * weights).sum(axis=1) % 11
        return np.where(c == 11, 0, c)

    check = checks(six)
    six = np.where(check == 10, six ^ 1, six)  # a different last body digit always gives a usable check digit
    check = checks(six)
    return np.char.add(np.char.add("999", np.char.zfill(six.astype(str), 6)), check.astype(str))


# ---------------------------------------------------------------------------------------------------------
# Fact assembly: numpy parts, one registry of (system, code, unit) triples, one Polars frame per block.

Code = tuple[str, str, str | None]  # (system, code, unit)
_KINDS = ("condition", "measurement", "drug", "procedure", "visit", "observation")


@dataclass
class _Facts:
    registry: dict[Code, int] = field(default_factory=dict)
    parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(
        self,
        pos: np.ndarray,
        t: np.ndarray,
        kind: str,
        codes: Sequence[Code] | Code,
        which: np.ndarray | None = None,
        value: np.ndarray | None = None,
        setting: str | None = None,
        keep: np.ndarray | None = None,
    ) -> None:
        """Add facts for block positions ``pos`` at times ``t`` (us). ``which`` picks among ``codes``."""
        options: list[Code] = [codes] if isinstance(codes[0], str) else list(codes)  # type: ignore[list-item, arg-type]
        ids = np.array([self.registry.setdefault(c, len(self.registry)) for c in options], dtype=np.int32)
        n = len(pos)
        code_id = ids[which] if which is not None else np.full(n, ids[0], dtype=np.int32)
        vals = np.asarray(value, dtype=np.float64) if value is not None else np.full(n, np.nan)
        part = {
            "pos": np.asarray(pos, dtype=np.int64),
            "t": np.asarray(t, dtype=np.int64),
            "code_id": code_id,
            "value": vals,
            "kind": np.full(n, _KINDS.index(kind), dtype=np.int8),
            "setting": np.full(n, -1 if setting is None else _SETTINGS.index(setting), dtype=np.int8),
        }
        if keep is not None:
            part = {k: v[keep] for k, v in part.items()}
        self.parts.append(part)

    def frame(self) -> pl.DataFrame:
        cols = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        df = pl.DataFrame(cols)
        reg = pl.DataFrame(
            {
                "code_id": np.arange(len(self.registry), dtype=np.int32),
                "system": [c[0] for c in self.registry],
                "code": [c[1] for c in self.registry],
                "unit": [c[2] for c in self.registry],
            },
            schema={"code_id": pl.Int32, "system": pl.String, "code": pl.String, "unit": pl.String},
        )
        return df.join(reg, on="code_id", how="left").with_columns(
            pl.col("value").fill_nan(None),
            pl.col("kind").replace_strict(list(range(len(_KINDS))), list(_KINDS), return_dtype=pl.String),
        )


def _labels(index: np.ndarray, labels: Sequence[str]) -> pl.Series:
    """A String series of ``labels[index]`` (``-1`` gives null), whatever the first element is."""
    table = pl.Series(values=[*labels, None], dtype=pl.String)
    return table.gather(np.where(np.asarray(index) < 0, len(labels), index).astype(np.int64))


def _ago(now_us: int, days: np.ndarray) -> np.ndarray:
    out: np.ndarray = (now_us - np.round(np.asarray(days) * DAY)).astype(np.int64)
    return out


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row index into the counted array, ordinal k within the row) for ``counts[i]`` repeats of each row."""
    rows = np.repeat(np.arange(len(counts)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return rows, np.arange(len(rows)) - starts


# ---------------------------------------------------------------------------------------------------------
# The block generator: patients [start, stop) -> (persons, facts) with extra columns for the person events.


@dataclass
class _People:
    idx: np.ndarray  # global patient index
    age: np.ndarray  # years (float)
    female: np.ndarray
    group: np.ndarray  # index into _GROUPS, -1 = not stated
    imd: np.ndarray
    setting: np.ndarray  # index into _SETTINGS


def _people(r: _Rand, idx: np.ndarray) -> tuple[_People, dict[str, Any]]:
    m = len(idx)
    su = r.u(idx, "sex")
    sex = np.where(su < 0.507, "F", np.where(su < 0.9985, "M", "U"))
    band = r.choice(idx, "age.band", [w for _, _, w in _AGE_BANDS])
    lo = np.array([b[0] for b in _AGE_BANDS])[band]
    width = np.array([b[1] for b in _AGE_BANDS])[band]
    age = lo + width * r.u(idx, "age.within")
    stated = r.u(idx, "eth.stated") >= _NOT_STATED
    group = np.where(stated, r.choice(idx, "eth.group", list(CENSUS_ETHNIC_MIX.values())), -1)
    letter = np.full(m, "Z", dtype=object)
    for g, name in enumerate(_GROUPS):
        letters, weights = _CATEGORIES[name]
        sel = group == g
        letter[sel] = np.array(letters, dtype=object)[r.choice(idx[sel], "eth.category", weights)]
    minority = group >= 1
    imd = np.where(minority, r.choice(idx, "imd.m", _IMD_MINORITY), r.choice(idx, "imd.w", _IMD_WHITE)) + 1
    child = age < 18
    setting = np.where(
        child,
        r.choice(idx, "setting.child", [0.20, 0.45, 0.35, 0.0]),
        r.choice(idx, "setting.adult", [0.45, 0.30, 0.25, 0.0]),
    )
    extra = {
        "sex": sex,
        "letter": letter,
        "lsoa": np.char.add("E0", (1_010_000 + (r.u(idx, "lsoa") * 2_400).astype(np.int64)).astype(str)),
        "district": np.array(_DISTRICTS, dtype=object)[(r.u(idx, "district") * len(_DISTRICTS)).astype(int)],
        "hosp_site": np.array(_HOSPITAL_SITES, dtype=object)[(r.u(idx, "site.h") * 2).astype(int)],
        "comm_site": np.array(_COMMUNITY_SITES, dtype=object)[(r.u(idx, "site.c") * 4).astype(int)],
        "gp_site": np.array(_GP_SITES, dtype=object)[(r.u(idx, "site.g") * len(_GP_SITES)).astype(int)],
    }
    return _People(idx, age, sex == "F", group, imd.astype(np.int64), setting.astype(np.int64)), extra


def _issues(
    f: _Facts,
    r: _Rand,
    p: _People,
    sel: np.ndarray,
    stream: str,
    now_us: int,
    latest_days: np.ndarray,
    codes: Sequence[Code],
    probs: Sequence[float],
    *,
    extra_mean: float = 1.0,
    interval: float = 56.0,
) -> None:
    """Repeat prescriptions: the latest at ``latest_days`` ago, earlier ones every ~``interval`` days."""
    pos = np.flatnonzero(sel)
    idx = p.idx[pos]
    which = r.choice(idx, stream + ".code", probs)
    counts = 1 + r.poisson(idx, stream + ".n", extra_mean)
    rows, k = _expand(counts)
    days = latest_days[pos][rows] + k * interval * (0.8 + 0.4 * r.u(idx[rows], stream + ".gap", k))
    f.add(pos[rows], _ago(now_us, days), "drug", codes, which[rows])


def _events_at(
    f: _Facts,
    r: _Rand,
    p: _People,
    sel: np.ndarray,
    stream: str,
    now_us: int,
    lam: float | np.ndarray,
    lo_days: float,
    hi_days: float,
    kind: str,
    codes: Sequence[Code],
    probs: Sequence[float] | None = None,
    setting: str | None = None,
) -> np.ndarray:
    """A Poisson number of coded events per selected patient, uniformly in [lo, hi] days ago; the counts."""
    pos = np.flatnonzero(sel)
    idx = p.idx[pos]
    counts = r.poisson(idx, stream + ".n", lam if np.isscalar(lam) else np.asarray(lam)[pos])
    rows, k = _expand(counts)
    days = r.uniform(idx[rows], stream + ".t", lo_days, hi_days, k)
    which = r.choice(idx[rows], stream + ".code", probs, k) if probs is not None else None
    f.add(pos[rows], _ago(now_us, days), kind, codes, which, setting=setting)
    out = np.zeros(len(sel), dtype=np.int64)
    out[pos] = counts
    return out


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
    n_visits = 1 + r.poisson(idx, "visit.n", 2.5)
    rows, k = _expand(n_visits)
    vdays = r.u(idx[rows], "visit.t", k) * np.minimum(3 * YEAR, np.maximum(age[rows] * YEAR - 1, 0.0))
    hosp_visit = r.u(idx[rows], "visit.where", k) < 0.25
    f.add(rows[hosp_visit], _ago(now_us, vdays[hosp_visit]), "visit", ("local", "encounter", None), setting="hospital")
    f.add(rows[~hosp_visit], _ago(now_us, vdays[~hosp_visit]), "visit", ("local", "encounter", None))
    # Older routine contacts, 3-10 years ago (never before birth): history no sample study looks back to.
    n_old = r.poisson(idx, "visit.old.n", np.where(age >= 60, 3.0, 2.0))
    rows, k = _expand(n_old)
    odays = r.uniform(idx[rows], "visit.old.t", 3 * YEAR, 10 * YEAR, k)
    born = odays < age[rows] * YEAR - 1
    hosp_old = r.u(idx[rows], "visit.old.where", k) < 0.2
    f.add(
        rows[born & hosp_old],
        _ago(now_us, odays[born & hosp_old]),
        "visit",
        ("local", "encounter", None),
        setting="hospital",
    )
    f.add(rows[born & ~hosp_old], _ago(now_us, odays[born & ~hosp_old]), "visit", ("local", "encounter", None))

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
    facts = facts.with_columns((pl.col("t") // 1_000_000 * 1_000_000).clip(upper_bound=now_us - MINUTE))
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
            .then(pl.col("setting").replace_strict(list(range(4)), list(_SETTINGS), return_dtype=pl.String))
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
            .otherwise(pl.col("site_home"))
            .alias("site")
        )
        .sort(["pos", "t", "kind", "code", "value"], maintain_order=True, nulls_last=True)
        .with_columns(pl.int_range(1, pl.len() + 1).over("pos").alias("ordinal"))
        .with_columns(
            pl.format("syn{}-{}-f{}", pl.lit(seed), pl.col("patient_id"), pl.col("ordinal")).alias("event_id"),
            pl.lit("active").alias("status"),
            pl.lit(None, dtype=pl.String).alias("corrects"),
        )
        .select(_EVENT_COLUMNS)
    )
    # The person's setting and site are those of their latest fact (consent, death and entered-in-error events
    # do not move a patient, as in screener.state); a retracted fact still counted when it arrived.
    last = facts.group_by("pos").agg(
        pl.col("t").min().alias("first_t"),
        pl.col("t").max().alias("last_t"),
        pl.col("setting").last(),
        pl.col("site").last(),
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


def _merge(facts: pl.DataFrame, control: pl.DataFrame) -> pl.DataFrame:
    """All of a block's non-person events in stream order (control events sorted in by their ``order`` key)."""
    return (
        pl.concat([facts.with_columns(pl.int_range(pl.len()).cast(pl.Float64).alias("order")), control])
        .sort(["pos", "t", "order"])
        .drop("order")
    )


_EVENT_COLUMNS = (
    "pos",
    "patient_id",
    "event_id",
    "t",
    "kind",
    "system",
    "code",
    "value",
    "unit",
    "status",
    "setting",
    "site",
    "corrects",
)
#: Share of patients on the national data opt-out / local do-not-contact register (a ``consent`` event).
DO_NOT_CONTACT_SHARE = 0.01
#: Share of patients drawn for one lab result later marked entered-in-error (those with no result have none).
CORRECTION_SHARE = 0.015


def _control_events(
    r: _Rand, p: _People, persons: pl.DataFrame, facts: pl.DataFrame, seed: int, now_us: int
) -> pl.DataFrame:
    """Consent (do-not-contact), death and entered-in-error events for a block, with a sort key ``order``.

    - ~1 % opt out: ``consent`` with code ``local/do-not-contact``, status ``active``, within the last 5 years;
    - deaths, by age (0.1 % under 60, 1.5 % at 60-79, 6 % from 80; ~0.6 % overall): a ``death`` event 1-90 days
      after the patient's last record, where they were last seen;
    - 1.5 % are drawn, and those with a result (~1.2 % of all) have one lab result retracted 1 hour to 5 days
      after it was recorded: an ``entered-in-error`` copy of the result whose ``corrects`` names it (event id
      ``<original>-eie``), placed right after it.
    """
    idx, age = p.idx, p.age
    base = persons.select("pos", "patient_id", "setting", "site", "last_t")
    order_ctl = float(2**52)
    # consent
    dnc = np.flatnonzero(r.u(idx, "dnc") < DO_NOT_CONTACT_SHARE)
    dnc_days = r.u(idx[dnc], "dnc.t") * np.minimum(5 * YEAR, np.maximum(age[dnc], 0.1) * YEAR)
    consent = base.join(
        pl.DataFrame({"pos": dnc, "t": _ago(now_us, dnc_days) // 1_000_000 * 1_000_000}), on="pos", how="inner"
    ).with_columns(
        pl.min_horizontal("t", "last_t").alias("t"),  # no opt-out recorded after the last record
        pl.format("syn{}-{}-c1", pl.lit(seed), pl.col("patient_id")).alias("event_id"),
        pl.lit("consent").alias("kind"),
        pl.lit("local").alias("system"),
        pl.lit("do-not-contact").alias("code"),
        pl.lit(None, dtype=pl.Float64).alias("value"),
        pl.lit(None, dtype=pl.String).alias("unit"),
        pl.lit("active").alias("status"),
        pl.lit(None, dtype=pl.String).alias("corrects"),
        pl.lit(order_ctl).alias("order"),
    )
    # death
    p_death = np.select([age < 60, age < 80], [0.001, 0.015], 0.06)
    dead = np.flatnonzero(r.u(idx, "death") < p_death)
    death = base.join(
        pl.DataFrame({"pos": dead, "after": np.round(r.uniform(idx[dead], "death.t", 1, 90) * DAY).astype(np.int64)}),
        on="pos",
        how="inner",
    ).with_columns(
        ((pl.col("last_t") + pl.col("after")).clip(upper_bound=now_us - MINUTE) // 1_000_000 * 1_000_000).alias("t"),
        pl.format("syn{}-{}-d1", pl.lit(seed), pl.col("patient_id")).alias("event_id"),
        pl.lit("death").alias("kind"),
        pl.lit(None, dtype=pl.String).alias("system"),
        pl.lit(None, dtype=pl.String).alias("code"),
        pl.lit(None, dtype=pl.Float64).alias("value"),
        pl.lit(None, dtype=pl.String).alias("unit"),
        pl.lit("active").alias("status"),
        pl.lit(None, dtype=pl.String).alias("corrects"),
        pl.lit(order_ctl + 1).alias("order"),
    )
    # entered-in-error: pick one measurement of the chosen patients
    chosen = np.flatnonzero(r.u(idx, "eie") < CORRECTION_SHARE)
    pick = pl.DataFrame(
        {
            "pos": chosen,
            "pick": r.u(idx[chosen], "eie.which"),
            "delay": np.round(r.uniform(idx[chosen], "eie.delay", 1, 120) * HOUR).astype(np.int64),
        }
    )
    eie = (
        facts.with_columns(pl.int_range(pl.len()).cast(pl.Float64).alias("order"))
        .filter(pl.col("kind") == "measurement")
        .join(pick, on="pos", how="inner")
        .with_columns(pl.int_range(pl.len()).over("pos").alias("_k"), pl.len().over("pos").alias("_n"))
        .filter(pl.col("_k") == (pl.col("pick") * pl.col("_n")).floor().cast(pl.Int64))
        .with_columns(
            ((pl.col("t") + pl.col("delay")).clip(upper_bound=now_us - MINUTE) // 1_000_000 * 1_000_000)
            .clip(lower_bound=pl.col("t"))
            .alias("t"),
            pl.col("event_id").alias("corrects"),
            (pl.col("event_id") + "-eie").alias("event_id"),
            pl.lit("entered-in-error").alias("status"),
            pl.col("order") + 0.5,
        )
    )
    cols = [*_EVENT_COLUMNS, "order"]
    return pl.concat([consent.select(cols), death.select(cols), eie.select(cols)], how="vertical_relaxed")


# -- clinical modules --------------------------------------------------------------------------------------


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
        pl.lit(None, dtype=pl.String).alias("text"),
        pl.lit(False).alias("date_only"),  # synthetic times are instants
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


def _person_event(row: dict[str, Any], seed: int) -> Event:
    demographics = Person(
        birth_date=row["birth_date"],
        sex=row["sex"],
        ethnic_group=row["ethnic_group"],
        ethnic_category=row["ethnic_category"],
        lsoa=row["lsoa"],
        imd_decile=row["imd_decile"],
        postcode_district=row["postcode_district"],
        nhs_number=row["nhs_number"],
    )
    return Event(
        event_id=f"syn{seed}-{row['patient_id']}-p",
        source=SOURCE,
        kind="person",
        patient_id=row["patient_id"],
        occurred_at=row["updated_at"],
        person=demographics,
        setting=row["home_setting"],
        site=row["home_site"],
    )


def _fact_event(row: dict[str, Any]) -> Event:
    code = {"system": row["system"], "value": row["code"]} if row["code"] is not None else None
    return Event.model_validate(
        {
            "event_id": row["event_id"],
            "source": SOURCE,
            "kind": row["kind"],
            "patient_id": row["patient_id"],
            "occurred_at": row["occurred_at"],
            "code": code,
            "value": row["value"],
            "unit": row["unit"],
            "status": row["status"],
            "setting": row["setting"],
            "site": row["site"],
            "corrects": row["corrects"],
        }
    )
