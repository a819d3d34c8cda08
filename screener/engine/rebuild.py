"""Rule changes: every partition's new hot view is built from the history store while batches go on under the
old studies and view, then swapped in without holding the consumer for long.

1. :meth:`RebuildRole._start_rebuild` (consumer's thread, no I/O): a partition's new view starts from what the
   store holds (``saved_offset``; nothing yet: an empty view); the frames applied since then and not yet in the
   store (``unsaved``), and every batch applied from now on, are its *catch-up*. The loads run on the rebuild
   thread, each in the low-priority worker process (:class:`screener.engine.views.ViewLoader`), which also
   finds, in the same read, the stored patients that pass the changed studies' *gates*
   (:mod:`screener.engine._narrow`).
2. Catching up (:meth:`RebuildRole._catch_up`, consumer's thread, between batches): once loaded, the new views
   get their catch-up frames applied (a partition's frames concatenated, one apply), for about ``CATCH_UP_S``
   per step.
3. The swap (:meth:`RebuildRole._finish_rebuild`): when only the last batch is left to catch up, studies and
   views are swapped (O(partitions)) and everyone is queued for the added or changed studies only, screened in
   chunks between batches (:mod:`screener.engine.rescreen`). The patients queued are the gated ones (else the
   view's as loaded), those holding a known match for a changed study, and those the catch-up touched, so the
   new view is not compacted at the swap (a sort of the whole partition: at 200k patients, listing the four
   views stalled the consumer for 5.6 s) and the rest are ruled out unscreened (ineligible for the changed
   studies: at 1M patients 8% are queued, and the swap's sort of every patient id, 0.4 s, is gone).

Semantics: the view equals the store's history plus the catch-up (applying is idempotent per event id, so a
store that moved on meanwhile changes nothing); no event is lost (a partition whose view could not be built,
or that was assigned during the rebuild, is restored again under the new rules at the swap, from the store or
by replay); the matches store never alerts twice for a (study, patient) pair.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from screener.engine._base import EngineBase, log
from screener.engine._delta import add_delta, delta_applies
from screener.engine._narrow import Narrowing, safe_narrowing
from screener.engine.history import concat_frames
from screener.engine.matches import _default_screen
from screener.engine.views import ViewLoader, lower_priority, scratch_dir
from screener.history import StoreError
from screener.state import FactFilter, LiveState


@dataclass
class _View:
    """A partition's new hot view and the patients to screen against the changed studies once it is swapped in:
    ``ids`` (the view's as loaded) or, when known, only ``gated`` (those of them that pass the changed studies'
    gates, :mod:`screener.engine._narrow`), plus those the catch-up touched (``touched``)."""

    state: LiveState
    ids: list[pl.Series]
    gated: pl.Series | None = None
    touched: list[pl.Series] = field(default_factory=list)

    def to_screen(self, known: pl.Series) -> pl.Series:
        """The patients to screen, sorted (so each chunk reads one run of the partition's sorted frames);
        ``known``: those with a known match for a changed study (screened when the gates are used: their match
        may have to be closed)."""
        parts = [self.gated, known] if self.gated is not None else list(self.ids)
        parts += self.touched
        if not parts:
            return pl.Series("patient_id", [], dtype=pl.String)
        return pl.concat([p.rename("patient_id") for p in parts]).unique().sort()


@dataclass
class _Rebuild:
    """A rule change whose new hot views are being loaded from the store, then caught up."""

    future: Future[dict[int, _View | None]]
    studies: dict[str, Any]
    keep: FactFilter | None
    horizon: Any
    fingerprint: str
    changed: frozenset[str]
    removed: list[str]
    started: float
    #: The narrowing of the re-screen against ``changed`` (built on the rebuild thread; ``None``: screen whole).
    narrowing: Narrowing | None = None
    #: The loaded views (set on the consumer's thread once ``future`` is done).
    views: dict[int, _View | None] | None = None
    caught_up: int = field(default=0)


class RebuildRole(EngineBase):
    """Builds the new hot views of a rule change from the history store and swaps them in."""

    #: Load the views in a worker process at low priority (see :mod:`screener.engine.views`); ``False``: in the
    #: rebuild thread of this process (the store object itself is used: tests that hold its loads do this).
    rebuild_in_process = True
    #: Build a new view as the current one plus the facts only the new filter keeps, when the filters allow
    #: (:mod:`screener.engine._delta`); ``False``: always load it whole from the store.
    rebuild_by_delta = True
    #: The time after which a step stops catching up views (it does at least one partition).
    CATCH_UP_S = 0.1
    #: Narrow a rule change's re-screen to the patients and facts the changed studies can use
    #: (:mod:`screener.engine._narrow`); ``False``: screen every patient with the whole view (the reference).
    narrow_rescreens = True

    _rebuild_pool: ThreadPoolExecutor | None = None
    _view_loader: ViewLoader | None = None
    _matched: pl.DataFrame
    _narrowings: tuple[object, dict[frozenset[str], Narrowing | None]] | None

    def _loader_for_views(self) -> ViewLoader:
        store = self.history()
        loader = self._view_loader
        if loader is None or loader.store is not store:
            if loader is not None:
                loader.close()
            loader = self._view_loader = ViewLoader(store, scratch_dir(Path(self.settings.state_dir)))
        loader.process = self.rebuild_in_process
        return loader

    def _start_rebuild(
        self,
        studies: dict[str, Any],
        keep: FactFilter | None,
        horizon: Any,
        fingerprint: str,
        changed: Sequence[str],
        removed: list[str],
    ) -> None:
        """Note where each partition's new view starts and load the views on the rebuild thread. Batches go on
        under the current studies and view until :meth:`_finish_rebuild` swaps them."""
        self.settle()
        self._wait_snapshots()  # a history append in flight has taken frames the catch-up needs
        targets: dict[int, int | None] = {}
        # A copy of each current view (O(1): its frames are immutable; batches replace them, never change them)
        # to add the new filter's delta to, when the filters allow it (see screener.engine._delta).
        current: dict[int, LiveState] = {}
        old_keep = self._keep
        by_delta = self.rebuild_by_delta and delta_applies(old_keep, keep) and self._horizon is None
        for p, part in self._parts.items():
            with part.lock:
                part.catch_up = list(part.unsaved)
                targets[p] = part.saved_offset
            if by_delta and part.saved_offset is not None and not part.replaying:
                current[p] = copy.copy(part.state)
        loader = self._loader_for_views()
        now = self.clock.now()
        narrow_studies = [studies[sid] for sid in sorted(changed) if sid in studies]
        use_narrowing = self.narrow_rescreens and self._screen is _default_screen

        def load_all() -> dict[int, _View | None]:
            # This thread (its reading of the views) and the worker it starts (from its first import on) run at
            # low priority.
            lower_priority(thread=True)
            out: dict[int, _View | None] = {}
            if use_narrowing:
                rb.narrowing = safe_narrowing(narrow_studies, now)
            gates = rb.narrowing.gate_exprs() if rb.narrowing is not None else None
            for p, offset in targets.items():
                out[p] = view = self._load_view(loader, p, offset, current.get(p), old_keep, keep, gates)
                if view is not None and view.gated is None and gates is not None and offset is not None:
                    view.gated = self._gated(loader, p, gates)
            return out

        if self._rebuild_pool is None:
            self._rebuild_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="screener-rebuild")
        rb = self._rebuild = _Rebuild(
            future=Future(),
            studies=studies,
            keep=keep,
            horizon=horizon,
            fingerprint=fingerprint,
            changed=frozenset(changed),
            removed=removed,
            started=time.perf_counter(),
        )
        rb.future = self._rebuild_pool.submit(load_all)
        log.info(
            "rules_rebuild_started",
            partitions=sorted(targets),
            changed=sorted(changed),
            worker="process" if loader.process else "thread",
        )

    def _gated(self, loader: ViewLoader, partition: int, gates: list[list[pl.Expr]]) -> pl.Series | None:
        """On the rebuild thread: the partition's stored patients that pass the gates (``None``: unknown, every
        patient of the view is queued)."""
        try:
            gated = loader.load_gated(partition, gates)
        except (StoreError, ValueError) as exc:
            log.warning("rules_rebuild_gates_skipped", partition=partition, error=str(exc)[:200])
            return None
        if gated is not None:
            log.info("rules_rebuild_gated", partition=partition, patients=gated.len())
        return gated

    def _load_view(
        self,
        loader: ViewLoader,
        p: int,
        offset: int | None,
        current: LiveState | None,
        old_keep: FactFilter | None,
        keep: FactFilter | None,
        gates: list[list[pl.Expr]] | None = None,
    ) -> _View | None:
        """On the rebuild thread: the partition's new view from the store (``None``: it could not be built),
        with its gated patients when the delta's read found them too."""
        if offset is None:  # the store has nothing of it yet: everything applied is in the catch-up
            return _View(LiveState(), [])
        try:
            view, gated = self._delta_view(loader, p, offset, current, old_keep, keep, gates)
            got = None if view is not None else loader.load(p, keep)
        except StoreError as exc:
            log.warning("history_unreadable", partition=p, error=str(exc)[:200])
            return None
        if view is None:
            if got is None or got[1] < offset:
                return None
            view = _View(LiveState(got[0]), [got[0].persons["patient_id"]])
        if gated is not None:
            view.gated = gated
            log.info("rules_rebuild_gated", partition=p, patients=gated.len())
        return view

    def _delta_view(
        self,
        loader: ViewLoader,
        partition: int,
        offset: int,
        current: LiveState | None,
        old: FactFilter | None,
        keep: FactFilter | None,
        gates: list[list[pl.Expr]] | None = None,
    ) -> tuple[_View | None, pl.Series | None]:
        """On the rebuild thread: the partition's new view as ``current`` plus the stored facts only the new
        filter keeps, or ``None`` when it must be loaded whole (no copy; a filter that drops stored facts the
        current one keeps; the store behind ``offset``); and, with ``gates``, the stored patients that pass them
        (read with the delta; ``None``: not read)."""
        if current is None or old is None or keep is None:
            return None, None
        got = loader.load_delta_gated(partition, old, keep, gates)
        if got is None or got[1] < offset:
            return None, None
        delta, _, gated = got
        if delta is None:
            return None, gated
        add_delta(current, delta, keep)
        parts = current.parts()
        log.info("rules_rebuild_delta", partition=partition, facts=delta.height)
        return _View(current, [parts.persons["patient_id"], parts.tail_ids.rename("patient_id")]), gated

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

    def _catch_up(self, rb: _Rebuild, budget_s: float | None) -> bool:
        """Apply the catch-up frames to the loaded views, all of a partition's at once (one apply of their
        concatenation: a per-batch apply made a 60 s rebuild's 867 batches cost 43 s), partition after partition
        until ``budget_s`` has passed (``None``: every partition). Returns True when some are left. Each view is
        touched only here, on the consumer's thread."""
        assert rb.views is not None
        t0 = time.perf_counter()
        left = False
        for p, view in rb.views.items():
            part = self._parts.get(p)
            if view is None or part is None:
                continue
            if budget_s is not None and time.perf_counter() - t0 >= budget_s:
                left = True
                break
            with part.lock:
                if part.catch_up is None:
                    continue  # assigned again during the rebuild: restored at the swap
                frames, part.catch_up = part.catch_up, []
            if frames:
                view.touched.append(view.state.apply(*concat_frames(frames), keep=rb.keep))
                rb.caught_up += len(frames)
        return left

    def _finish_rebuild(self, wait: bool = False) -> bool:
        """On the consumer's thread: once the new views are loaded, catch them up (a little per call, unless
        ``wait``), then swap studies and views and queue everyone for the added or changed studies. Returns True
        once swapped."""
        rb = self._rebuild
        if rb is None or (not wait and not rb.future.done()):
            return False
        if rb.views is None:
            try:
                rb.views = rb.future.result()
            except Exception as exc:
                log.error("rules_rebuild_failed", error_type=type(exc).__name__, error=str(exc)[:300])
                rb.views = {}
            log.info("rules_rebuild_loaded", ms=round((time.perf_counter() - rb.started) * 1000, 1))
        if self._catch_up(rb, None if wait else self.CATCH_UP_S) and not wait:
            return False
        self.settle()
        self._catch_up(rb, None)  # the batch that was in flight
        t_swap = time.perf_counter()
        self._rebuild = None
        self.studies, self._keep, self._horizon, self._rules_fingerprint = (
            rb.studies,
            rb.keep,
            rb.horizon,
            rb.fingerprint,
        )
        if rb.narrowing is not None:
            self._narrowings = (rb.studies, {rb.changed: rb.narrowing})
        replay: list[int] = []
        now = self.clock.now()
        n_open = sum(1 for sid in rb.changed if sid in self.studies and self.studies[sid].is_open(now))
        for p, part in list(self._parts.items()):
            view = rb.views.get(p)
            with part.lock:
                catch_up, part.catch_up = part.catch_up, None
            if view is None or catch_up is None:
                replay.append(p)
                continue
            part.state = view.state
            part.dirty = True
            mine = (pl.col("partition") == p) & pl.col("study_id").is_in(list(rb.changed))
            ids = view.to_screen(self._matched.filter(mine)["patient_id"])
            self._enqueue(p, ids, "rules", only=rb.changed)
            if view.gated is not None:
                # The gates rule out the rest without a screen: counted as evaluated all the same.
                self.metrics.screens.labels("rules").inc(max(0, view.state.patient_count - ids.len()) * n_open)
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
        self.rule_swaps += 1
        self.metrics.rules_rebuild_duration.observe(elapsed)
        self._rescreen_t0, self._rescreen_new = time.perf_counter(), 0
        log.info(
            "rules_rebuilt",
            partitions=sorted(self._parts),
            replayed=sorted(replay),
            changed=sorted(rb.changed),
            caught_up_batches=rb.caught_up,
            swap_ms=round((time.perf_counter() - t_swap) * 1000, 1),
            ms=round(elapsed * 1000, 1),
        )
        return True

    def _close_rebuild(self) -> None:
        """Drop a rule change still loading (redone at the next start) and stop its threads and worker."""
        self._rebuild = None
        if self._rebuild_pool is not None:
            self._rebuild_pool.shutdown(wait=False, cancel_futures=True)
            self._rebuild_pool = None
        if self._view_loader is not None:
            self._view_loader.close()
            self._view_loader = None
