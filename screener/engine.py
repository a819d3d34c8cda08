"""The streaming screening engine: consume ``ehr.events``, keep patient state, screen, record matches.

One :class:`Engine` is one member of the consumer group. Each loop iteration (:meth:`Engine.step`):

1. polls a micro-batch (up to ``batch_max_records`` records or ``batch_max_ms``);
2. validates every record (:func:`screener.ingest.decode_batch`: the whole batch at once, with exactly the
   verdicts of :func:`screener.events.parse_event`); a bad one goes to the dead-letter topic
   with the reason, the original payload and its topic/partition/offset;
3. applies the events to the state of the partition they came from (:meth:`screener.state.LiveState.apply`:
   :func:`screener.state.apply_frames` on just the patients the batch can affect, found through the state's
   sorted indexes, so a batch costs the same with ten patients in state or a million), keeping only the facts
   some loaded study can use;
4. re-screens only the touched patients against every *open* study (``Study.is_open(now)``);
5. drops do-not-contact (the event flag or the store's register) and deceased patients (counted, never named);
6. writes the matches (outcome ``eligible`` or ``possible``) with :meth:`MatchStore.record_matches`, which is
   idempotent per (study, patient), and publishes the new ones to ``screening.matches``;
7. then, and only then, commits the offsets.

A crash at any point repeats work from the last committed offsets; the store's uniqueness makes every match
exactly-once in effect. The ``screening.matches`` topic carries what ``record_matches`` returned as new; once
the broker acknowledges them the store marks them published. A crash (or a failed publish) between the store
write and that acknowledgement leaves matches unpublished in the store, and a sweep (at start, then every
``matches_sweep_interval_s``) publishes every match unpublished for ``matches_sweep_settle_s``. So the topic loses no
match; it may carry one twice (a crash after the acknowledgement but before the mark), so its consumers key on
(study_id, patient_id), as the store does.

Threads: the loop (:meth:`Engine.run`) overlaps a backlog's batches. Steps 1-2 run on the consumer's thread; steps
3-6 of a batch of at least ``overlap_min_records`` records run on a batch thread (mostly Polars, which releases
the GIL) while the consumer's thread polls and validates the next batch, and step 7 runs back on the consumer's
thread once the batch thread is done. Every consumer call and rebalance callback stays on the consumer's thread
(kafka-python's consumer is not thread-safe); a rebalance, a rules change, a re-screen, the sweep, a snapshot
and :meth:`Engine.close` first wait for the batch in flight; records polled before a seek (a failed batch's
recovery, a rebuild) are dropped and read again from the new position. Smaller batches (a steady feed) are done
before the next poll: overlapping them only slows each one down.

State is per partition: restored from a snapshot (Parquet + offset, see :func:`screener.state.save_snapshot`)
on assignment, or rebuilt by replaying the partition. While a partition replays records it had already
processed, the engine only applies them; when it catches up it screens every patient touched during the replay
once, so a half-rebuilt history never produces a match. Snapshots are taken on revocation, on close and every
``snapshot_interval_s``, always *after* the commit, so a snapshot's offset never runs ahead of the group's. The
periodic ones are written by a background thread from an immutable view of the state, so batches do not wait
for Parquet; a snapshot rewrites the main frames only after they were compacted, otherwise it writes the tail
(patients changed since) and hard-links the rest from the previous snapshot.

Time: every ``rescreen_interval_s`` of the engine's clock the whole state is screened (birthdays, windows
expiring, studies opening). ``rules_dir`` is polled every ``rules_poll_s``; a file that fails to load is
logged and counted and the study keeps its previous version; an added or changed study makes every assigned
partition rebuild by replay (pruned facts may be needed by the new rule), which screens everyone against it.

Choices where the issue is silent: facts are kept for studies that are open *or not yet open* (so a study that
opens tomorrow has history), and dropped for closed ones; the time horizon is the longest window of those
studies. Logs carry batch numbers, partitions, offsets, counts and timings, never a patient identifier.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from screener.alerts.base import MATCH_COLUMNS, MatchStore
from screener.bus import MatchesPublisher
from screener.clock import Clock, SystemClock
from screener.errors import DeliveryError, EventError, ScreenerError
from screener.ingest import DecodedBatch, decode_batch
from screener.logging import get_logger
from screener.metrics import Metrics
from screener.settings import Settings
from screener.state import (
    TS,
    FactFilter,
    LiveState,
    PatientState,
    load_snapshot_parts,
    save_snapshot,
)

__all__ = ["MATCH_OUTCOMES", "Engine", "matches_from_screen"]

MATCH_OUTCOMES = ("eligible", "possible")
#: Patients per chunk in a full re-screen: bounds the patient x study result frame and the time between two
#: polls of the consumer (a full re-screen is worked off a chunk per loop iteration, between micro-batches).
RESCREEN_CHUNK = 20_000
#: Matches per sweep page.
SWEEP_LIMIT = 10_000
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

Loader = Callable[[Sequence[Path]], Any]
ScreenFn = Callable[[PatientState, Sequence[Any], datetime], pl.DataFrame]


@dataclass
class _Partition:
    """One assigned partition: its state and the next offset to read."""

    state: LiveState
    offset: int
    #: While set, records below this offset were processed before: apply them but screen nothing yet.
    replay_until: int | None = None
    pending: list[pl.Series] = field(default_factory=list)
    dirty: bool = False

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


def _default_loader(paths: Sequence[Path]) -> Any:
    from screener.rules import load_studies

    return load_studies(paths)


def _default_screen(state: PatientState, studies: Sequence[Any], now: datetime) -> pl.DataFrame:
    from screener.rules import screen

    # Only eligible/possible rows are stored, so only they are returned (with criteria and evidence texts);
    # every patient is still evaluated against every study.
    return screen(state, studies, now, evidence="outcomes", rows="matches")


def _criteria_json() -> pl.Expr:
    """``criteria`` (List(Struct{name, group, result, evidence})) as a JSON array string, vectorised."""
    return pl.concat_str(
        pl.lit("["),
        pl.col("criteria").list.eval(pl.element().struct.json_encode()).list.join(","),
        pl.lit("]"),
    )


def matches_from_screen(
    result: pl.DataFrame,
    persons: pl.DataFrame,
    dnc_register: pl.Series,
    now: datetime,
    event_times: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Turn a screen result into match rows (``MATCH_COLUMNS``) and per-study suppression counts.

    Keeps outcomes ``eligible``/``possible``; drops patients flagged do-not-contact (state flag or the
    register) or deceased. Returns ``(matches, suppressed)`` where ``suppressed`` has columns
    ``study_id, reason ('do-not-contact'|'deceased'), n``. Pure.
    """
    cand = result.filter(pl.col("outcome").is_in(MATCH_OUTCOMES))
    empty_supp = pl.DataFrame(schema={"study_id": pl.String, "reason": pl.String, "n": pl.UInt32})
    if cand.height == 0:
        return _empty_matches(), empty_supp
    cand = cand.join(
        persons.select("patient_id", "setting", "imd_decile", "ethnic_group", "do_not_contact", "deceased"),
        on="patient_id",
        how="left",
    ).with_columns(
        (pl.col("do_not_contact").fill_null(False) | pl.col("patient_id").is_in(dnc_register.implode())).alias("_dnc"),
        pl.col("deceased").fill_null(False).alias("_dead"),
    )
    suppressed = (
        cand.filter(pl.col("_dnc") | pl.col("_dead"))
        .with_columns(
            pl.when(pl.col("_dead")).then(pl.lit("deceased")).otherwise(pl.lit("do-not-contact")).alias("reason")
        )
        .group_by("study_id", "reason")
        .agg(pl.len().alias("n"))
    )
    kept = cand.filter(~pl.col("_dnc") & ~pl.col("_dead"))
    if event_times is not None and event_times.height:
        kept = kept.join(event_times, on="patient_id", how="left")
    else:
        kept = kept.with_columns(pl.lit(None, dtype=TS).alias("event_time"))
    matches = kept.select(
        pl.col("study_id").cast(pl.String),
        pl.col("patient_id").cast(pl.String),
        pl.col("outcome").cast(pl.String),
        pl.col("rule_hash").cast(pl.String),
        _criteria_json().alias("criteria"),
        pl.lit(now).cast(TS).alias("matched_at"),
        pl.col("setting").cast(pl.String),
        pl.col("imd_decile").cast(pl.Int8),
        pl.col("ethnic_group").cast(pl.String),
        pl.col("event_time").cast(TS),
    )
    return matches, suppressed


