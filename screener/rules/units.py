"""Units of measure: normalised spellings, linear conversions ``to = a * from + b``, and the LOINC unit table.

A numeric concept declares the unit its facts are compared in. A fact in another unit is converted when the
conversion is known; otherwise it is *left out* of every numeric transform and counted (never silently
compared). Supported conversions:

- scale families: mass concentration (g/L, g/dL, mg/dL, mg/L, ug/L = ng/mL, ng/L = pg/mL, ...), molar
  concentration (mol/L ... pmol/L), mass (kg, g, lb), length (m, cm, mm, in), volume (L, dL, mL), temperature
  (Cel, degF), enzyme/hormone activity (U/L = IU/L, mIU/L = uIU/mL), cell counts (10*9/L = 10*3/uL = /nL),
  fractions (ratio <-> %: 0.7 ratio = 70 %), urine albumin:creatinine ratio (1 mg/mmol = 8.84 mg/g);
- HbA1c: % (DCCT) <-> mmol/mol (IFCC): ``mmol/mol = 10.929 * (% - 2.15)`` (only when the concept's analyte is
  hba1c or not given);
- mass <-> molar concentration for one analyte (molar mass in g/mol): creatinine (113.12; mg/dL -> umol/L
  x 88.4), glucose (180.16; mg/dL -> mmol/L / 18.0), cholesterol, triglycerides, urea, bilirubin, vitamin D
  (25-hydroxy). A concept may name its ``analyte``; when it does not, umol/L pairs default to creatinine and
  mmol/L pairs to glucose.

**Annotations.** A UCUM-style annotation unit (``{score}``, ``{pack-years}``, ``{INR}``: any unit written
entirely in braces, plus the known ones without braces) is its own family: it converts only to itself and, as
UCUM defines an annotation as the unit 1, to and from a value with no unit (a score is often sent bare).
``{beats}/min`` is the spelling ``bpm`` (an annotation beside a real unit is just a spelling) and converts only to
itself; ``/min`` is a different unit (it may count breaths).

A concept without a ``unit`` is dimensionless: only facts with no unit (or unit ``1``, or an annotation) are used.
Spellings are normalised: case-insensitive, spaces, ``^``, ``{}``, ``[]`` and ``_`` ignored, ``µ`` = ``u``.

**LOINC table.** ``data/loinc_units.csv`` lists the canonical unit of about sixty common LOINC codes (and, for a
few, other units in use); :func:`loinc_units` gives every normalised spelling a value of that code can be in.
"""

from __future__ import annotations

import csv
import io
from functools import cache, lru_cache
from importlib import resources

import polars as pl

__all__ = [
    "ANALYTES",
    "KNOWN_UNITS",
    "LoincUnit",
    "conversion",
    "conversions_to",
    "is_annotation",
    "is_known_unit",
    "loinc_table",
    "loinc_units",
    "normalise_unit",
    "normalise_unit_expr",
]

_DROP = (" ", "^", "{", "}", "[", "]", "_")

# normalised spelling -> canonical
_ALIASES: dict[str, str] = {}
# canonical -> (family, factor to the family base, offset)
_SCALE: dict[str, tuple[str, float, float]] = {}
# units that convert only to themselves (and are not annotations)
_STANDALONE = [
    "mmol/mol",
    "ml/min/1.73m2",
    "ml/min",
    "mmhg",
    "/min",
    "bpm",
    "kg/m2",
    "s",
    "breaths/min",
    "l/min",
    "ml/kg/min",
    "weeks",
    "days",
    "years",
    "fl",
    "pg",
    "mm/h",
    "mosm/kg",
]
#: annotation units known without their braces (any ``{...}`` spelling is an annotation too)
_ANNOTATIONS = frozenset(["score", "pack-years", "inr", "index", "cigarettes/day"])


def normalise_unit(unit: str | None) -> str:
    """The comparison key of a unit spelling (``None`` and ``'1'`` are dimensionless: ``''``)."""
    if unit is None:
        return ""
    text = unit.strip().lower().replace("µ", "u").replace("μ", "u")
    for ch in _DROP:
        text = text.replace(ch, "")
    if text == "1":
        return ""
    return _ALIASES.get(text, text)


def normalise_unit_expr(col: pl.Expr) -> pl.Expr:
    """The same normalisation as :func:`normalise_unit`, vectorised (aliases resolved by the caller's join)."""
    text = col.str.strip_chars().str.to_lowercase().str.replace_all("µ", "u", literal=True)
    text = text.str.replace_all("μ", "u", literal=True)
    for ch in _DROP:
        text = text.str.replace_all(ch, "", literal=True)
    return pl.when(text == "1").then(pl.lit("")).otherwise(text).fill_null("")


def _family(name: str, units: dict[str, float], offsets: dict[str, float] | None = None) -> None:
    for unit, factor in units.items():
        _SCALE[unit] = (name, factor, (offsets or {}).get(unit, 0.0))


