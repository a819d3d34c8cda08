"""Pure helpers every connector shares: NHS numbers, ethnic categories, postcodes, stable event ids, times.

Nothing here does I/O. Timestamps without a UTC offset are interpreted in ``Europe/London`` (the wall clock of
an English hospital's systems, GMT in winter and BST in summer) and returned in UTC.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

__all__ = [
    "LONDON",
    "ethnic_group_for_category",
    "is_valid_nhs_number",
    "local_to_utc",
    "nhs_check_digit",
    "normalise_nhs_number",
    "postcode_district",
    "stable_id",
]

LONDON = ZoneInfo("Europe/London")

#: NHS Data Dictionary ethnic category (2001 census letters, still the NHS's) -> ONS 2021 high-level group.
#: Chinese (R) is an Asian group in the 2021 census; Z (not stated) and 99 (not known) map to nothing.
_ETHNIC: dict[str, str] = {
    "A": "white",
    "B": "white",
    "C": "white",
    "D": "mixed",
    "E": "mixed",
    "F": "mixed",
    "G": "mixed",
    "H": "asian",
    "J": "asian",
    "K": "asian",
    "L": "asian",
    "R": "asian",
    "M": "black",
    "N": "black",
    "P": "black",
    "S": "other",
}


def ethnic_group_for_category(category: str | None) -> tuple[str | None, str | None]:
    """``(ethnic_group, category_letter)`` for an NHS ethnic category code.

    Accepts the letter alone or a two-character extended code (``"A1"``: the first letter decides).
    Unknown, not-stated (``Z``) or empty input gives ``(None, None)``.
    """
    if not category:
        return None, None
    letter = category.strip().upper()[:1]
    group = _ETHNIC.get(letter)
    return (group, letter) if group else (None, None)


def nhs_check_digit(nine: str) -> int | None:
    """The modulus 11 check digit of the first nine digits of an NHS number; ``None`` when no number has them.

    Weights 10..2 over the nine digits; check = 11 - (sum mod 11), 11 -> 0, and 10 means the body is unusable.
    """
    total = sum(int(d) * w for d, w in zip(nine, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def is_valid_nhs_number(value: str | None) -> bool:
    """True for a 10-digit NHS number whose modulus 11 check digit is right (spaces and dashes allowed).

    The one NHS-number check: connectors validate what they read with it, and the synthetic population's
    numbers pass it. ``None``, empty and non-digit input are not valid (never an exception).
    """
    if not value:
        return False
    digits = normalise_nhs_number(value)
    if len(digits) != 10 or not digits.isdigit() or not digits.isascii():
        return False
    return nhs_check_digit(digits[:9]) == int(digits[9])


def normalise_nhs_number(value: str) -> str:
    """The 10 digits of an NHS number (spaces and dashes removed)."""
    return re.sub(r"[\s-]", "", value)


_POSTCODE = re.compile(r"^([A-Z]{1,2}[0-9][A-Z0-9]?)\s*([0-9][A-Z]{2})?$")


def postcode_district(postcode: str | None) -> str | None:
    """The outward code (district) of a UK postcode: ``"LS6 2AB"`` -> ``"LS6"``; None when it is not one."""
    if not postcode:
        return None
    m = _POSTCODE.match(postcode.strip().upper())
    return m.group(1) if m else None


def stable_id(source: str, *parts: object) -> str:
    """A deterministic event id from the parts that identify a fact (re-sends map to the same id).

    Hashed, so no identifier in ``parts`` is readable from the id.
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]
    return f"{source}-{digest}"


def local_to_utc(value: datetime | date) -> datetime:
    """A datetime in UTC: naive values (and dates, at midnight) are read as Europe/London wall time."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if value.tzinfo is None:
        value = value.replace(tzinfo=LONDON)
    return value.astimezone(UTC)
