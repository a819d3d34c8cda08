"""Alerts: the worklist store (matches, actions, users, do-not-contact) and outbound sinks.

Public names: :class:`MatchStore` (the engine's interface), :class:`SqlStore` (its SQLAlchemy implementation),
:class:`User`, :class:`InvalidAction`, and :class:`OutboxSender` (delivers the outbox to webhook and email).
"""

from screener.alerts.base import MATCH_COLUMNS, MatchStore
from screener.alerts.outbox import OutboxSender
from screener.alerts.store import InvalidAction, SqlStore, User

__all__ = ["MATCH_COLUMNS", "InvalidAction", "MatchStore", "OutboxSender", "SqlStore", "User"]
