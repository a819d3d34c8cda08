"""The worklist store: :class:`SqlStore`, SQLAlchemy Core over SQLite (default) or PostgreSQL (by URL).

Opening a store runs the Alembic migrations in ``screener/alerts/migrations`` up to head (under an advisory lock
on PostgreSQL, an immediate transaction on SQLite), so a fresh database and an old one both end up current.

Policies this module owns (the issue leaves their exact form to us):

- **One alert per patient and study, ever.** :meth:`SqlStore.record_matches` inserts a (study, patient) once;
  later screens update the stored outcome, criteria and rule hash in place and never alert again.
- **Dismissed stays dismissed unless the rule file changes materially.** A match at stage ``not_eligible`` or
  ``declined`` goes back to ``new`` (and is marked *reopened* on the worklist, without a second outbound alert)
  only when BOTH the rule hash changed AND the result changed materially: the outcome differs, or some
  criterion's result (true / false / unknown) differs, or a criterion was added or removed. A new value in the
  evidence text alone (say a new eGFR still in range) is not material.
- **A snoozed match comes back on its date**: it is hidden from the open worklist while ``snoozed_until`` is
  after today (UTC) and shows again from that day, flagged "snooze ended".
- **Do-not-contact**: a patient on the register gets no new match rows (the engine filters too) and their
  existing matches disappear from every worklist, page and API answer; removing them from the register shows
  the matches again.
- **Outbox**: each new match adds to one outbox row per (channel, study) in the same transaction, carrying
  the study, its team and a count, never a patient.
- **Urgency** on the worklist, most urgent first, then newest first within a tier:
  tier 0 *acute*: the study's longest criterion window is 72 hours or less (the patient may be discharged or
  the window closes within days); tier 1 *closing soon*: the study closes within 30 days; tier 2 everything else.

Parts, one per kind of data (each a mixin over :class:`screener.alerts._common.StoreBase`): ``_matches`` (what the
engine writes), ``_studies``, ``_worklist`` (what nurses read and do), ``_accounts`` (users, sessions, tokens),
``_register`` (do-not-contact), ``_audit``, ``_outbox_rows``, and ``_database`` (engine and migrations).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from screener.alerts._accounts import AccountsPart
from screener.alerts._audit import AuditPart
from screener.alerts._common import (
    CHANNELS,
    DECLINED_REASONS,
    NOT_ELIGIBLE_REASONS,
    VIEWS,
    InvalidAction,
    User,
    _now,
    _utc,
    humanise,
    materially_changed,
    urgency,
)
from screener.alerts._database import _make_engine as make_engine
from screener.alerts._database import _sqlite_pragmas, migrate
from screener.alerts._matches import MatchesPart
from screener.alerts._outbox_rows import OutboxPart
from screener.alerts._register import RegisterPart
from screener.alerts._studies import StudiesPart
from screener.alerts._worklist import WorklistPart
from screener.errors import ConfigError
from screener.vocab import ACTIONS, ACTIVE_STAGES, CLOSED_STAGES

if TYPE_CHECKING:
    from screener.metrics import Metrics
    from screener.settings import Settings

__all__ = [
    "ACTIONS",
    "ACTIVE_STAGES",
    "CHANNELS",
    "CLOSED_STAGES",
    "DECLINED_REASONS",
    "NOT_ELIGIBLE_REASONS",
    "VIEWS",
    "InvalidAction",
    "SqlStore",
    "User",
    "_sqlite_pragmas",
    "_utc",
    "humanise",
    "materially_changed",
    "urgency",
]


class SqlStore(MatchesPart, StudiesPart, WorklistPart, AccountsPart, RegisterPart, AuditPart, OutboxPart):
    """The worklist database. Implements :class:`screener.alerts.base.MatchStore` and everything the web app,
    the outbox sender and the CLI need. Thread-safe (one SQLAlchemy engine, a connection per call).

    :param url: SQLAlchemy URL: ``sqlite:///path.db`` (default form), ``sqlite://`` (memory, one process) or
        ``postgresql+psycopg://user@host:port/db``.
    :param metrics: a :class:`screener.metrics.Metrics` for the funnel counters (optional).
    :param channels: outbound channels that get outbox rows for new matches (``webhook``, ``email``).
    :param clock: returns the current UTC time (tests pass a settable clock).
    :raises ConfigError: the URL is malformed or its driver is not installed.
    :raises DeliveryError: the database cannot be reached or migrated.
    """

    def __init__(
        self,
        url: str,
        *,
        metrics: Metrics | None = None,
        channels: Sequence[str] = CHANNELS,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        unknown = set(channels) - set(CHANNELS)
        if unknown:
            raise ConfigError(f"unknown outbound channel(s) {sorted(unknown)}; known: {list(CHANNELS)}")
        self.url = url
        self.metrics = metrics
        self.channels = tuple(channels)
        self.clock = clock
        self.engine = make_engine(url)
        migrate(self.engine)

    # --- lifecycle ---------------------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings, *, metrics: Metrics | None = None) -> SqlStore:
        """A store on ``settings.database_url`` whose outbox feeds the channels the settings configure."""
        configured = (
            ("webhook", settings.webhook_url),
            ("email", settings.smtp_host),
            ("pager", getattr(settings, "pager_webhook_url", None)),
        )
        channels = [c for c, on in configured if on]
        return cls(settings.database_url, metrics=metrics, channels=channels)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
