"""Units of measure: normalised spellings and linear conversions ``to = a * from + b``.

A numeric concept declares the unit its facts are compared in. A fact in another unit is converted when the
conversion is known; otherwise it is *left out* of every numeric transform and counted (never silently
compared). Supported conversions:

- scale families: mass concentration (g/L, g/dL, mg/dL, mg/L), molar concentration (mol/L, mmol/L, umol/L,
  nmol/L), mass (kg, g, lb), length (m, cm, mm, in), temperature (Cel, degF);
- HbA1c: % (DCCT) <-> mmol/mol (IFCC): ``mmol/mol = 10.929 * (% - 2.15)``;
- mass <-> molar concentration for one analyte (molar mass in g/mol): creatinine (113.12; mg/dL -> umol/L
  x 88.4), glucose (180.16; mg/dL -> mmol/L / 18.0), cholesterol, triglycerides, urea. A concept may name its
  ``analyte``; when it does not, umol/L pairs default to creatinine and mmol/L pairs to glucose.

A concept without a ``unit`` is dimensionless: only facts with no unit (or unit ``1``) are used.
Spellings are normalised: case-insensitive, spaces, ``^``, ``{}``, ``[]`` and ``_`` ignored, ``µ`` = ``u``.
"""

from __future__ import annotations

import polars as pl

__all__ = ["ANALYTES", "KNOWN_UNITS", "conversion", "is_known_unit", "normalise_unit", "normalise_unit_expr"]

_DROP = (" ", "^", "{", "}", "[", "]", "_")

# normalised spelling -> canonical
_ALIASES: dict[str, str] = {}
# canonical -> (family, factor to the family base, offset)
_SCALE: dict[str, tuple[str, float, float]] = {}
_STANDALONE = [
    "mmol/mol",
    "%",
    "ml/min/1.73m2",
    "ml/min",
    "mmhg",
    "/min",
    "bpm",
    "kg/m2",
    "mg/mmol",
    "mg/g",
    "u/l",
    "iu/l",
    "10*9/l",
    "10*12/l",
    "ng/l",
    "ng/ml",
    "pg/ml",
    "ug/l",
    "miu/l",
    "pmol/l",
    "s",
    "ratio",
    "score",
    "breaths/min",
    "l",
    "ml",
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


_family("mass_conc", {"g/l": 1.0, "g/dl": 10.0, "mg/dl": 0.01, "mg/l": 0.001, "mg/ml": 1.0})
_family("molar_conc", {"mol/l": 1.0, "mmol/l": 1e-3, "umol/l": 1e-6, "nmol/l": 1e-9})
_family("mass", {"kg": 1.0, "g": 1e-3, "lb": 0.45359237})
_family("length", {"m": 1.0, "cm": 0.01, "mm": 0.001, "in": 0.0254})
# Temperature: base is Celsius; degF -> Cel = (F - 32) * 5/9 = F * 5/9 - 160/9
_family("temperature", {"cel": 1.0, "degf": 5.0 / 9.0}, {"degf": -160.0 / 9.0})

for _alias, _canon in {
    "mmol/mol": "mmol/mol",
    "mmol/molhb": "mmol/mol",
    "%": "%",
    "percent": "%",
    "ml/min/1.73m2": "ml/min/1.73m2",
    "ml/min/1.73sqm": "ml/min/1.73m2",
    "ml/min/1.73m*2": "ml/min/1.73m2",
    "ml/min/1.73": "ml/min/1.73m2",
    "c": "cel",
    "degc": "cel",
    "°c": "cel",
    "cel": "cel",
    "f": "degf",
    "°f": "degf",
    "degf": "degf",
    "kgs": "kg",
    "lbs": "lb",
    "beats/min": "bpm",
    "/min": "/min",
    "x109/l": "10*9/l",
    "109/l": "10*9/l",
    "mmhg": "mmhg",
    "mu/l": "miu/l",
}.items():
    _ALIASES[_alias] = _canon

#: analyte -> molar mass (g/mol)
ANALYTES: dict[str, float] = {
    "creatinine": 113.12,
    "glucose": 180.16,
    "cholesterol": 386.65,
    "triglycerides": 885.7,
    "urea": 60.06,
    "hba1c": 0.0,
}

KNOWN_UNITS: frozenset[str] = frozenset([*_SCALE, *_STANDALONE, *_ALIASES.values()])
_ALL_SPELLINGS: frozenset[str] = frozenset([*KNOWN_UNITS, *_ALIASES])


def is_known_unit(unit: str) -> bool:
    """True when ``unit`` (any spelling) is a unit screener knows."""
    return normalise_unit(unit) in KNOWN_UNITS


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
    """Every known normalised spelling that converts to ``to_unit``, with its ``(a, b)``."""
    out: dict[str, tuple[float, float]] = {}
    for spelling in sorted(_ALL_SPELLINGS | {""}):
        conv = conversion(spelling or None, to_unit, analyte)
        if conv is not None:
            out[spelling] = conv
    return out
