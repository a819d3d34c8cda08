"""Mappings every connector shares: routes of administration, and the count of what a source sent unmapped.

Pure except :func:`record_unmapped`, which increments ``screener_connector_unmapped_total{source, type}`` on the
sink's metrics when the sink has them (the Kafka sink does; a :class:`~screener.sources.base.MemorySink` does
not, and then only the returned summary shows the counts).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

__all__ = [
    "HL7_ROUTES",
    "MAX_BIRTH_AGE_YEARS",
    "SNOMED_ROUTES",
    "TEXT_ROUTES",
    "birth_date_problem",
    "format_unmapped",
    "merge_counts",
    "record_unmapped",
    "route_from_hl7",
    "route_from_snomed",
    "route_from_text",
    "strict_ethnic_category",
]

#: HL7 v2 table 0162 (route of administration) -> canonical route.
HL7_ROUTES = {
    "PO": "oral",
    "MTH": "oral",
    "B": "oral",  # buccal
    "IH": "inhaled",
    "NEB": "inhaled",
    "RM": "inhaled",
    "IV": "intravenous",
    "IVP": "intravenous",
    "IVSS": "intravenous",
    "IM": "intramuscular",
    "SC": "subcutaneous",
    "SQ": "subcutaneous",
    "TD": "transdermal",
    "TP": "topical",
    "AP": "topical",
    "MM": "topical",
    "PR": "rectal",
    "VG": "vaginal",
    "NS": "nasal",
    "IN": "nasal",
    "NP": "nasal",
    "SL": "sublingual",
    "TL": "sublingual",
    "OP": "ophthalmic",
    "IO": "ophthalmic",
}
#: SNOMED CT route concepts (the FHIR/UK Core dosage route value set) -> canonical route.
SNOMED_ROUTES = {
    "26643006": "oral",
    "54471007": "oral",  # buccal
    "18679011000001101": "inhaled",
    "447694001": "inhaled",  # respiratory tract
    "46713006": "nasal",
    "47625008": "intravenous",
    "78421000": "intramuscular",
    "34206005": "subcutaneous",
    "45890007": "transdermal",
    "6064005": "topical",
    "37161004": "rectal",
    "16857009": "vaginal",
    "37839007": "sublingual",
    "54485002": "ophthalmic",
    "372449004": "topical",  # dental
}
TEXT_ROUTES = {
    "oral": "oral",
    "by mouth": "oral",
    "inhaled": "inhaled",
    "inhalation": "inhaled",
    "respiratory tract": "inhaled",
    "intravenous": "intravenous",
    "intramuscular": "intramuscular",
    "subcutaneous": "subcutaneous",
    "transdermal": "transdermal",
    "topical": "topical",
    "cutaneous": "topical",
    "rectal": "rectal",
    "vaginal": "vaginal",
    "nasal": "nasal",
    "intranasal": "nasal",
    "sublingual": "sublingual",
    "ophthalmic": "ophthalmic",
    "ocular": "ophthalmic",
}


def route_from_hl7(code: str) -> str | None:
    """HL7 table 0162 code -> canonical route; an unknown non-empty code is ``other``; '' -> None."""
    code = code.strip().upper()
    if not code:
        return None
    return HL7_ROUTES.get(code, route_from_text(code) or "other")


def route_from_snomed(code: str) -> str | None:
    """SNOMED CT route concept id -> canonical route, or None when it is not one we know."""
    return SNOMED_ROUTES.get(code.strip())


def route_from_text(text: str) -> str | None:
    """A route written in words (``"Oral"``, ``"Inhalation route"``) -> canonical route, else None."""
    low = text.strip().lower().removesuffix(" route").removesuffix(" use")
    return TEXT_ROUTES.get(low)


#: Birth dates further back than this (or in the future) are rejected, as the canonical event does.
MAX_BIRTH_AGE_YEARS = 120


def birth_date_problem(value: date, now: datetime | None = None) -> str | None:
    """Why ``value`` cannot be a living record's birth date (future, or over 120 years ago), or None."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    if value > today + timedelta(days=1):  # one day of slack: a sender's local date may be ahead of UTC
        return "birth date is in the future"
    try:
        oldest = today.replace(year=today.year - MAX_BIRTH_AGE_YEARS)
    except ValueError:  # 29 February
        oldest = today.replace(year=today.year - MAX_BIRTH_AGE_YEARS, day=28)
    if value < oldest:
        return f"birth date is more than {MAX_BIRTH_AGE_YEARS} years ago"
    return None


def merge_counts(into: dict[str, int], counts: Mapping[str, int]) -> dict[str, int]:
    """Add ``counts`` into ``into`` (in place) and return it."""
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n
    return into


def format_unmapped(counts: Mapping[str, int]) -> str:
    """``"unmapped: Claim x2, NK1 x1"`` for a summary line; ``"unmapped: none"`` when empty."""
    if not counts:
        return "unmapped: none"
    return "unmapped: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def record_unmapped(sink: Any, source: str, counts: Mapping[str, int]) -> None:
    """Count ``counts`` (type -> how many) in ``screener_connector_unmapped_total`` when ``sink`` has metrics."""
    metrics = getattr(sink, "metrics", None)
    counter = getattr(metrics, "connector_unmapped", None)
    if counter is None:
        return
    for rtype, n in counts.items():
        if n:
            counter.labels(source=source, type=rtype[:40]).inc(n)


#: NHS Data Dictionary ethnic category: a letter (national code) or that letter and one more character (the
#: extended local codes such as ``A1`` or ``CA``); Z is "not stated". Anything else is not a category.
_ETHNIC_CODE = re.compile(r"^[A-HJ-NPRSZ][A-Z0-9]?$")


def strict_ethnic_category(raw: str | None) -> tuple[str | None, str | None]:
    """``(ONS group, NHS letter)`` for an exact NHS ethnic category code; ``(None, None)`` for anything else.

    Never reads a longer value by its first letter (``HIS`` is not category H).
    """
    from screener.sources.common import ethnic_group_for_category

    code = (raw or "").strip().upper()
    if not _ETHNIC_CODE.match(code):
        return None, None
    return ethnic_group_for_category(code)
