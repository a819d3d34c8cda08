"""Canonical event JSON written column-wise with Polars, for connectors that map whole tables at once.

:func:`event_json` writes each row's event as the engine's decoder expects it at its fastest: the event's fields
in the event's own order (:data:`EVENT_FIELDS`, the order :func:`screener.events.dump_event` writes), absent
(null) fields left out, values as Polars' JSON writer spells them. The engine's Rust read
(:mod:`screener._json_event`) vouches for such a payload without the per-event fallback; any other spelling is
still accepted, by the slower path.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from screener._json_event import without_null_fields
from screener.events import Event

__all__ = ["EVENT_FIELDS", "event_json"]

#: The event's fields in its own order (the JSON names: ``schema``, not the model's ``schema_``).
EVENT_FIELDS: tuple[str, ...] = tuple(f.alias or name for name, f in Event.model_fields.items())


def event_json(fields: Mapping[str, pl.Expr]) -> pl.Expr:
    """The event JSON (String) of each row, from one expression per event field (any subset of
    :data:`EVENT_FIELDS`, given in any order; a struct field's own fields in the event's order, e.g. ``code`` as
    ``{system, value}``, ``dose`` as ``{value, unit}``). A null field, at any depth, is left out.

    :raises ValueError: a name that is not an event field.
    """
    unknown = sorted(set(fields) - set(EVENT_FIELDS))
    if unknown:
        raise ValueError(f"not event fields: {', '.join(unknown)}")
    ordered = [fields[name].alias(name) for name in EVENT_FIELDS if name in fields]
    return without_null_fields(pl.struct(ordered).struct.json_encode())
