"""The allocator setting for ``screener backfill ... --into-store``: Polars' jemalloc keeps freed pages for 10 s.

A backfill allocates and frees chunk-sized buffers on every thread for minutes. Polars configures jemalloc to
return freed pages to the OS after 0.5 s (dirty) and 1 s (muzzy), so each new chunk faults them in again;
keeping them 10 s lets the next chunks reuse them (at the cost of a higher resident size: pages are
returned later).

jemalloc reads ``_RJEM_MALLOC_CONF`` once, when the Polars library loads (Polars appends the variable's value to
its own defaults, and sets the variable, on import), so this module imports nothing heavy and :mod:`screener.cli`
calls :func:`apply` before it imports any command. A value the user set (even empty) is never replaced; once
Polars is imported the variable is set, so :func:`apply` does nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence

__all__ = ["BACKFILL_MALLOC_CONF", "VARIABLE", "apply", "wanted"]

VARIABLE = "_RJEM_MALLOC_CONF"
"""The variable Polars' jemalloc (built with the ``_rjem_`` prefix) reads its options from."""

BACKFILL_MALLOC_CONF = "dirty_decay_ms:10000,muzzy_decay_ms:10000"


def wanted(argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add for the command line ``argv`` (without the program name): the backfill setting for
    ``backfill ... --into-store``, nothing for any other command or when the user set the variable."""
    if VARIABLE in environ or not argv or argv[0] != "backfill":
        return {}
    if not any(a == "--into-store" or a.startswith("--into-store=") for a in argv[1:]):
        return {}
    return {VARIABLE: BACKFILL_MALLOC_CONF}


def apply(argv: Sequence[str], environ: MutableMapping[str, str]) -> dict[str, str]:
    """Set :func:`wanted`'s variables in ``environ`` (before Polars is imported); returns what was set."""
    added = wanted(argv, environ)
    environ.update(added)
    return added
