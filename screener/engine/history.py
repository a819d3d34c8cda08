"""The engine's side of the history store: what it writes there, how a partition is restored from it, and how a
rule change builds the new hot view from it in the background.

Writing: every decoded batch a partition applies (unpruned: the store keeps every fact) is kept in memory until
the next snapshot time, then appended as one segment at the partition's offset, always *after* the commit (so the
store never runs ahead of what was screened and recorded) and on the snapshot thread. A partition compacts once it
has ``history_compact_segments`` segments. A failed append keeps the frames for the next one.

Restoring (:meth:`HistoryRole._restore`): the local snapshot when it is at the store's offset and was taken under
the same rules; else the store's view pruned with the current rules (a lazy scan, the filter pushed down); else,
when the store has nothing for the partition or it is damaged, a replay from the topic's beginning (logged,
counted in ``screener_history_replays_total{reason}``), which also writes the store again.

Rule changes (:meth:`HistoryRole._start_rebuild`): the new view of every partition is loaded from the store on a
background thread while batches go on under the old studies and view; the frames applied meanwhile are kept and
applied to the new view at the swap (:meth:`HistoryRole._finish_rebuild`, on the consumer's thread), and then
everyone is screened against only the added or changed studies.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import polars as pl

from screener.engine._base import EngineBase, Frames, _Partition, log
from screener.history import HistoryStore, SnapshotError, StoreError, load_snapshot_parts, open_store
from screener.state import FactFilter, LiveState


@dataclass
class _Rebuild:
    """A rule change whose new hot views are being loaded from the store."""

    future: Future[dict[int, tuple[LiveState, int] | None]]
    studies: dict[str, Any]
    keep: FactFilter | None
    horizon: Any
    fingerprint: str
    changed: frozenset[str]
    removed: list[str]
    started: float


def concat_frames(frames: Sequence[Frames]) -> Frames:
    """Several batches' frames as one, ``seq`` shifted so it keeps increasing across them."""
    if len(frames) == 1:
        return frames[0]
    out: list[list[pl.DataFrame]] = [[], [], []]
    shift = 0
    for batch in frames:
        top = max((int(f["seq"].max()) for f in batch if f.height), default=-1)  # type: ignore[arg-type]
        for i, f in enumerate(batch):
            out[i].append(f.with_columns(pl.col("seq") + shift))
        shift += top + 1
    upd, facts, control = (pl.concat(parts, how="vertical") for parts in out)
    return upd, facts, control


