"""The sample studies of ``rules/``, loaded once per test process: loading and checking the 17 files takes about
0.6 s, and each study object caches its compiled expressions, so the test modules that screen with them share
that work too. Shared objects: a test must not change them (``Study`` is frozen; its caches are pure)."""

from __future__ import annotations

import functools
from pathlib import Path

from screener.rules import Study, load_studies

__all__ = ["RULES", "sample_studies"]

RULES = Path(__file__).resolve().parents[2] / "rules"


@functools.cache
def sample_studies() -> tuple[Study, ...]:
    """Every study of ``rules/``, in file order (the loader reports no error for them)."""
    loaded = load_studies([RULES])
    assert not loaded.errors, loaded.errors
    return tuple(loaded.studies)