def _empty_matches() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "study_id": pl.String,
            "patient_id": pl.String,
            "outcome": pl.String,
            "rule_hash": pl.String,
            "criteria": pl.String,
            "matched_at": TS,
            "setting": pl.String,
            "imd_decile": pl.Int8,
            "ethnic_group": pl.String,
            "event_time": TS,
        }
    )


def _concat_states(states: Sequence[PatientState]) -> PatientState:
    if len(states) == 1:
        return states[0]
    return PatientState(
        persons=pl.concat([s.persons for s in states], how="vertical"),
        facts=pl.concat([s.facts for s in states], how="vertical"),
    )


class _Listener:
    """kafka-python ConsumerRebalanceListener adapter (built lazily so kafka is imported only when used)."""

    def __new__(cls, engine: Engine) -> Any:
        from kafka import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                engine._on_revoked(revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                engine._on_assigned(assigned)

        return Listener()


class Engine:
    """One screening engine (one consumer-group member). Thread-compatible: drive it from one thread.

    ``consumer`` and ``producer`` default to :func:`screener.bus.make_consumer`/``make_producer`` built from
    ``settings``. ``loader`` and ``screen`` default to :func:`screener.rules.load_studies` and
    :func:`screener.rules.screen`. ``clock`` decides "now" for screening, study dates and the re-screen
    schedule; rule polling and snapshots use the monotonic clock.
    """

    def __init__(
        self,
        settings: Settings,
        store: MatchStore,
        *,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        consumer: Any = None,
        producer: Any = None,
        loader: Loader | None = None,
        screen: ScreenFn | None = None,
        group_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or Metrics()
        self.clock: Clock = clock or SystemClock()
        self._consumer = consumer
        self._producer = producer
        self._loader = loader or _default_loader
        self._screen = screen or _default_screen
        self._group_id = group_id
        self._parts: dict[int, _Partition] = {}
        self.studies: dict[str, Any] = {}
        self._rules_sig: tuple[tuple[str, int, int], ...] | None = None
        self._rules_fingerprint = ""
        self._next_rules_poll = 0.0
        self._next_snapshot = 0.0
        self._next_rescreen: datetime | None = None
        self._publisher: MatchesPublisher | None = None
        self._keep: FactFilter | None = None
        self._horizon: Any = None
        self._started = False
        self._lock = threading.RLock()
        #: Counters for tests and the demo banner (never patient-level).
        self.batches = 0
        self.loops = 0
        self.rescreens = 0
        self.matches_recorded = 0
        self.rule_reloads = 0
        self.records_processed = 0
        #: Chunks of patients waiting to be screened: (partition, patient ids, trigger).
        self._queue: deque[tuple[int, pl.Series, str]] = deque()
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
        if self._producer is None:
            from screener.bus import make_producer

            self._producer = make_producer(self.settings)
        self._publisher = MatchesPublisher(self._producer, self.settings.matches_topic)
        self._sweep_unpublished()
        if self._consumer is None:
            from screener.bus import make_consumer

            self._consumer = make_consumer(self.settings, group_id=self._group_id)
        self._consumer.subscribe([self.settings.events_topic], listener=_Listener(self))
        self._next_rescreen = self.clock.now() + _seconds(self.settings.rescreen_interval_s)
        self._next_snapshot = time.monotonic() + self.settings.snapshot_interval_s
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
        try:
            while not stop.is_set():
                self.step(overlap=True)
        finally:
            self.close()

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

        Without ``overlap`` the batch is fully processed and committed when this returns. With ``overlap`` (what
        :meth:`run` does) a batch of at least ``overlap_min_records`` records (a backlog) is left to the batch
        thread (state update, screening, the store and the matches topic: mostly Polars, which releases the GIL)
        while the next call polls and decodes the next batch on this thread; that call commits it. Whatever is due
        besides a batch (rules, re-screens, the sweep, snapshots) waits for the batch in flight first. Call it from
        one thread only: the consumer is not thread-safe, so every consumer call (poll, commit, seek) and every
        rebalance callback stays here.
        """
        self.loops += 1
        if time.monotonic() >= self._next_rules_poll:
            self.reload_rules()
        if self._inflight is not None:
            # Something is being screened: wait for new records only briefly, so a quiet topic does not hold
            # the commit (and the maintenance below) of the batch in flight for a whole batch_max_ms.
            records = self._poll_batch(self.settings.fetch_max_wait_ms + 10)
        else:
            records = self._poll_batch(self.settings.batch_max_ms)
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
        if time.monotonic() >= self._next_sweep:
            self.settle()
            self._sweep_unpublished()
        if time.monotonic() >= self._next_snapshot:
            self.settle()
            self._next_snapshot = time.monotonic() + self.settings.snapshot_interval_s
            for p in list(self._parts):
                if self._parts[p].dirty:
                    self._snapshot(p, wait=False)
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

    def _poll_batch(self, timeout_ms: int) -> dict[Any, list[Any]]:
        max_records = self.settings.batch_max_records
        out: dict[Any, list[Any]] = {}
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

    # --- the batch ------------------------------------------------------------------------------------------
    def _prepare(self, records: dict[Any, list[Any]]) -> _Batch | None:
        """On the consumer's thread: validate and decode the polled records (one decode for the whole batch, cut
        back by partition), dead-letter the bad ones. Rejects carry parse_event's own error."""
        t0 = time.perf_counter()
        live: list[Any] = []
        starts: list[int] = []
        order: list[int] = []
        offsets: dict[int, tuple[int, int]] = {}
        sizes: dict[int, int] = {}
        inflight = self._inflight[1].offsets if self._inflight is not None else {}
        for tp, recs in records.items():
            part = self._parts.get(tp.partition)
            if part is None or not recs:
                continue  # revoked while the batch was being gathered: the new owner reads it
            floor = inflight[tp.partition][1] if tp.partition in inflight else part.offset
            starts.append(len(live))
            order.append(tp.partition)
            taken = [rec for rec in recs if rec.offset >= floor]
            live.extend(taken)
            sizes[tp.partition] = len(taken)
            offsets[tp.partition] = (recs[0].offset, recs[-1].offset + 1)
        if not order:
            return None
        self.batches += 1
        whole = decode_batch([rec.value for rec in live])
        for i, exc in whole.rejects:
            self._dead_letter(live[i], exc)
        keys = whole.keys
        counts = {
            (source, kind): c
            for source, kind, c in keys.group_by("source", "kind", maintain_order=True).len().iter_rows()
        }
        stamps = pl.Series("_ts", [live[i].timestamp for i in keys["index"].to_list()], dtype=pl.Int64)
        by_part = dict(zip(order, whole.split(starts) if len(starts) > 1 else [whole], strict=True))
        return _Batch(
            number=self.batches,
            by_part=by_part,
            offsets=offsets,
            sizes=sizes,
            keys=keys,
            counts=counts,
            event_stamps=pl.DataFrame([keys["patient_id"], stamps]),
            dead=len(whole.rejects),
            seeks={p: self._seeks.get(p, 0) for p in order},
            parse_s=time.perf_counter() - t0,
        )

    def _execute(self, batch: _Batch) -> None:
        """On the batch thread: apply the batch to the partitions' state, screen the touched patients, record
        and publish the new matches and wait for the broker's acknowledgement. Commits are left to
        :meth:`settle`, on the consumer's thread."""
        t0 = time.perf_counter()
        now = self.clock.now()
        if self._keep is not None and self._keep.keys:
            # Judge new codes once for the whole batch rather than once per partition.
            self._keep.learn(batch.keys.select(FactFilter.KEY_COLUMNS))
        to_screen: list[PatientState] = []
        for p, decoded in batch.by_part.items():
            part = self._parts.get(p)
            if part is None:
                continue
            if decoded.accepted:
                touched = part.state.apply(*decoded.frames, keep=self._keep, changed_only=True)
                part.dirty = True
            else:
                touched = pl.Series("patient_id", [], dtype=pl.String)
            part.offset = batch.offsets[p][1]
            if part.replaying:
                part.pending.append(touched)
                assert part.replay_until is not None
                if part.offset >= part.replay_until:
                    everyone = pl.concat(part.pending).unique()
                    part.replay_until, part.pending = None, []
                    log.info("replay_complete", partition=p, offset=part.offset, patients=everyone.len())
                    if everyone.len() > RESCREEN_CHUNK:
                        self._enqueue(p, everyone, "replay")
                    elif everyone.len():
                        to_screen.append(part.state.select(everyone))
            elif touched.len():
                to_screen.append(part.state.select(touched))
        t_apply = time.perf_counter()
        if to_screen:
            event_times = (
                batch.event_stamps.group_by("patient_id")
                .agg(pl.col("_ts").max())
                .select(
                    "patient_id",
                    pl.from_epoch("_ts", time_unit="ms").dt.replace_time_zone("UTC").cast(TS).alias("event_time"),
                )
            )
            batch.new = self._screen_and_record(_concat_states(to_screen), now, "event", event_times)
        t_screen = time.perf_counter()
        self._flush_matches()
        batch.apply_s, batch.screen_s, batch.flush_s = t_apply - t0, t_screen - t_apply, time.perf_counter() - t_screen

    def _finish(self, batch: _Batch) -> None:
        """On the consumer's thread, once :meth:`_execute` is done: commit, then count and log the batch."""
        t0 = time.perf_counter()
        self._commit(list(batch.by_part))
        commit_s = batch.flush_s + time.perf_counter() - t0
        self.records_processed += batch.total
        for name, secs in (
            ("parse", batch.parse_s),
            ("apply", batch.apply_s),
            ("screen", batch.screen_s),
            ("commit", commit_s),
        ):
            self.stage_seconds[name] += secs
        for (source, kind), c in batch.counts.items():
            self.metrics.events_consumed.labels(source, kind).inc(c)
        self.metrics.batch_duration.observe(batch.parse_s + batch.apply_s + batch.screen_s + commit_s)
        self.metrics.batch_size.observe(batch.total)
        self._update_gauges()
        log.info(
            "batch",
            batch=batch.number,
            records=batch.total,
            dead_letters=batch.dead,
            new_matches=batch.new,
            partitions=sorted(batch.offsets),
            offsets={str(p): list(o) for p, o in sorted(batch.offsets.items())},
            parse_ms=round(batch.parse_s * 1000, 1),
            apply_ms=round(batch.apply_s * 1000, 1),
            screen_ms=round(batch.screen_s * 1000, 1),
            commit_ms=round(commit_s * 1000, 1),
        )

    def _flush_matches(self) -> None:
        """Wait for the broker to acknowledge the matches published since the last flush, then mark them
        published in the store (a failure to mark only means the sweep publishes them again)."""
        if self._publisher is None:
            return
        keys = self._publisher.flush()
        if keys:
            try:
                self.store.mark_published(keys)
            except Exception as exc:
                log.warning("mark_published_failed", matches=len(keys), error_type=type(exc).__name__)

    def _sweep_unpublished(self) -> int:
        """Publish stored matches no broker acknowledged, left by a crash (or a failed publish) between the
        worklist write and the acknowledgement, once ``matches_sweep_settle_s`` old (younger ones may be
        another engine's, still in flight). Returns how many were published."""
        self._next_sweep = time.monotonic() + self.settings.matches_sweep_interval_s
        if self._publisher is None:
            return 0
        settled = datetime.now(UTC) - _seconds(self.settings.matches_sweep_settle_s)
        try:
            rows = self.store.unpublished_matches(settled_before=settled, limit=SWEEP_LIMIT)
            if rows.height:
                self._publisher.publish(rows)
                self._flush_matches()
                log.info("unpublished_matches_sent", matches=rows.height)
        except ScreenerError as exc:
            log.warning("sweep_failed", error_type=type(exc).__name__)
            return 0
        if rows.height >= SWEEP_LIMIT:
            self._next_sweep = 0.0  # more to do: again at the next step
        return rows.height

    def _dead_letter(self, rec: Any, exc: EventError) -> None:
        value = rec.value or b""
        doc = {
            "reason": exc.message,
            "error": str(exc),
            "field": exc.field,
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "timestamp": rec.timestamp,
            "payload": value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value),
        }
        self._producer.send(
            self.settings.dlq_topic,
            key=rec.key,
            value=json.dumps(doc).encode(),
            headers=[("reason", exc.message.encode()[:200])],
        )
        self.metrics.dead_letters.labels("validate", exc.message[:60]).inc()

    def _screen_and_record(
        self, state: PatientState, now: datetime, trigger: str, event_times: pl.DataFrame | None = None
    ) -> int:
        """Screen ``state`` against the open studies, store the matches, publish the new ones (not flushed)."""
        studies = [s for s in self.studies.values() if s.is_open(now)]
        if not studies or state.persons.height == 0:
            return 0
        result = self._screen(state, studies, now)
        # Every patient is evaluated against every study, whatever rows the screen function returns.
        self.metrics.screens.labels(trigger).inc(state.persons.height * len(studies))
        if result.filter(pl.col("outcome").is_in(MATCH_OUTCOMES)).height == 0:
            return 0
        dnc = self.store.do_not_contact()
        matches, suppressed = matches_from_screen(result, state.persons, dnc, now, event_times)
        for study, reason, n in suppressed.iter_rows():
            if reason == "deceased":
                self.metrics.deceased_suppressed.labels(study).inc(n)
            else:
                self.metrics.do_not_contact_suppressed.labels(study).inc(n)
        if matches.height == 0:
            return 0
        try:
            new = self.store.record_matches(matches.select(list(MATCH_COLUMNS)))
        except ScreenerError:
            raise
        except Exception as exc:
            raise DeliveryError(f"recording matches failed: {type(exc).__name__}", channel="store") from exc
        if new.height:
            counts = new.group_by("study_id", "outcome", pl.col("setting").fill_null("unknown")).agg(pl.len())
            for study, outcome, setting, n in counts.iter_rows():
                self.metrics.matches.labels(study, outcome, setting).inc(n)
            if "event_time" in new.columns:
                wall = time.time()
                for ts in new["event_time"].drop_nulls().to_list():
                    self.metrics.event_to_match_latency.observe(max(0.0, wall - ts.timestamp()))
            if self._publisher is not None:
                self._publisher.publish(new)
            self.matches_recorded += new.height
        return new.height

    # --- full and retrospective screens ---------------------------------------------------------------------
    def rescreen_all(self, trigger: str = "schedule", wait: bool = True) -> int:
        """Screen every patient of every caught-up partition again, in chunks of ``RESCREEN_CHUNK`` patients,
        after pruning facts older than the longest window. With ``wait`` the chunks are worked off now and the
        number of new matches is returned; otherwise :meth:`step` works them off between micro-batches."""
        self.settle()
        now = self.clock.now()
        self.rescreens += 1
        since = now - self._horizon if self._horizon is not None else None
        self._queue = deque(q for q in self._queue if q[2] != trigger)
        for p, part in self._parts.items():
            if part.replaying:
                continue
            if since is not None:
                part.state.prune(None, since)
            self._enqueue(p, part.state.patient_ids(), trigger)
        self._rescreen_t0, self._rescreen_new = time.perf_counter(), 0
        return self._drain(budget_s=None) if wait else 0

    def _enqueue(self, partition: int, ids: pl.Series, trigger: str) -> None:
        for start in range(0, ids.len(), RESCREEN_CHUNK):
            self._queue.append((partition, ids.slice(start, RESCREEN_CHUNK), trigger))

    def _drain(self, budget_s: float | None) -> int:
        """Screen queued chunks until the queue is empty or ``budget_s`` has passed (at least one chunk).
        A chunk whose screening fails goes back to the front of the queue."""
        t0 = time.perf_counter()
        new = 0
        while self._queue:
            p, ids, trigger = self._queue.popleft()
            part = self._parts.get(p)
            if part is None or part.replaying:
                continue
            try:
                new += self._screen_and_record(part.state.select(ids), self.clock.now(), trigger)
            except ScreenerError:
                self._queue.appendleft((p, ids, trigger))
                raise
            if budget_s is not None and time.perf_counter() - t0 >= budget_s:
                break
        self._flush_matches()
        self._rescreen_new += new
        if not self._queue and self._rescreen_t0 is not None:
            elapsed = time.perf_counter() - self._rescreen_t0
            self.metrics.rescreen_duration.observe(elapsed)
            self._update_gauges()
            log.info(
                "rescreen", new_matches=self._rescreen_new, partitions=sorted(self._parts), ms=round(elapsed * 1000, 1)
            )
            self._rescreen_t0 = None
        return new

    # --- rules ----------------------------------------------------------------------------------------------
    def _rules_signature(self) -> tuple[tuple[str, int, int], ...]:
        root = Path(self.settings.rules_dir)
        files = sorted([*root.rglob("*.yaml"), *root.rglob("*.yml")]) if root.exists() else []
        sig = []
        for f in files:
            with contextlib.suppress(OSError):
                st = f.stat()
                sig.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(sig)

    def reload_rules(self, force: bool = False) -> bool:
        """Reload ``rules_dir`` if any file changed (or ``force``). Returns True when the study set changed.

        A study whose file still exists but no longer loads keeps its previous version; each load error is
        logged and counted in ``screener_rule_load_errors_total``. An added or changed study triggers a rebuild
        of every assigned partition (which screens everyone against it).
        """
        self._next_rules_poll = time.monotonic() + self.settings.rules_poll_s
        sig = self._rules_signature()
        if not force and sig == self._rules_sig:
            return False
        self.settle()  # the batch in flight finishes under the rules it was started with
        self._rules_sig = sig
        try:
            result = self._loader([Path(self.settings.rules_dir)])
        except ScreenerError as exc:
            self.metrics.rule_load_errors.labels("<rules>").inc()
            log.warning("rules_load_failed", error=str(exc))
            return False
        loaded = {s.id: s for s in result.studies}
        for err in result.errors:
            file = getattr(err, "file", None) or "<rules>"
            self.metrics.rule_load_errors.labels(Path(file).name).inc()
            log.warning("rule_load_error", file=str(file), error=str(err))
        if result.errors:
            present = {str(Path(f).resolve()) for f, _, _ in sig}
            loaded_paths = {str(Path(s.path).resolve()) for s in loaded.values()}
            for old in self.studies.values():
                old_path = str(Path(old.path).resolve())
                if old.id not in loaded and old_path in present and old_path not in loaded_paths:
                    loaded[old.id] = old
                    log.warning("rule_kept_previous_version", study=old.id, file=old_path)
        before = {sid: s.content_hash for sid, s in self.studies.items()}
        after = {sid: s.content_hash for sid, s in loaded.items()}
        if before == after and not force:
            return False
        added_or_changed = sorted(sid for sid, h in after.items() if before.get(sid) != h)
        removed = sorted(set(before) - set(after))
        self.studies = loaded
        self.rule_reloads += 1
        self._compile_pruning()
        self._publish_study_metrics(removed)
        with contextlib.suppress(Exception):
            self.store.sync_studies(list(loaded.values()))
        log.info(
            "rules_loaded", studies=len(loaded), changed=added_or_changed, removed=removed, errors=len(result.errors)
        )
        if added_or_changed and self._parts:
            self._rebuild_all()
        return True

    def _compile_pruning(self) -> None:
        now = self.clock.now()
        relevant = [s for s in self.studies.values() if s.closes is None or _end_of(s.closes) >= now]
        filters: list[pl.Expr] = []
        horizons: list[Any] = []
        unbounded = False
        for s in relevant:
            fact_filter = getattr(s, "fact_filter", None)
            if fact_filter is None:
                filters = []
                unbounded = True
                break
            filters.append(fact_filter())
            h = getattr(s, "horizon", None)
            if h is None:
                unbounded = True
            else:
                horizons.append(h)
        expr: pl.Expr | None
        if not relevant:
            expr = pl.lit(False)
        elif filters:
            # One column per study, OR-ed horizontally: Polars plans this much faster than a deep `|` chain.
            expr = pl.any_horizontal([f.fill_null(False) for f in filters])
        else:
            expr = None
        self._horizon = None if unbounded or not horizons else max(horizons)
        # The cut-off is fixed at compile time: as time moves on it keeps a little more than needed, never less.
        self._keep = FactFilter(expr, now - self._horizon if self._horizon is not None else None)
        digest = hashlib.sha256(
            json.dumps(sorted((s.id, s.content_hash) for s in self.studies.values())).encode()
        ).hexdigest()
        self._rules_fingerprint = digest

    def _publish_study_metrics(self, removed: Sequence[str]) -> None:
        self.metrics.rules_loaded.set(len(self.studies))
        for s in self.studies.values():
            self.metrics.study_target.labels(s.id, s.sponsor).set(s.target or 0)
            if s.opens is not None:
                self.metrics.study_opens.labels(s.id).set(_start_of(s.opens).timestamp())
            if s.closes is not None:
                self.metrics.study_closes.labels(s.id).set(_end_of(s.closes).timestamp())
        for sid in removed:
            for g in (self.metrics.study_opens, self.metrics.study_closes):
                with contextlib.suppress(KeyError):
                    g.remove(sid)

    def _rebuild_all(self) -> None:
        """Reset every assigned partition and replay it from the beginning (then screen everyone in it)."""
        from kafka import TopicPartition

        for p, part in self._parts.items():
            tp = TopicPartition(self.settings.events_topic, p)
            begin = self._beginning(tp)
            target = max(part.offset, part.replay_until or 0)
            part.state = LiveState()
            part.pending = []
            part.dirty = False
            part.offset = begin
            part.replay_until = target if target > begin else None
            self._consumer.seek(tp, begin)
            self._seeks[p] = self._seeks.get(p, 0) + 1
            self._queue = deque(q for q in self._queue if q[0] != p)
            log.info("partition_rebuild", partition=p, from_offset=begin, until=target)

    # --- partitions -----------------------------------------------------------------------------------------
    def _snapshot_dir(self, partition: int) -> Path:
        return Path(self.settings.state_dir) / f"{self.settings.events_topic}-{partition}"

    def _beginning(self, tp: Any) -> int:
        try:
            return int(self._consumer.beginning_offsets([tp])[tp])
        except Exception:
            return 0

    def _on_assigned(self, assigned: Any) -> None:
        self.settle()
        t0 = time.perf_counter()
        for tp in assigned:
            if tp.partition in self._parts:
                continue
            self._init_partition(tp)
        self._update_gauges()
        log.info(
            "partitions_assigned",
            partitions=sorted(tp.partition for tp in assigned),
            ms=round((time.perf_counter() - t0) * 1000, 1),
        )

    def _init_partition(self, tp: Any) -> None:
        begin = self._beginning(tp)
        committed = None
        with contextlib.suppress(Exception):
            committed = self._consumer.committed(tp)
        snap = load_snapshot_parts(self._snapshot_dir(tp.partition))
        state, start, source = LiveState(), begin, "replay"
        if snap is not None:
            s_parts, s_offset, meta = snap
            # Snapshots are taken after the commit, so a usable one is never ahead of the group's committed
            # offset; one that is (or a group with no offsets) belongs to another incarnation of the topic or
            # group, and replaying is the safe answer. (Log-end offsets are not used: tansu reports them wrong.)
            usable = committed is not None and begin <= s_offset <= committed
            if meta.get("rules") == self._rules_fingerprint and usable:
                state, start, source = LiveState.from_parts(s_parts), s_offset, "snapshot"
        replay_until = committed if committed is not None and committed > start else None
        self._parts[tp.partition] = _Partition(state=state, offset=start, replay_until=replay_until)
        self._consumer.seek(tp, start)
        self._seeks[tp.partition] = self._seeks.get(tp.partition, 0) + 1
        log.info(
            "partition_restored",
            partition=tp.partition,
            source=source,
            offset=start,
            committed=committed,
            patients=state.patient_count,
        )

    def _on_revoked(self, revoked: Any) -> None:
        self.settle()  # the batch in flight finishes and commits before its partitions go
        parts = [tp.partition for tp in revoked if tp.partition in self._parts]
        with contextlib.suppress(Exception):
            self._flush_matches()
            self._commit(parts)
        for p in parts:
            with contextlib.suppress(Exception):
                self._snapshot(p)
            self._parts.pop(p, None)
        self._queue = deque(q for q in self._queue if q[0] not in parts)
        for p in parts:
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(self.settings.events_topic, str(p))
        log.info("partitions_revoked", partitions=sorted(parts))

    def _recover(self) -> None:
        """After a failed batch: forget the uncommitted work and restart every partition from its snapshot."""
        from kafka import TopicPartition

        parts = list(self._parts)
        self._parts.clear()
        self._queue.clear()
        for p in parts:
            self._init_partition(TopicPartition(self.settings.events_topic, p))

    def _commit(self, partitions: Sequence[int]) -> None:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        offsets = {
            TopicPartition(self.settings.events_topic, p): OffsetAndMetadata(self._parts[p].offset, "", -1)
            for p in partitions
            if p in self._parts and not self._parts[p].replaying
        }
        if not offsets:
            return
        from kafka.errors import KafkaError

        try:
            self._consumer.commit(offsets=offsets)
        except KafkaError as exc:
            # Typically a rebalance in progress: the partitions' next owner repeats the uncommitted records and
            # the store's uniqueness absorbs the repetition. Nothing is lost by carrying on.
            log.warning(
                "commit_failed", partitions=sorted(tp.partition for tp in offsets), error_type=type(exc).__name__
            )

    def _snapshot(self, partition: int, wait: bool = True) -> None:
        """Snapshot one partition's state at its current (committed) offset.

        With ``wait`` the snapshot is written now (revocation, close). Otherwise it is written by the snapshot
        thread from an immutable view of the state, so the batches go on meanwhile (Parquet writing releases
        the GIL); a partition whose previous background snapshot is still being written is skipped this time.
        """
        part = self._parts.get(partition)
        if part is None or part.replaying or any(q[0] == partition for q in self._queue):
            return  # a snapshot must not hide screening still owed to its patients
        pending = self._snapshot_jobs.get(partition)
        if pending is not None and not pending.done():
            if not wait:
                return
            with contextlib.suppress(Exception):
                pending.result()  # one writer per folder: the pointer file's name is per process
        parts = part.state.parts()
        directory, offset, meta = self._snapshot_dir(partition), part.offset, {"rules": self._rules_fingerprint}
        part.dirty = False

        def write() -> None:
            t0 = time.perf_counter()
            try:
                save_snapshot(parts, directory, offset, meta)
            except Exception as exc:
                part.dirty = True
                log.warning("snapshot_failed", partition=partition, offset=offset, error_type=type(exc).__name__)
                raise
            log.info(
                "snapshot",
                partition=partition,
                offset=offset,
                ms=round((time.perf_counter() - t0) * 1000, 1),
                background=not wait,
            )

        if wait:
            write()
            return
        if self._snapshot_pool is None:
            self._snapshot_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="screener-snapshot")
        self._snapshot_jobs[partition] = self._snapshot_pool.submit(write)

    def _wait_snapshots(self) -> None:
        for job in list(self._snapshot_jobs.values()):
            with contextlib.suppress(Exception):
                job.result()
        self._snapshot_jobs.clear()

    def _update_gauges(self) -> None:
        self.metrics.patients_in_state.set(sum(p.state.patient_count for p in self._parts.values()))
        self.metrics.facts_in_state.set(sum(p.state.fact_count for p in self._parts.values()))
        from kafka.structs import TopicPartition

        for p, part in self._parts.items():
            tp = TopicPartition(self.settings.events_topic, p)
            high = None
            with contextlib.suppress(Exception):
                high = self._consumer.highwater(tp)
            if high is not None:
                self.metrics.consumer_lag.labels(self.settings.events_topic, str(p)).set(max(0, high - part.offset))

    # --- introspection for tests and the demo ---------------------------------------------------------------
    @property
    def assigned_partitions(self) -> list[int]:
        return sorted(self._parts)

    @property
    def caught_up(self) -> bool:
        return bool(self._parts) and not any(p.replaying for p in self._parts.values())

    def state(self) -> PatientState:
        """All assigned partitions' state concatenated (a copy-free view for tests)."""
        self.settle()
        if not self._parts:
            return PatientState()
        return _concat_states([p.state.to_state() for p in self._parts.values()])


def _seconds(s: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=s)


def _start_of(d: Any) -> datetime:
    if isinstance(d, datetime):
        return d.astimezone(UTC)
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _end_of(d: Any) -> datetime:
    from datetime import timedelta

    if isinstance(d, datetime):
        return d.astimezone(UTC)
    return datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(days=1)
