"""Patient state as Polars frames, built and updated from canonical events.

Two frames, both keyed by ``patient_id``:

``persons``  one row per patient: demographics, the setting they were last seen in, the do-not-contact flag
             and whether they have died.
``facts``    one row per clinical fact (the kinds in :data:`FACT_KINDS`), long format: patient, event id,
             kind, code system, code, numeric value, text value, unit, time, status, setting, then the v2
             columns (recorded and end times, the date-only flag, qualifiers as ``SYSTEM|value`` strings, dose,
             route, reference range, coded value, encounter, location). Absent in the event = null.

``persons.location`` is the location of the patient's latest visit (in arrival order, like ``setting``) that
carried one. A frame written before a column existed (an old snapshot) is brought to the current schema by
:func:`upgrade_facts` / :func:`upgrade_persons` (the new columns null).

:func:`apply_events` is pure: it takes a state and a batch of events and returns the new state plus the ids of
the patients whose records changed (the ones the engine must re-screen). It applies the correction semantics
documented in :mod:`screener.events`. Time is UTC, microseconds.
"""

from __future__ import annotations

from typing import Any

from screener.state._apply import (
    Changes,
    PatientState,
    StateParts,
    apply_changes,
    apply_events,
    apply_frames,
    now_utc,
    prune_facts,
    retracted_patients,
)
from screener.state._filter import FactFilter
from screener.state._frames import (
    DO_NOT_CONTACT_CODE,
    FACTS_SCHEMA,
    PERSONS_SCHEMA,
    RETRACTED_SCHEMA,
    events_to_frames,
    upgrade_facts,
    upgrade_persons,
)
from screener.state._live import LiveState
from screener.vocab import FACT_KINDS, TS

__all__ = [
    "DO_NOT_CONTACT_CODE",
    "FACTS_SCHEMA",
    "FACT_KINDS",
    "PERSONS_SCHEMA",
    "RETRACTED_SCHEMA",
    "TS",
    "Changes",
    "FactFilter",
    "LiveState",
    "PatientState",
    "StateParts",
    "apply_changes",
    "apply_events",
    "apply_frames",
    "events_to_frames",
    "now_utc",
    "prune_facts",
    "retracted_patients",
    "upgrade_facts",
    "upgrade_persons",
]

_MOVED_TO_HISTORY = ("load_snapshot", "load_snapshot_parts", "save_snapshot")


def __getattr__(name: str) -> Any:
    """The snapshot file I/O moved to :mod:`screener.history.snapshots`; the old names still resolve."""
    if name in _MOVED_TO_HISTORY:
        from screener.history import snapshots

        return getattr(snapshots, name)
    raise AttributeError(f"module 'screener.state' has no attribute {name!r}")