class HistoryRole(EngineBase):
    """Writes the history store, restores partitions from it and rebuilds views from it on a rule change."""

    _rebuild_pool: ThreadPoolExecutor | None = None

    def history(self) -> HistoryStore:
        """The store (opened at first use from ``settings.history_url()`` unless one was given)."""
        if self._history is None:
            self._history = open_store(self.settings.history_url())
        store: HistoryStore = self._history
        return store

    # --- writing ----------------------------------------------------------------------------------------
    def _keep_frames(self, part: _Partition, frames: Frames | None, offset: int) -> None:
        """On the batch thread, once a batch's matches are recorded: keep its frames (``None``: only dead letters)
        for the store and a rebuild's catch-up, with the offset after it."""
        with part.lock:
            if frames is not None:
                part.unsaved.append(frames)
                if part.catch_up is not None:
                    part.catch_up.append(frames)
            part.unsaved_offset = offset

    def _history_job(self, partition: int) -> Any:
        """The job that appends the partition's unsaved frames to the store. It takes them when it runs (on the
        snapshot thread, or the caller's once that thread is idle), so jobs never overtake each other; a failed
        append puts them back for the next one."""
        part = self._parts.get(partition)
        if part is None:
            return None
        store, limit = self.history(), self.settings.history_compact_segments

        def job() -> None:
            with part.lock:
                taken, part.unsaved = part.unsaved, []
                offset = part.unsaved_offset
            if offset is None or (not taken and part.saved_offset is not None and offset <= part.saved_offset):
                return
            try:
                if taken:
                    upd, facts, control = concat_frames(taken)
                    store.append(partition, facts, upd, control, offset)
                else:
                    store.mark(partition, offset)
                part.saved_offset = offset
                self._save_pairs(partition)
                self.metrics.history_writes.labels("ok").inc()
                if store.segments(partition) >= limit:
                    store.compact(partition)
            except Exception as exc:
                with part.lock:
                    part.unsaved[:0] = taken  # tried again with the next append
                self.metrics.history_writes.labels("failed").inc()
                log.warning("history_append_failed", partition=partition, offset=offset, error=str(exc)[:200])

        return job

    # --- restoring --------------------------------------------------------------------------------------
    def _restore(self, partition: int, begin: int, committed: int | None) -> tuple[LiveState, int, str]:
        """The partition's hot state, the offset to read from and where it came from (``snapshot``, ``history``
        or ``replay``: then the offset is ``begin`` and the store is written again from the replay)."""
        store = self.history()
        try:
            held = store.offset(partition)
        except StoreError as exc:
            return self._replay_instead(partition, begin, "damaged", exc)
        if held is None or held < begin:
            return self._replay_instead(partition, begin, "missing" if held is None else "behind", None)
        try:
            snap = load_snapshot_parts(self._snapshot_dir(partition), strict=True)
        except SnapshotError as exc:
            self.metrics.snapshots_skipped.labels("unreadable").inc()
            log.warning("snapshot_skipped", partition=partition, reason=exc.reason)
            snap = None
        if snap is not None:
            parts, s_offset, meta = snap
            if s_offset == held and meta.get("rules") == self._rules_fingerprint:
                return LiveState.from_parts(parts), s_offset, "snapshot"
            reason = "rules changed" if s_offset == held else "behind the history store"
            self.metrics.snapshots_skipped.labels("stale").inc()
            log.info("snapshot_skipped", partition=partition, reason=reason, offset=s_offset, history=held)
        try:
            loaded = store.load(partition, keep=self._keep)
        except StoreError as exc:
            return self._replay_instead(partition, begin, "damaged", exc)
        if loaded is None:
            return self._replay_instead(partition, begin, "missing", None)
        state, offset = loaded
        return LiveState(state), offset, "history"

    def _replay_instead(
        self, partition: int, begin: int, reason: str, exc: Exception | None
    ) -> tuple[LiveState, int, str]:
        self.metrics.history_replays.labels(reason).inc()
        log.warning(
            "history_replay", partition=partition, reason=reason, error=str(exc)[:200] if exc else None, offset=begin
        )
        with contextlib.suppress(Exception):
            self.history().drop(partition)  # written again, whole, from the replay
        return LiveState(), begin, "replay"

    # --- rule changes -----------------------------------------------------------------------------------
    def _start_rebuild(
        self,
        studies: dict[str, Any],
        keep: FactFilter | None,
        horizon: Any,
        fingerprint: str,
        changed: Sequence[str],
        removed: list[str],
    ) -> None:
        """Flush every partition's history, then load the new views on the rebuild thread. Batches go on under
        the current studies and view until :meth:`_finish_rebuild` swaps them."""
        self.settle()
        self._wait_snapshots()
        for p in list(self._parts):
            job = self._history_job(p)
            if job is not None:
                job()
        store = self.history()
        targets = {p: part.offset for p, part in self._parts.items()}
        for p in targets:
            part = self._parts[p]
            with part.lock:
                # A partition whose store missed this flush is rebuilt by replay at the swap.
                part.catch_up = [] if part.saved_offset == part.offset and not part.unsaved else None
                targets[p] = part.offset if part.catch_up is not None else -1

        def load_all() -> dict[int, tuple[LiveState, int] | None]:
            out: dict[int, tuple[LiveState, int] | None] = {}
            for p, offset in targets.items():
                try:
                    got = store.load(p, keep=keep)
                except StoreError as exc:
                    log.warning("history_unreadable", partition=p, error=str(exc)[:200])
                    got = None
                # The store may have moved on meanwhile (periodic appends): the catch-up frames re-apply what it
                # already holds, which changes nothing (applying is idempotent per event id).
                out[p] = (LiveState(got[0]), got[1]) if got is not None and got[1] >= offset >= 0 else None
            return out

        if self._rebuild_pool is None:
            self._rebuild_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="screener-rebuild")
        self._rebuild = _Rebuild(
            future=self._rebuild_pool.submit(load_all),
            studies=studies,
            keep=keep,
            horizon=horizon,
            fingerprint=fingerprint,
            changed=frozenset(changed),
            removed=removed,
            started=time.perf_counter(),
        )
        log.info("rules_rebuild_started", partitions=sorted(targets), changed=sorted(changed))

    @property
    def rebuilding(self) -> bool:
        """True while a rule change's new views are being loaded (batches still use the previous rules)."""
        return self._rebuild is not None

    def finish_rebuild(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout`` seconds) for a rule change's new views and swap them in now. Returns True
        when a rule change was swapped in. For tests and the demo; :meth:`step` swaps by itself."""
        rb = self._rebuild
        if rb is None:
            return False
        try:
            rb.future.result(timeout=timeout)
        except Exception:
            if not rb.future.done():
                return False
        return self._finish_rebuild(wait=True)

    def _finish_rebuild(self, wait: bool = False) -> bool:
        """On the consumer's thread: when the new views are loaded, apply the frames that arrived meanwhile, swap
        studies and views, and queue everyone for the added or changed studies. Returns True once swapped."""
        rb = self._rebuild
        if rb is None or (not wait and not rb.future.done()):
            return False
        self.settle()
        self._rebuild = None
        try:
            views = rb.future.result()
        except Exception as exc:
            log.error("rules_rebuild_failed", error_type=type(exc).__name__, error=str(exc)[:300])
            views = {}
        self.studies, self._keep, self._horizon, self._rules_fingerprint = (
            rb.studies,
            rb.keep,
            rb.horizon,
            rb.fingerprint,
        )
        replay: list[int] = []
        for p, part in list(self._parts.items()):
            view = views.get(p)
            with part.lock:
                catch_up, part.catch_up = part.catch_up, None
            if view is None or catch_up is None:
                replay.append(p)
                continue
            live, _ = view
            for frames in catch_up:
                live.apply(*frames, keep=rb.keep)
            part.state = live
            part.dirty = True
            self._enqueue(p, live.patient_ids(), "rules", only=rb.changed)
        for p in replay:
            # Assigned during the rebuild, or its store view failed: restored again under the new rules (from the
            # store when it can be, else by replay); the records since are read again.
            from kafka import TopicPartition

            self._parts.pop(p, None)
            self._queue = deque(q for q in self._queue if q[0] != p)
            self._init_partition(TopicPartition(self.settings.events_topic, p))
            again = self._parts[p]
            if not again.replaying:  # a replay screens everyone it touched at its end; otherwise do it now
                self._enqueue(p, again.state.patient_ids(), "rules", only=rb.changed)
        elapsed = time.perf_counter() - rb.started
        self.metrics.rules_rebuild_duration.observe(elapsed)
        self._rescreen_t0, self._rescreen_new = time.perf_counter(), 0
        log.info(
            "rules_rebuilt",
            partitions=sorted(self._parts),
            replayed=sorted(replay),
            changed=sorted(rb.changed),
            ms=round(elapsed * 1000, 1),
        )
        return True