_family(
    "mass_conc",
    {
        "g/l": 1.0,
        "g/dl": 10.0,
        "mg/dl": 0.01,
        "mg/l": 0.001,
        "mg/ml": 1.0,
        "ug/ml": 1e-3,
        "ug/dl": 1e-5,
        "ug/l": 1e-6,
        "ng/ml": 1e-6,
        "ng/dl": 1e-8,
        "ng/l": 1e-9,
        "pg/ml": 1e-9,
    },
)
_family("molar_conc", {"mol/l": 1.0, "mmol/l": 1e-3, "umol/l": 1e-6, "nmol/l": 1e-9, "pmol/l": 1e-12})
_family("mass", {"kg": 1.0, "g": 1e-3, "lb": 0.45359237})
_family("length", {"m": 1.0, "cm": 0.01, "mm": 0.001, "in": 0.0254})
_family("volume", {"l": 1.0, "dl": 0.1, "ml": 1e-3})
# Temperature: base is Celsius; degF -> Cel = (F - 32) * 5/9 = F * 5/9 - 160/9
_family("temperature", {"cel": 1.0, "degf": 5.0 / 9.0}, {"degf": -160.0 / 9.0})
# Catalytic/hormone activity: an enzyme's U/L and IU/L are the same number; mIU/L = uIU/mL.
_family("activity", {"u/l": 1.0, "iu/l": 1.0, "iu/ml": 1e3, "miu/ml": 1.0, "miu/l": 1e-3, "uiu/ml": 1e-3})
# Cell counts per volume: 10*9/L = 10*3/uL = /nL.
_family("count_conc", {"10*9/l": 1.0, "10*3/ul": 1.0, "/nl": 1.0, "/ul": 1e-3, "10*6/l": 1e-3, "10*12/l": 1e3})
# Fractions: a ratio of 0.7 is 70 %.
_family("fraction", {"ratio": 1.0, "%": 0.01})
# Urine albumin:creatinine ratio: 1 mg/mmol = 8.84 mg/g (creatinine 113.12 g/mol), ug/mg = mg/g.
_family("acr", {"mg/g": 1.0, "ug/mg": 1.0, "mg/mmol": 8.84})

for _alias, _canon in {
    "mmol/molhb": "mmol/mol",
    "percent": "%",
    "ml/min/1.73sqm": "ml/min/1.73m2",
    "ml/min/1.73m*2": "ml/min/1.73m2",
    "ml/min/1.73": "ml/min/1.73m2",
    "c": "cel",
    "degc": "cel",
    "°c": "cel",
    "f": "degf",
    "°f": "degf",
    "kgs": "kg",
    "lbs": "lb",
    "beats/min": "bpm",
    "beatsperminute": "bpm",
    "x109/l": "10*9/l",
    "109/l": "10*9/l",
    "x10*9/l": "10*9/l",
    "103/ul": "10*3/ul",
    "x103/ul": "10*3/ul",
    "k/ul": "10*3/ul",
    "cells/ul": "/ul",
    "1012/l": "10*12/l",
    "mu/l": "miu/l",
    "mg/mmolcreat": "mg/mmol",
    "mg/mmolcre": "mg/mmol",
    "mg/gcreat": "mg/g",
    "mg/gcre": "mg/g",
    "ug/mgcreat": "ug/mg",
    "mcg/l": "ug/l",
    "mcg/ml": "ug/ml",
    "mcmol/l": "umol/l",
    "fraction": "ratio",
}.items():
    _ALIASES[_alias] = _canon

#: analyte -> molar mass (g/mol)
ANALYTES: dict[str, float] = {
    "creatinine": 113.12,
    "glucose": 180.16,
    "cholesterol": 386.65,
    "triglycerides": 885.7,
    "urea": 60.06,
    "bilirubin": 584.66,
    "vitamin_d": 400.64,
    "hba1c": 0.0,
}

KNOWN_UNITS: frozenset[str] = frozenset([*_SCALE, *_STANDALONE, *_ANNOTATIONS, *_ALIASES.values()])
_ALL_SPELLINGS: frozenset[str] = frozenset([*KNOWN_UNITS, *_ALIASES])
_NO_ANALYTE = "-"  # an analyte name that is no analyte: no HbA1c formula, no mass <-> molar conversion


def is_annotation(unit: str | None) -> bool:
    """True for an annotation unit: written entirely in braces (``{pack-years}``) and not a real unit's spelling
    (``{ratio}`` is the ratio), or one of the known annotations without braces (``score``)."""
    if unit is None:
        return False
    key = normalise_unit(unit)
    if key in _ANNOTATIONS:
        return True
    text = unit.strip()
    braced = text.startswith("{") and text.endswith("}") and text.count("{") == 1 and len(text) > 2
    return braced and key not in _SCALE and key not in _STANDALONE


def is_known_unit(unit: str) -> bool:
    """True when ``unit`` (any spelling) is a unit screener knows, or an annotation unit."""
    return normalise_unit(unit) in KNOWN_UNITS or is_annotation(unit)


def _default_analyte(a: str, b: str) -> str | None:
    pair = {a, b}
    if "umol/l" in pair:
        return "creatinine"
    if "mmol/l" in pair:
        return "glucose"
    return None


