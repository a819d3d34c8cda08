"""The connector SDK: everything an EHR adapter (``connectors/`` or a hospital's own package) may use from screener.

- the interface (:mod:`.base`): :class:`Connector` (found through the ``screener.connectors`` entry-point group,
  :mod:`.registry`), :class:`EventSink` / :class:`PublishingSink` (where events go), :class:`MemorySink` (tests,
  dry runs), :class:`SimpleConnector`;
- :func:`connector_options` (:mod:`.options`): the shared command-line options and the ``sink_factory`` that
  builds the Kafka sink (:mod:`.kafka`, imported only when a sink is built, so listing connectors stays light);
- pure helpers (:mod:`.common`): the NHS-number check, NHS ethnic categories, postcode districts, stable event
  ids, Europe/London times;
- :mod:`.encode`: canonical event JSON written column-wise with Polars (``event_json``; imported from there, not
  here, as it loads the engine's decoder).

Besides this package a connector may import :mod:`screener.events` (the canonical event), :mod:`screener.vocab`,
:mod:`screener.errors`, :mod:`screener.logging`, :mod:`screener.metrics`, :mod:`screener.state` (the frame
schemas), :mod:`screener.testing` and :mod:`screener.clock`; the import contract ``connectors-use-the-sdk`` in
pyproject.toml enforces the list. ``screener.sources`` is this package's old name, kept as a re-exporting alias
(``screener.sources.health``, the broker health probe, still lives there).
"""

from __future__ import annotations

from screener.connector.base import (
    Connector,
    EventSink,
    Feed,
    MemorySink,
    PublishingSink,
    RecordSink,
    Rejection,
    SimpleConnector,
    SinkFactory,
)
from screener.connector.common import (
    LONDON,
    ethnic_group_for_category,
    is_valid_nhs_number,
    local_to_utc,
    nhs_check_digit,
    normalise_nhs_number,
    postcode_district,
    stable_id,
)
from screener.connector.options import connector_options
from screener.connector.registry import GROUP, available, load_connector, load_feed

__all__ = [
    "GROUP",
    "LONDON",
    "Connector",
    "EventSink",
    "Feed",
    "MemorySink",
    "PublishingSink",
    "RecordSink",
    "Rejection",
    "SimpleConnector",
    "SinkFactory",
    "available",
    "connector_options",
    "ethnic_group_for_category",
    "is_valid_nhs_number",
    "load_connector",
    "load_feed",
    "local_to_utc",
    "nhs_check_digit",
    "normalise_nhs_number",
    "postcode_district",
    "stable_id",
]
