"""The allocator setting for the batch commands: Polars' jemalloc keeps freed pages for 10 s.

``screener backfill ... --into-store``, ``screener screen``, ``screener feasibility`` and ``screener rules diff``
allocate and free chunk-sized buffers on every thread for seconds to minutes. Polars configures jemalloc to
return freed pages to the OS after 0.5 s (dirty) and 1 s (muzzy), so each new chunk faults them in again (in a
1M-patient screen about a third of the CPU time was the kernel's); keeping them 10 s lets the next chunks reuse
them (at the cost of a higher resident size: pages are returned later). The long-running service keeps Polars'
default.

jemalloc reads ``_RJEM_MALLOC_CONF`` once, when the Polars library loads (Polars appends the variable's value to
its own defaults, and sets the variable, on import), so this module imports nothing heavy and :mod:`screener.cli`
calls :func:`apply` before it imports any command. A value the user set (even empty) is never replaced; once
Polars is imported the variable is set, so :func:`apply` does nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence

__all__ = ["BACKFILL_MALLOC_CONF", "BATCH_COMMANDS", "VARIABLE", "apply", "wanted"]

VARIABLE = "_RJEM_MALLOC_CONF"
"""The variable Polars' jemalloc (built with the ``_rjem_`` prefix) reads its options from."""

BACKFILL_MALLOC_CONF = "dirty_decay_ms:10000,muzzy_decay_ms:10000"
"""The setting for every batch command (the name is older than the other commands' use of it)."""

BATCH_COMMANDS = (("screen",), ("feasibility",), ("rules", "diff"))
"""The command words (besides ``backfill ... --into-store``) that get :data:`BACKFILL_MALLOC_CONF`."""


def wanted(argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add for the command line ``argv`` (without the program name): the batch setting for
    ``backfill ... --into-store`` and the :data:`BATCH_COMMANDS`, nothing for any other command or when the user
    set the variable."""
    if VARIABLE in environ or not argv:
        return {}
    if any(tuple(argv[: len(words)]) == words for words in BATCH_COMMANDS):
        return {VARIABLE: BACKFILL_MALLOC_CONF}
    if argv[0] != "backfill" or not any(a == "--into-store" or a.startswith("--into-store=") for a in argv[1:]):
        return {}
    return {VARIABLE: BACKFILL_MALLOC_CONF}


def apply(argv: Sequence[str], environ: MutableMapping[str, str]) -> dict[str, str]:
    """Set :func:`wanted`'s variables in ``environ`` (before Polars is imported); returns what was set."""
    added = wanted(argv, environ)
    environ.update(added)
    return added