def conversion(from_unit: str | None, to_unit: str | None, analyte: str | None = None) -> tuple[float, float] | None:
    """``(a, b)`` with ``to = a * from + b``, or ``None`` when the units cannot be converted."""
    src, dst = normalise_unit(from_unit), normalise_unit(to_unit)
    if src == dst:
        return (1.0, 0.0)
    if (src == "" and is_annotation(to_unit)) or (dst == "" and is_annotation(from_unit)):
        return (1.0, 0.0)  # an annotation is the unit 1
    if {src, dst} == {"%", "mmol/mol"} and analyte in (None, "hba1c"):
        if src == "%":
            return (10.929, -10.929 * 2.15)
        return (1.0 / 10.929, 2.15)
    if src in _SCALE and dst in _SCALE:
        fam_s, fac_s, off_s = _SCALE[src]
        fam_d, fac_d, off_d = _SCALE[dst]
        if fam_s == fam_d:
            # base = fac * x + off; to = (base - off_d) / fac_d
            return (fac_s / fac_d, (off_s - off_d) / fac_d)
        if {fam_s, fam_d} == {"mass_conc", "molar_conc"}:
            name = analyte or _default_analyte(src, dst)
            mass = ANALYTES.get(name or "", 0.0)
            if not mass:
                return None
            if fam_s == "mass_conc":  # g/L -> mol/L divides by molar mass
                return (fac_s / mass / fac_d, 0.0)
            return (fac_s * mass / fac_d, 0.0)
    return None


def conversions_to(to_unit: str | None, analyte: str | None = None) -> dict[str, tuple[float, float]]:
    """Every known normalised spelling that converts to ``to_unit``, with its ``(a, b)``.

    The unit's own normalised key is always there (an annotation is known by its own spelling only), and so is
    ``''`` (no unit) when ``to_unit`` is an annotation. Computed once per ``(to_unit, analyte)``: a screen of a
    new set of studies (the engine screens the studies a batch can affect) needs it for every concept set."""
    return dict(_conversions_to(to_unit, analyte))


@lru_cache(maxsize=1024)
def _conversions_to(to_unit: str | None, analyte: str | None) -> tuple[tuple[str, tuple[float, float]], ...]:
    out: dict[str, tuple[float, float]] = {}
    for spelling in sorted(_ALL_SPELLINGS | {""}):
        conv = conversion(spelling or None, to_unit, analyte)
        if conv is not None:
            out[spelling] = conv
    out[normalise_unit(to_unit)] = (1.0, 0.0)
    if is_annotation(to_unit):
        out[""] = (1.0, 0.0)
    return tuple(out.items())


# ---------------------------------------------------------------- the LOINC table


class LoincUnit:
    """One row of the table: a LOINC code, what it measures, its canonical unit, other units in use, the analyte
    used for mass <-> molar conversion (``None``: no such conversion)."""

    __slots__ = ("analyte", "code", "name", "others", "unit")

    def __init__(self, code: str, name: str, unit: str, others: tuple[str, ...], analyte: str | None) -> None:
        self.code, self.name, self.unit, self.others, self.analyte = code, name, unit, others, analyte

    def __repr__(self) -> str:
        return f"LoincUnit({self.code!r}, {self.name!r}, {self.unit!r})"


@cache
def loinc_table() -> dict[str, LoincUnit]:
    """The LOINC code -> :class:`LoincUnit` table shipped in ``screener/rules/data/loinc_units.csv``.

    Raises ``ValueError`` naming the row when the file holds an unknown unit or analyte or a duplicate code."""
    text = resources.files("screener.rules").joinpath("data/loinc_units.csv").read_text(encoding="utf-8")
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["code"] and not r["code"].startswith("#")]
    table: dict[str, LoincUnit] = {}
    for line, row in enumerate(rows, start=2):
        others = tuple(u for u in row["others"].split() if u)
        analyte = row["analyte"].strip() or None
        for unit in (row["unit"], *others):
            if not is_known_unit(unit):
                raise ValueError(f"loinc_units.csv row {line}: unknown unit {unit!r} for {row['code']}")
        if analyte is not None and analyte not in ANALYTES:
            raise ValueError(f"loinc_units.csv row {line}: unknown analyte {analyte!r} for {row['code']}")
        if row["code"] in table:
            raise ValueError(f"loinc_units.csv row {line}: duplicate code {row['code']}")
        table[row["code"]] = LoincUnit(row["code"], row["name"], row["unit"], others, analyte)
    return table


@cache
def loinc_units(code: str) -> frozenset[str] | None:
    """The normalised unit spellings (as :func:`normalise_unit` gives them) that a value of LOINC ``code`` can be
    in: its canonical unit, the other units the table lists, and every unit convertible to one of them (with the
    code's analyte; ``''`` when a unit is an annotation). ``None`` when the code is not in the table.

    A concept set whose ``unit`` is not in this set for one of its codes can never use that code's values."""
    row = loinc_table().get(code.strip())
    if row is None:
        return None
    analyte = row.analyte or _NO_ANALYTE
    out: set[str] = set()
    for unit in (row.unit, *row.others):
        out.update(normalise_unit(s) for s in conversions_to(unit, analyte))
    return frozenset(out)
