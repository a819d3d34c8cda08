"""The JEXL dialect screener uses, and name suggestions for errors."""

from __future__ import annotations

from typing import Any

import pyjexl

from screener.errors import did_you_mean

__all__ = ["jexl", "parse_expression", "suggest"]


def jexl() -> pyjexl.JEXL:
    """The JEXL configuration screener uses (``&&`` binds tighter than ``||``)."""
    j = pyjexl.JEXL()
    j.add_binary_operator("&&", 15, lambda a, b: a and b)
    return j


_JEXL = jexl()


def suggest(name: str, candidates: Any) -> str | None:
    """A case-insensitive exact match first ('f' -> 'F'), else the closest name."""
    options = list(candidates)
    for c in options:
        if str(c).lower() == name.lower():
            return str(c)
    return did_you_mean(name, options)


def parse_expression(text: str) -> Any:
    """Parse JEXL text to pyjexl's AST. :raises ParseError: on a syntax error."""
    return _JEXL.parse(text)
