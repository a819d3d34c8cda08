"""The state one rule-file load shares between the loader's parts: file, errors, names; error helpers."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from screener.errors import RuleError, did_you_mean
from screener.events import CODE_SYSTEMS
from screener.rules._yaml import Map
from screener.vocab import OUTCOMES

__all__ = ["OUTCOMES", "Context"]

SPONSORS = ("commercial", "non-commercial")
_SYSTEM_KEYS = {s.lower(): s for s in CODE_SYSTEMS}
_CONCEPT_KEYS = ("unit", "exclude", "ref", "analyte", "label")
_STUDY_KEYS = (
    *("id", "title", "summary", "sponsor", "portfolio", "target", "opens", "closes", "settings", "team"),
    *("lay_summary", "contacts", "protocol_url", "pis_url", "sites", "alert"),
)
_TOP_KEYS = ("study", "concepts", "include", "exclude", "tests")
_ID = re.compile(r"^[A-Z0-9][A-Z0-9-]*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE_PATTERNS = {
    "ICD10": re.compile(r"^[A-Z]([0-9]([0-9](\.?[0-9A-Z]{1,4})?)?)?$"),
    "ATC": re.compile(r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?$"),
    "OPCS4": re.compile(r"^[A-Z]([0-9]{1,2}(\.?[0-9])?)?$"),
    "LOINC": re.compile(r"^[0-9]{1,7}-[0-9]$"),
    "SNOMED": re.compile(r"^[0-9]{6,18}$"),
    "DMD": re.compile(r"^[0-9]{6,20}$"),
}
GROUP_KINDS = ("any", "all", "at_least")
IMPLICIT_SETTING = "in_setting"


class Context:
    """One file being loaded: where it is, what has gone wrong so far, the names already used."""

    def __init__(self, path: Path, raw: bytes, doc: Any) -> None:
        self.path = path
        self.file = str(path)
        self.raw = raw
        self.doc = doc
        self.errors: list[RuleError] = []
        self.study_id: str | None = None
        self.names: dict[str, int] = {}
        self.extra_hash: list[bytes] = []

    # -- error helpers
    def err(
        self, message: str, mark: tuple[int, int] | None, suggestion: str | None = None, criterion: str | None = None
    ) -> None:
        line, col = mark if mark else (None, None)
        if len(message) > 400:  # never echo a long value back
            message = message[:397] + "..."
        self.errors.append(
            RuleError(
                message,
                file=self.file,
                line=line,
                column=col,
                study_id=self.study_id,
                criterion=criterion,
                suggestion=suggestion,
            )
        )

    def unknown_keys(self, m: Map, allowed: Sequence[str], what: str) -> None:
        for k in m:
            if k not in allowed:
                self.err(f"unknown {what} key '{k}'", m.marks[k], did_you_mean(str(k), allowed))

    # -- build
