"""The engine's side of the history store: what it writes there and how a partition is restored from it.

Writing: every decoded batch a partition applies (unpruned: the store keeps every fact) is kept in memory until
the next snapshot time, then appended as one segment at the partition's offset, always *after* the commit (so the
store never runs ahead of what was screened and recorded) and on the snapshot thread. A partition compacts once it
has ``history_compact_segments`` segments. A failed append keeps the frames for the next one.

Restoring (:meth:`HistoryRole._restore`): the local snapshot when it is at the store's offset and was taken under
the same rules; else the store's view pruned with the current rules (a lazy scan, the filter pushed down); else,
when the store has nothing for the partition or it is damaged, a replay from the topic's beginning (logged,
counted in ``screener_history_replays_total{reason}``), which also writes the store again.

Rule changes build their new views from the store too: see :mod:`screener.engine.rebuild`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import polars as pl

from screener.engine._base import EngineBase, Frames, _Partition, log
from screener.history import HistoryStore, SnapshotError, StoreError, load_snapshot_parts, open_store
from screener.state import LiveState


def concat_frames(frames: Sequence[Frames]) -> Frames:
    """Several batches' frames as one, ``seq`` shifted so it keeps increasing across them."""
    if len(frames) == 1:
        return frames[0]
    out: list[list[pl.DataFrame]] = [[], [], []]
    shift = 0
    for batch in frames:
        top = max((int(f["seq"].max()) for f in batch if f.height), default=-1)  # type: ignore[arg-type]  # polars types Series.max() as any scalar: seq is an integer column
        for i, f in enumerate(batch):
            out[i].append(f.with_columns(pl.col("seq") + shift))
        shift += top + 1
    upd, facts, control = (pl.concat(parts, how="vertical") for parts in out)
    return upd, facts, control


class HistoryRole(EngineBase):
    """Writes the history store and restores partitions from it."""

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
        if held is None and committed is None:
            # A partition this group never processed and the store never saw: reading it from the start is
            # the normal first run, not a replay to count.
            log.info("history_empty", partition=partition, offset=begin)
            return LiveState(), begin, "replay"
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
