"""Parameter lists whose first case runs in the edit-test loop and whose other cases run in CI only.

A test that checks the same property at several seeds, sizes or code paths keeps one representative case in
``just test-unit``; the others are marked ``slow``, which ``just test-unit`` deselects (``-m "not slow"``) and a
plain ``pytest`` or ``scripts/test`` (CI) runs, so every case still runs where it lands.
"""

from __future__ import annotations

from typing import Any

import pytest

__all__ = ["first_fast"]


def first_fast(*values: Any) -> list[Any]:
    """``values`` as a ``parametrize`` list: the first as it is, every other one marked ``slow``. A tuple is one
    case of several arguments (``parametrize(("a", "b"), first_fast((1, 2), (3, 4)))``)."""
    if not values:
        raise ValueError("first_fast needs at least one value")
    rest = (v if isinstance(v, tuple) else (v,) for v in values[1:])
    return [values[0], *(pytest.param(*v, marks=pytest.mark.slow) for v in rest)]
