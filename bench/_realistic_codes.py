"""The record types of the realistic workload's code pools (conditions, laboratory tests, drugs, procedures,
scores, event pairs, themes), the routine panels everyone has, and the laboratory tests several themes share.
The ten themes themselves are in :mod:`bench._realistic_themes`.

Codes are real where they are well known (ICD-10, ATC, OPCS-4, LOINC with the canonical units of
``screener/rules/data/loinc_units.csv``, SNOMED CT concepts, RxNorm ingredients); dm+d identifiers are
dm+d-shaped product ids. Both the population (:mod:`bench._realistic_population`) and the studies
(:mod:`bench._realistic_studies`) read these tables, so every study code can occur in the population with the
prevalence given here (per patient of the theme), and the population adds a background of codes that no study
uses (:func:`background_codes`).

The numbers are a hospital caseload, not a general population: themes are enriched so that each of the hundred
studies finds eligible, possible and ineligible patients among a few thousand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ALT",
    "CREATININE",
    "EGFR",
    "HBA1C",
    "NT_PROBNP",
    "QUALIFIERS",
    "ROUTINE",
    "SMOKING",
    "Cond",
    "Drug",
    "Lab",
    "Pair",
    "Proc",
    "Score",
    "Theme",
]


@dataclass(frozen=True)
class Cond:
    """A diagnosis: ``p`` of the theme's patients have it; ``n`` codings each on average (repeat codings)."""

    name: str
    icd10: tuple[str, ...]
    snomed: tuple[str, ...] = ()
    p: float = 0.3
    n: float = 1.5
    resolved: float = 0.1  # share recorded as resolved (with an end)
    severe: float = 0.25  # share with a severity qualifier (severe/moderate/mild)


@dataclass(frozen=True)
class Lab:
    """A laboratory test: values ~ normal(mean + between-patient sd, within sd), ``per_year`` results a year for
    a theme patient (everyone gets ``base_year`` a year); ``alt`` = (LOINC code, unit, a, b): that share of
    results written ``a * value + b`` in another convertible unit."""

    name: str
    loinc: tuple[str, ...]
    unit: str
    mean: float
    sd_between: float
    sd_within: float
    ref: tuple[float | None, float | None]
    per_year: float = 2.0
    base_year: float = 0.0
    decimals: int = 1
    alt: tuple[str, str, float, float, float] | None = None  # code, unit, a, b, share
    log: bool = False  # lognormal (skewed: ACR, NT-proBNP, CRP, troponin): mean and sds are of log(value)
    system: str = "LOINC"  # "local" for a local code (DAS28)


@dataclass(frozen=True)
class Drug:
    """A repeat prescription: ``p`` of the theme's patients, issues of ``days`` days, doses from ``doses``."""

    name: str
    atc: tuple[str, ...]
    route: str
    doses: tuple[float, ...]
    dose_unit: str
    p: float = 0.3
    days: int = 28
    issues: float = 6.0  # issues per treated patient
    dmd: tuple[str, ...] = ()
    rxnorm: tuple[str, ...] = ()


@dataclass(frozen=True)
class Proc:
    name: str
    opcs4: tuple[str, ...]
    p: float = 0.1
    planned: float = 0.1  # share of these patients with one planned in the next 60 days


@dataclass(frozen=True)
class Score:
    """A coded observation with a score value (unit ``{score}``), uniform integers in ``[lo, hi]``."""

    name: str
    code: tuple[str, str]  # (system, code)
    lo: int
    hi: int
    per_year: float = 1.0


@dataclass(frozen=True)
class Pair:
    """An index event and the event that follows it ``0..lag_days`` later (for ``after``/``before``)."""

    name: str
    first: str  # condition or procedure name in the theme
    then: str
    p: float
    lag_days: int


@dataclass(frozen=True)
class Theme:
    name: str
    prevalence: float  # share of eligible-aged patients in the theme
    children: bool  # paediatric theme: only under-18s
    conditions: tuple[Cond, ...]
    labs: tuple[Lab, ...]
    drugs: tuple[Drug, ...]
    procs: tuple[Proc, ...] = ()
    scores: tuple[Score, ...] = ()
    pairs: tuple[Pair, ...] = ()
    exclusions: tuple[Cond, ...] = field(default=())  # rarer conditions studies exclude on


#: severity and laterality qualifiers (SNOMED), as ``SYSTEM|code``
QUALIFIERS = {"severe": "24484000", "moderate": "6736007", "mild": "255604002"}
#: coded smoking status: smoker, ex-smoker, never smoked (value_code of LOINC 72166-2)
SMOKING = ("77176002", "8517006", "266919005")

_U_E = Lab("sodium", ("2951-2",), "mmol/L", 139, 2.5, 1.5, (133, 146), 0.0, 1.2, 0)
_FBC = Lab("haemoglobin", ("718-7",), "g/dL", 13.2, 1.3, 0.6, (11.5, 16.5), 0.0, 1.2)
#: routine panels that everyone has, whatever their themes
ROUTINE = (
    _U_E,
    Lab("potassium", ("2823-3",), "mmol/L", 4.4, 0.35, 0.3, (3.5, 5.3), 0.0, 1.2),
    _FBC,
    Lab("platelets", ("777-3",), "10*3/uL", 260, 60, 25, (150, 400), 0.0, 1.1, 0),
    Lab("wbc", ("6690-2",), "10*3/uL", 7.2, 1.6, 1.0, (4.0, 11.0), 0.0, 1.1),
    Lab("crp", ("1988-5",), "mg/L", 1.6, 0.9, 0.6, (0, 5), 0.0, 0.8, 0, log=True),
    Lab("cholesterol", ("14647-2",), "mmol/L", 5.0, 0.8, 0.3, (None, 5.0), 0.0, 0.4),
    Lab("tsh", ("3016-3",), "m[IU]/L", 2.0, 0.9, 0.4, (0.4, 4.0), 0.0, 0.3, 2),
    Lab("bmi", ("39156-5",), "kg/m2", 27.5, 5.0, 0.8, (18.5, 25), 0.0, 0.6),
    Lab("systolic_bp", ("8480-6",), "mm[Hg]", 132, 14, 9, (90, 140), 0.0, 1.0, 0),
)

EGFR = Lab("egfr", ("62238-1", "33914-3"), "mL/min/1.73m2", 52, 20, 5, (90, None), 3.0, 0.6, 0)
CREATININE = Lab(
    "creatinine", ("14682-9",), "umol/L", 135, 45, 12, (59, 104), 3.0, 0.6, 0, alt=("2160-0", "mg/dL", 1 / 88.4, 0, 0.1)
)
HBA1C = Lab(
    "hba1c", ("59261-8",), "mmol/mol", 58, 12, 5, (20, 42), 2.5, 0.2, 0, alt=("4548-4", "%", 1 / 10.929, 2.15, 0.15)
)
ALT = Lab("alt", ("1742-6",), "U/L", 3.3, 0.4, 0.25, (0, 40), 1.0, 0.8, 0, log=True)
NT_PROBNP = Lab("nt_probnp", ("33762-6",), "pg/mL", 6.2, 1.1, 0.4, (0, 400), 1.5, 0.0, 0, log=True)
