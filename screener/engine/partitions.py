"""Partition lifecycle: assignment (restore), revocation, recovery after a failed batch, commits, snapshots."""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections import deque
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from screener.engine._base import EngineBase, _concat_states, _Partition, log
from screener.engine.base import Partition, RebalanceListener
from screener.state import PatientState, save_snapshot


def _Listener(engine: PartitionsRole) -> RebalanceListener:
    """The engine's kafka-python ``ConsumerRebalanceListener`` (a subclass is required by kafka-python; built at
    call time, so kafka is imported only when used)."""
    from kafka import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python is untyped: its base is Any
        def on_partitions_revoked(self, revoked: Collection[Partition]) -> None:
            engine._on_revoked(revoked)

        def on_partitions_assigned(self, assigned: Collection[Partition]) -> None:
            engine._on_assigned(assigned)

    return Listener()


class PartitionsRole(EngineBase):
    """The assigned partitions: their state, offsets and snapshots."""

    # --- partitions -----------------------------------------------------------------------------------------
    def _snapshot_dir(self, partition: int) -> Path:
        return Path(self.settings.state_dir) / f"{self.settings.events_topic}-{partition}"

    def _beginning(self, tp: Partition) -> int:
        try:
            return int(self._consumer.beginning_offsets([tp])[tp])
        except Exception:
            return 0

    def _on_assigned(self, assigned: Collection[Partition]) -> None:
        self.settle()
        t0 = time.perf_counter()
        for tp in assigned:
            if tp.partition in self._parts:
                continue
            self._init_partition(tp)
        self._update_gauges()
        _freeze_survivors()
        log.info(
            "partitions_assigned",
            partitions=sorted(tp.partition for tp in assigned),
            ms=round((time.perf_counter() - t0) * 1000, 1),
        )

    def _init_partition(self, tp: Partition) -> None:
        """Take a partition on: its state from the local snapshot, the history store or a replay
        (:meth:`HistoryRole._restore`), then read on from there. Records below the group's committed offset were
        screened before: they are only applied (``replay_until``) and the patients they touch screened once at
        the end."""
        t0 = time.perf_counter()
        begin = self._beginning(tp)
        committed = None
        with contextlib.suppress(Exception):
            committed = self._consumer.committed(tp)
        state, start, source = self._restore(tp.partition, begin, committed)
        replay_until = committed if committed is not None and committed > start else None
        part = _Partition(state=state, offset=start, replay_until=replay_until)
        part.saved_offset = start if source != "replay" else None
        self._parts[tp.partition] = part
        self._forget_pairs(tp.partition)
        if source != "replay":
            self._load_pairs(tp.partition)
            if committed is None or committed < start:
                # The store holds records this group never screened (a backfill, or a crash between a batch's
                # history append and its commit): everyone in the partition is screened once.
                self._enqueue(tp.partition, state.patient_ids(), "restore")
        self._consumer.seek(tp, start)
        self._seeks[tp.partition] = self._seeks.get(tp.partition, 0) + 1
        self.metrics.partition_restores.labels(source).inc()
        log.info(
            "partition_restored",
            partition=tp.partition,
            source=source,
            offset=start,
            committed=committed,
            patients=state.patient_count,
            ms=round((time.perf_counter() - t0) * 1000, 1),
        )

    def _on_revoked(self, revoked: Collection[Partition]) -> None:
        self.settle()  # the batch in flight finishes and commits before its partitions go
        parts = [tp.partition for tp in revoked if tp.partition in self._parts]
        with contextlib.suppress(Exception):
            self._flush_matches()
            self._commit(parts)
        for p in parts:
            with contextlib.suppress(Exception):
                self._snapshot(p)
            self._parts.pop(p, None)
            self._forget_pairs(p)
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
            self._consumer.commit(offsets=offsets, timeout_ms=int(self.settings.health_broker_timeout_s * 1000))
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
        if part is None:
            return
        history = self._history_job(partition)  # the store first: a snapshot is used only at the store's offset
        if history is not None:
            if wait:
                self._wait_snapshots()
                history()
            else:
                self._snapshot_pool_().submit(history)
        if part.replaying or any(q[0] == partition for q in self._queue):
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
        self._snapshot_jobs[partition] = self._snapshot_pool_().submit(write)

    def _snapshot_pool_(self) -> ThreadPoolExecutor:
        """The snapshot thread: history appends and snapshots of a partition run on it in the order submitted."""
        if self._snapshot_pool is None:
            self._snapshot_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="screener-snapshot")
        return self._snapshot_pool

    def _wait_snapshots(self) -> None:
        """Wait until the snapshot thread has done everything submitted so far (history appends included)."""
        for job in list(self._snapshot_jobs.values()):
            with contextlib.suppress(Exception):
                job.result()
        if self._snapshot_pool is not None:
            self._snapshot_pool.submit(lambda: None).result()  # one worker, first in first out
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
            # Unknown (NaN) rather than 0 when the log end is not known or the broker is out of reach.
            lag = math.nan if high is None or not self._health_state[0] else max(0, high - part.offset)
            self.metrics.consumer_lag.labels(self.settings.events_topic, str(p)).set(lag)

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


_frozen = False


def _freeze_survivors() -> None:
    """Once per process, at the first assignment: collect, then move every object alive (modules, compiled rules,
    clients, what the restore built) out of the collector's reach (:func:`gc.freeze`). They live as long as the
    process, and each full collection scanned them all again on the batch thread (~100 ms each with 1M patients in
    state, under load). Once only, so objects of engines started later (tests) stay collectable."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()
