"""Hypothesis settings profiles, and the example counts the property suites ask for.

Profiles (registered when this module is imported, which ``tests/conftest.py`` does):

- ``ci``: loaded when ``CI`` is set. Full example counts, derandomized (a landing never depends on luck), and the
  reproduction blob printed on failure.
- ``dev``: the edit-test loop (``just test-unit`` passes ``--hypothesis-profile=dev``). Each suite runs a tenth of
  its examples, at least :data:`DEV_MIN_EXAMPLES`, and keeps exploring new ones (failures found are kept in
  ``.hypothesis/`` and replayed first on the next run).
- ``default`` (hypothesis' own): a plain ``pytest`` without ``CI``. Full counts, randomized.

``ci`` and ``dev`` set no per-example deadline; ``default`` keeps hypothesis' 200 ms unless a suite sets its own.

A suite states its full strength once, ``@settings(max_examples=examples(300), ...)``; only ``dev`` scales it down.
The profile must be loaded before test modules are imported: ``--hypothesis-profile`` is applied by hypothesis'
pytest plugin at configure time, and ``CI`` when this module is imported from the root conftest, both before
collection.
"""

from __future__ import annotations

import os

from hypothesis import settings

__all__ = ["DEV_MIN_EXAMPLES", "DEV_PROFILE", "examples"]

DEV_PROFILE = "dev"
#: The fewest examples a suite runs under ``dev``: enough to exercise every strategy branch at least once or twice.
DEV_MIN_EXAMPLES = 10

# No deadline in either: an example's time is no test outcome here (speed is measured in bench/), and on a busy
# host hypothesis' default 200 ms per example failed a suite without its own ``deadline=None`` (as Flaky).
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
# derandomize stated: a profile registered without it inherits from the one in force when it is read (ci in CI)
settings.register_profile(DEV_PROFILE, max_examples=DEV_MIN_EXAMPLES, derandomize=False, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


def examples(n: int) -> int:
    """The example count for a suite whose full strength is ``n``: ``n``, or ``max(10, n // 10)`` under ``dev``
    (never more than ``n``)."""
    if settings.get_current_profile_name() == DEV_PROFILE:
        return min(n, max(DEV_MIN_EXAMPLES, n // 10))
    return n
