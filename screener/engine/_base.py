"""Shared pieces of the engine's roles: the per-partition and per-batch records, constants, the log, and
:class:`EngineBase`, which declares the state every role reads (each role is a mixin of :class:`Engine`)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from screener.alerts.base import MatchStore
from screener.bus import MatchesPublisher
from screener.clock import Clock
from screener.engine.base import Consumer, Partition, Producer, Record
from screener.errors import EventError
from screener.ingest import DecodedBatch
from screener.logging import get_logger
from screener.metrics import Metrics
from screener.settings import Settings
from screener.state import FactFilter, LiveState, PatientState

if TYPE_CHECKING:
    from screener.engine.rebuild import _Rebuild
    from screener.history import HistoryStore
    from screener.rules import LoadResult, Study

#: The interpreter's GIL switch interval while an engine runs (Python's default is 5 ms). The batch thread is a
#: chain of Polars calls, each of which gives the GIL back and must win it again from the consumer's thread
#: (kafka-python and pydantic, holding it): at 5 ms a wait, the batch thread spent most of its time waiting
#: (50 studies, bench.engine_throughput: 56k events/s at 5 ms, 62k at 0.5 ms and at 0.2 ms, 60k at 0.1 ms).
GIL_SWITCH_S = 0.0005


class _Log:
    """Resolves the structlog logger at call time, so configure_logging() after import still applies."""

    def __getattr__(self, name: str) -> Any:
        return getattr(get_logger("screener.engine"), name)


log = _Log()

#: Loads the rule files under the given paths (default: :func:`screener.rules.load_studies`).
Loader = Callable[[Sequence[Path]], "LoadResult"]
#: One decoded batch of a partition as :func:`screener.ingest.decode_batch` splits it: (upd, facts, control).
Frames = tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]
ScreenFn = Callable[[PatientState, Sequence["Study"], datetime], pl.DataFrame]
#: ``(state, studies, now, known)``: the matches (as the default screen returns them) and the rows of the
#: ``known`` pairs (``study_id, patient_id``) whatever their outcome, with their criteria and evidence
KnownScreenFn = Callable[[PatientState, Sequence["Study"], datetime, pl.DataFrame], pl.DataFrame]


@dataclass
class _Partition:
    """One assigned partition: its state and the next offset to read."""

    state: LiveState
    offset: int
    #: While set, records below this offset were processed before: apply them but screen nothing yet.
    replay_until: int | None = None
    pending: list[pl.Series] = field(default_factory=list)
    dirty: bool = False
    #: Decoded frames applied since the last history append (the batch thread adds, a history job takes them).
    unsaved: list[Frames] = field(default_factory=list)
    #: The offset after the last batch in ``unsaved`` (set with it, under ``lock``).
    unsaved_offset: int | None = None
    #: The offset the history store holds this partition up to (``None``: nothing there yet).
    saved_offset: int | None = None
    #: While a rule change rebuilds the hot view: the frames applied since the store view it builds from.
    catch_up: list[Frames] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def replaying(self) -> bool:
        return self.replay_until is not None


@dataclass
class _Batch:
    """One micro-batch between :meth:`Engine._prepare` (decoded, on the consumer's thread), :meth:`Engine._execute`
    (the batch thread) and :meth:`Engine._finish` (committed, on the consumer's thread)."""

    number: int
    by_part: dict[int, DecodedBatch]
    #: Per partition: the first offset polled and the next offset to read once the batch is done.
    offsets: dict[int, tuple[int, int]]
    #: Per partition: the records taken (those below the partition's offset are not).
    sizes: dict[int, int]
    keys: pl.DataFrame
    #: The Kafka timestamp (ms) of every accepted event, by patient.
    event_stamps: pl.DataFrame
    counts: dict[tuple[str, str], int]
    dead: int
    #: Per partition: how many times it had been sought when the batch was polled.
    seeks: dict[int, int]
    parse_s: float
    apply_s: float = 0.0
    screen_s: float = 0.0
    flush_s: float = 0.0
    new: int = 0

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    def drop_sought(self, seeks: dict[int, int]) -> None:
        """Forget the partitions sought since the batch was polled (after a failed batch, every partition
        restarts from its snapshot): the consumer reads their records again from the new position."""
        for p in [p for p, n in self.seeks.items() if seeks.get(p, 0) != n]:
            for d in (self.by_part, self.offsets, self.sizes, self.seeks):
                d.pop(p, None)


def _concat_states(states: Sequence[PatientState]) -> PatientState:
    if len(states) == 1:
        return states[0]
    return PatientState(
        persons=pl.concat([s.persons for s in states], how="vertical"),
        facts=pl.concat([s.facts for s in states], how="vertical"),
    )


def _owners(ids: pl.Series, partition: int) -> pl.DataFrame:
    """``patient_id, partition`` for ``ids`` of one partition."""
    return ids.rename("patient_id").to_frame().with_columns(pl.lit(partition, dtype=pl.Int32).alias("partition"))


def _seconds(s: float) -> timedelta:
    return timedelta(seconds=s)


def _start_of(d: date) -> datetime:
    if isinstance(d, datetime):
        return d.astimezone(UTC)
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _end_of(d: date) -> datetime:
    if isinstance(d, datetime):
        return d.astimezone(UTC)
    return datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(days=1)


class EngineBase:
    """The attributes the roles share (set by :meth:`screener.engine.Engine.__init__`) and the methods one role
    calls on another. Declarations only: the roles implement them."""

    settings: Settings
    store: MatchStore
    metrics: Metrics
    clock: Clock
    _consumer: Consumer
    _producer: Producer
    _loader: Loader
    _screen: ScreenFn
    _screen_known: KnownScreenFn | None
    _group_id: str | None
    _parts: dict[int, _Partition]
    studies: dict[str, Study]
    _rules_sig: tuple[tuple[str, int, int], ...] | None
    _rules_fingerprint: str
    _next_rules_poll: float
    _next_snapshot: float
    _next_rescreen: datetime | None
    _publisher: MatchesPublisher | None
    _keep: FactFilter | None
    _horizon: timedelta | None
    _started: bool
    _lock: threading.RLock
    batches: int
    loops: int
    rescreens: int
    matches_recorded: int
    rule_reloads: int
    rule_swaps: int
    records_processed: int
    _queue: deque[tuple[int, pl.Series, str, frozenset[str] | None]]
    _rescreen_t0: float | None
    _rescreen_new: int
    _next_sweep: float
    _snapshot_pool: ThreadPoolExecutor | None
    _snapshot_jobs: dict[int, Future[None]]
    _inflight: tuple[Future[None], _Batch] | None
    _batch_executor: ThreadPoolExecutor | None
    _seeks: dict[int, int]
    stage_seconds: dict[str, float]
    _health_state: tuple[bool, str | None]
    _history: HistoryStore | None
    _rebuild: _Rebuild | None

    def settle(self) -> None:
        raise NotImplementedError

    def _flush_matches(self) -> None:
        raise NotImplementedError

    def _screen_and_record(
        self,
        state: PatientState,
        now: datetime,
        trigger: str,
        event_times: pl.DataFrame | None = None,
        only: frozenset[str] | None = None,
        owners: pl.DataFrame | None = None,
    ) -> int:
        raise NotImplementedError

    def _update_gauges(self) -> None:
        raise NotImplementedError

    def _enqueue(self, partition: int, ids: pl.Series, trigger: str, only: frozenset[str] | None = None) -> None:
        raise NotImplementedError

    def _drain(self, budget_s: float | None) -> int:
        raise NotImplementedError

    def _snapshot(self, partition: int, wait: bool = True) -> None:
        raise NotImplementedError

    def _commit(self, partitions: Sequence[int]) -> None:
        raise NotImplementedError

    def _sweep_unpublished(self) -> int:
        raise NotImplementedError

    def _dead_letter(self, rec: Record, exc: EventError) -> None:
        raise NotImplementedError

    def reload_rules(self, force: bool = False) -> bool:
        raise NotImplementedError

    def _init_partition(self, tp: Partition) -> None:
        raise NotImplementedError

    def _recover(self) -> None:
        raise NotImplementedError

    def _wait_snapshots(self) -> None:
        raise NotImplementedError

    def _beginning(self, tp: Partition) -> int:
        raise NotImplementedError

    def _compile_pruning(self) -> None:
        raise NotImplementedError

    def _snapshot_dir(self, partition: int) -> Path:
        raise NotImplementedError

    def _keep_frames(self, part: _Partition, frames: Frames | None, offset: int) -> None:
        raise NotImplementedError

    def _history_job(self, partition: int) -> Callable[[], None] | None:
        raise NotImplementedError

    def _restore(self, partition: int, begin: int, committed: int | None) -> tuple[LiveState, int, str]:
        raise NotImplementedError

    def _start_rebuild(
        self,
        studies: dict[str, Study],
        keep: FactFilter | None,
        horizon: timedelta | None,
        fingerprint: str,
        changed: Sequence[str],
        removed: list[str],
    ) -> None:
        raise NotImplementedError

    def _finish_rebuild(self, wait: bool = False) -> bool:
        raise NotImplementedError

    def history(self) -> HistoryStore:
        raise NotImplementedError

    def _known_pairs(self, state: PatientState, studies: Sequence[Study]) -> pl.DataFrame:
        raise NotImplementedError

    def _ruled_out(
        self,
        state: PatientState,
        result: pl.DataFrame,
        studies: Sequence[Study],
        now: datetime,
        known: pl.DataFrame | None = None,
        holds_known: bool = False,
    ) -> pl.DataFrame:
        raise NotImplementedError

    def _note_pairs(self, matched: pl.DataFrame, closed: pl.DataFrame, owners: pl.DataFrame | None) -> None:
        raise NotImplementedError

    def _save_pairs(self, partition: int) -> None:
        raise NotImplementedError

    def _load_pairs(self, partition: int) -> None:
        raise NotImplementedError

    def _forget_pairs(self, partition: int) -> None:
        raise NotImplementedError
