"""The micro-batch loop: poll, decode, apply and screen (on the batch thread), commit."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import polars as pl

from screener.alerts.base import MatchStore
from screener.bus import MatchesPublisher
from screener.clock import Clock, SystemClock
from screener.engine._base import (
    GIL_SWITCH_S,
    Loader,
    ScreenFn,
    _Batch,
    _Partition,
    _seconds,
    log,
)
from screener.engine.base import Consumer, Partition, Producer, Record
from screener.engine.batch import BatchRole
from screener.engine.follow import PAIRS_SCHEMA, FollowRole, _default_screen_all, _default_screen_known
from screener.engine.health import HealthRole
from screener.engine.history import HistoryRole
from screener.engine.matches import MatchesRole, _default_loader, _default_screen
from screener.engine.partitions import PartitionsRole, _Listener
from screener.engine.rebuild import RebuildRole
from screener.engine.rescreen import RescreenRole
from screener.engine.rules import RulesRole
from screener.errors import ScreenerError
from screener.history import HistoryStore
from screener.metrics import Metrics
from screener.settings import Settings
from screener.state import PERSONS_SCHEMA, FactFilter, PatientState

if TYPE_CHECKING:
    from screener.rules import Study


class Engine(
    BatchRole,
    PartitionsRole,
    HistoryRole,
    RebuildRole,
    RulesRole,
    RescreenRole,
    MatchesRole,
    FollowRole,
    HealthRole,
):
    """One screening engine (one consumer-group member). Thread-compatible: drive it from one thread.

    ``consumer`` and ``producer`` default to :func:`screener.bus.make_consumer`/``make_producer`` built from
    ``settings``. ``loader`` and ``screen`` default to :func:`screener.rules.load_studies` and
    :func:`screener.rules.screen`. ``clock`` decides "now" for screening, study dates and the re-screen
    schedule; its ``monotonic()`` times rule polling, snapshots and the sweep. ``history`` is the history store
    (default: :func:`screener.history.open_store` of ``settings.history_url()``).
    """

    def __init__(
        self,
        settings: Settings,
        store: MatchStore,
        *,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        consumer: Consumer | None = None,
        producer: Producer | None = None,
        loader: Loader | None = None,
        screen: ScreenFn | None = None,
        group_id: str | None = None,
        history: HistoryStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or Metrics()
        self.clock: Clock = clock or SystemClock()
        #: The clients given (``None``: :meth:`start` makes the default one and keeps it here).
        self._clients: tuple[Consumer | None, Producer | None] = (consumer, producer)
        self._loader = loader or _default_loader
        self._screen = screen or _default_screen
        self._group_id = group_id
        self._history = history
        self._rebuild = None
        self._matched = pl.DataFrame(schema=PAIRS_SCHEMA)
        self._screen_all = screen or _default_screen_all
        #: a given screen function is also the one that rules matches out (screened again); the default one
        #: returns the known pairs' rows with the matches
        self._screen_known = None if screen else _default_screen_known
        self._parts: dict[int, _Partition] = {}
        self.studies: dict[str, Study] = {}
        self._rules_sig: tuple[tuple[str, int, int], ...] | None = None
        self._rules_fingerprint = ""
        self._next_rules_poll = 0.0
        self._next_snapshot = 0.0
        self._next_rescreen: datetime | None = None
        self._publisher: MatchesPublisher | None = None
        self._keep: FactFilter | None = None
        self._horizon: timedelta | None = None
        self._started = False
        self._lock = threading.RLock()
        #: Counters for tests and the demo banner (never patient-level).
        self.batches = 0
        self.loops = 0
        self.rescreens = 0
        self.matches_recorded = 0
        self.rule_reloads = 0
        #: Rule changes whose new views were swapped in (see screener.engine.history).
        self.rule_swaps = 0
        self.records_processed = 0
        #: Chunks of patients waiting to be screened: (partition, patient ids, trigger).
        self._queue: deque[tuple[int, pl.Series, str, frozenset[str] | None]] = deque()
        self._rescreen_t0: float | None = None
        self._rescreen_new = 0
        self._next_sweep = 0.0
        self._snapshot_pool: ThreadPoolExecutor | None = None
        self._snapshot_jobs: dict[int, Future[None]] = {}
        #: The batch being processed by the batch thread (see :meth:`step`), and that thread.
        self._inflight: tuple[Future[None], _Batch] | None = None
        self._batch_executor: ThreadPoolExecutor | None = None
        #: Per partition: how many times the consumer was sought on it (records polled before a seek are void).
        self._seeks: dict[int, int] = {}
        #: Cumulative seconds per batch stage (parse, apply, screen, commit), for benchmarks.
        self.stage_seconds = {"parse": 0.0, "apply": 0.0, "screen": 0.0, "commit": 0.0}

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> Engine:
        """Load the rules, create the clients and subscribe. Idempotent."""
        if self._started:
            return self
        sys.setswitchinterval(GIL_SWITCH_S)
        self.reload_rules(force=True)
        consumer, producer = self._clients
        if producer is None:
            from screener.bus import make_producer

            producer = make_producer(self.settings)
        self._producer = producer
        self._publisher = MatchesPublisher(self._producer, self.settings.matches_topic)
        self._sweep_unpublished()
        if consumer is None:
            from screener.bus import make_consumer

            consumer = make_consumer(self.settings, group_id=self._group_id)
        self._consumer = consumer
        self._clients = (consumer, producer)  # a restart after close() reuses them, as before
        self._consumer.subscribe([self.settings.events_topic], listener=_Listener(self))
        self._next_rescreen = self.clock.now() + _seconds(self.settings.rescreen_interval_s)
        self._next_snapshot = self.clock.monotonic() + self.settings.snapshot_interval_s
        self._started = True
        log.info(
            "engine_started",
            topic=self.settings.events_topic,
            studies=len(self.studies),
            group=self._group_id or self.settings.group_id,
        )
        return self

    def run(self, stop: threading.Event | None = None) -> None:
        """Loop :meth:`step` (overlapping each batch's processing with the next poll) until ``stop`` is set, then
        :meth:`close`."""
        stop = stop or threading.Event()
        self.start()
        self._warm_screen()
        if self.rebuild_in_process:
            with contextlib.suppress(Exception):
                self._loader_for_views().warm()  # ready for the first rule change
        try:
            while not stop.is_set():
                self.step(overlap=True)
        finally:
            self.close()

    def _warm_screen(self) -> None:
        """Screen a patient with no facts and no attributes against the open studies, and drop the result: a
        process's first screen costs several times a later one (first plans and caches), and without this the
        first live batch paid it, so the events behind it waited 1.5-3 s (bench.engine_latency at 200k-1M
        patients, loaded host). :meth:`run` calls it before its first poll; tests stepping the engine skip it."""
        now = self.clock.now()
        studies = [s for s in self.studies.values() if s.is_open(now)]
        if not studies:
            return
        person = {c: [None] for c in PERSONS_SCHEMA} | {"patient_id": ["warm-up"], "do_not_contact": [False]}
        blank = PatientState(persons=pl.DataFrame(person | {"deceased": [False]}, schema=PERSONS_SCHEMA))
        try:
            self._screen(blank, studies, now)
        except Exception as exc:  # a warm-up only: the first batch screens (and reports) for real
            log.warning("warm_screen_failed", error_type=type(exc).__name__)

    def close(self) -> None:
        """Snapshot and commit every partition that is caught up, then close the clients."""
        if not self._started:
            return
        self._started = False
        try:
            self.settle()
        except Exception as exc:
            log.error("batch_failed", batch=self.batches, error_type=type(exc).__name__)
        if self._batch_executor is not None:
            self._batch_executor.shutdown(wait=True)
            self._batch_executor = None
        self._close_rebuild()  # a rule change still loading is redone at the next start
        if self._rules_pool is not None:
            self._rules_pool.shutdown(wait=False, cancel_futures=True)
            self._rules_pool = None
            self._rules_loading = None
        with contextlib.suppress(Exception):
            self._commit(list(self._parts))
            for p in list(self._parts):
                self._snapshot(p)
        self._wait_snapshots()
        if self._snapshot_pool is not None:
            self._snapshot_pool.shutdown(wait=True)
            self._snapshot_pool = None
        with contextlib.suppress(Exception):
            self._consumer.close(autocommit=False)
        with contextlib.suppress(Exception):
            self._producer.flush(timeout=10)
            self._producer.close(timeout=10)
        log.info("engine_stopped", batches=self.batches)

    # --- one iteration --------------------------------------------------------------------------------------
    def step(self, *, overlap: bool = False) -> int:
        """Rules poll, one micro-batch, scheduled re-screen, periodic snapshot. Returns the records polled.

        Without ``overlap`` the batch is fully processed and committed when this returns (and changed rule files
        are read before it). With ``overlap`` (what :meth:`run` does) changed rule files are read on the rules
        thread and applied at the first step after, and a batch of at least ``overlap_min_records`` records (a
        backlog) is left to the batch thread (state update, screening, the store and the matches topic: mostly
        Polars, which releases the GIL) while the next call polls and decodes the next batch on this thread; that
        call commits it. Whatever is due
        besides a batch (rules, re-screens, the sweep, snapshots) waits for the batch in flight first. Call it from
        one thread only: the consumer is not thread-safe, so every consumer call (poll, commit, seek) and every
        rebalance callback stays here.
        """
        self.loops += 1
        if self._rules_loading is not None or self.clock.monotonic() >= self._next_rules_poll:
            self.reload_rules(background=overlap)  # under run(), rule files are read on the rules thread
        if self._inflight is not None:
            # Something is being screened: wait for new records only briefly, so a quiet topic does not hold
            # the commit (and the maintenance below) of the batch in flight for a whole batch_max_ms.
            records = self._poll_batch(self.settings.fetch_max_wait_ms + 10)
        else:
            records = self._poll_batch(self.settings.batch_max_ms)
        self._check_health()
        n = 0
        if records:
            batch = self._prepare(records)
            self.settle()
            if batch is not None:
                batch.drop_sought(self._seeks)
            if batch is not None and batch.by_part:
                n = batch.total
                self._inflight = (self._batch_pool().submit(self._execute, batch), batch)
        if not overlap or n < self.settings.overlap_min_records:
            # Small batches mean the engine keeps up: overlapping them only slows each one down (both threads
            # want the GIL and the cores) and holds it behind a poll (at 1k events/s, 1M patients in state: p99
            # event-to-match 718 ms overlapped, 401-441 ms not).
            self.settle()
        if self._rebuild is not None:
            self._finish_rebuild()  # swaps in the new rules' views once the rebuild thread has them
        now = self.clock.now()
        self.metrics.studies_open.set(sum(1 for s in self.studies.values() if s.is_open(now)))
        if self._next_rescreen is not None and now >= self._next_rescreen:
            self.settle()
            self._next_rescreen = now + _seconds(self.settings.rescreen_interval_s)
            self.rescreen_all(trigger="schedule", wait=False)
        if self._queue:
            self.settle()
            try:
                self._drain(budget_s=self.settings.batch_max_ms / 1000)
            except ScreenerError as exc:
                log.error("rescreen_failed", error_type=type(exc).__name__)
        if self.clock.monotonic() >= self._next_sweep:
            self.settle()
            self._sweep_unpublished()
        if self.clock.monotonic() >= self._next_snapshot:
            self.settle()
            self._next_snapshot = self.clock.monotonic() + self.settings.snapshot_interval_s
            for p in list(self._parts):
                if self._parts[p].dirty:
                    self._snapshot(p, wait=False)  # the history append first, then the snapshot
                elif (job := self._history_job(p)) is not None:
                    self._snapshot_pool_().submit(job)
        return n

    def settle(self) -> None:
        """Wait for the batch in flight (if any) and commit its offsets. A batch that failed with a
        :class:`ScreenerError` is logged and every partition restarts from its snapshot (:meth:`_recover`);
        any other exception is raised here. Call it from the thread that calls :meth:`step`."""
        if self._inflight is None:
            return
        future, batch = self._inflight
        self._inflight = None
        try:
            future.result()
        except ScreenerError as exc:
            log.error("batch_failed", batch=batch.number, error_type=type(exc).__name__)
            self._recover()
            return
        self._finish(batch)

    def _batch_pool(self) -> ThreadPoolExecutor:
        if self._batch_executor is None:
            self._batch_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="screener-batch")
        return self._batch_executor

    def _poll_batch(self, timeout_ms: int) -> dict[Partition, list[Record]]:
        max_records = self.settings.batch_max_records
        out: dict[Partition, list[Record]] = {}
        seeks = dict(self._seeks)
        got = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        n = 0
        deadline = time.monotonic() + self.settings.batch_max_ms / 1000
        follow_up = True
        while got:
            if self._seeks != seeks:
                # A rebalance inside the last poll moved some partitions' positions: what was gathered for them
                # before it is read again from the new position (kafka-python returns records from there on).
                for tp in [tp for tp in out if self._seeks.get(tp.partition) != seeks.get(tp.partition)]:
                    n -= len(out.pop(tp))
                seeks = dict(self._seeks)
            for tp, recs in got.items():
                out.setdefault(tp, []).extend(recs)
                n += len(recs)
            if n >= max_records or time.monotonic() >= deadline:
                break
            # The records a poll returns were usually fetched before the previous batch was processed; the
            # next fetch is already in flight, so one short wait picks up what arrived meanwhile instead of
            # leaving it for a whole batch (median event-to-match latency at 1k events/s: 223 -> 161 ms).
            wait = self.settings.fetch_max_wait_ms + 10 if follow_up else 0
            follow_up = False
            got = self._consumer.poll(timeout_ms=wait, max_records=max_records - n)
        return out
