"""Full and retrospective re-screens, worked off in chunks between micro-batches."""

from __future__ import annotations

import time
from collections import deque

import polars as pl

from screener.engine._base import EngineBase, _owners, log
from screener.engine._narrow import Narrowing, safe_narrowing
from screener.errors import ScreenerError
from screener.state import PatientState

#: Patients per chunk in a full re-screen: bounds the patient x study result frame and the time between two
#: polls of the consumer (a full re-screen is worked off a chunk per loop iteration, between micro-batches).
RESCREEN_CHUNK = 50_000
#: The smallest chunk the adaptive sizing (:meth:`RescreenRole._chunk_limit`) goes down to.
MIN_CHUNK = 2_000
#: ... in patient x study pairs (2,000 patients x the 17 sample studies): a rule change's re-screen of one study
#: in chunks of 2,000 patients spent its time on each chunk's fixed cost (at 1M patients: 500 chunks, each
#: behind a live batch, over 5 minutes).
MIN_PAIRS = 34_000
#: The least time a chunk is sized for: smaller chunks pay their fixed cost (selecting, the store round trip) too
#: often (200k patients at 500 a chunk: 120 s instead of about 25 s); larger ones hold a live batch that long
#: (a rule change's re-screen runs a chunk per step, between batches).
MIN_CHUNK_S = 0.2
#: The largest chunk of a re-screen against a few studies that is narrowed (:mod:`screener.engine._narrow`): most
#: of its patients are skipped unscreened and it is screened with those studies' facts only, so a chunk of this
#: many costs about what 50,000 whole ones did.
NARROW_CHUNK = 250_000


class RescreenRole(EngineBase):
    """The queue of patients owed a screen, worked off between micro-batches."""

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

    def _enqueue(self, partition: int, ids: pl.Series, trigger: str, only: frozenset[str] | None = None) -> None:
        """Queue ``ids`` of ``partition`` for screening against the open studies (``only`` those, when given)."""
        size = NARROW_CHUNK if only is not None else RESCREEN_CHUNK
        for start in range(0, ids.len(), size):
            self._queue.append((partition, ids.slice(start, size), trigger, only))

    _screen_rate: float | None = None

    def _chunk_limit(self, n_studies: int, narrowed: bool = False) -> int:
        """Patients per chunk: what the measured screening rate does in about ``batch_max_ms`` (at least
        ``MIN_CHUNK_S``; at least ``MIN_CHUNK`` patients and ``MIN_PAIRS`` pairs, at most ``RESCREEN_CHUNK``); that
        least until a rate is known (a first chunk of ``RESCREEN_CHUNK`` held a live batch for 2 s at 200k
        patients on a loaded host, before chunks of consecutive patients were selected as slices). A
        ``narrowed`` chunk (:meth:`_narrowing`) has a rate of its own, at least ``MIN_CHUNK`` patients and at most
        ``NARROW_CHUNK``: a rule change queues only the patients its gates let through, each of which costs a
        screen, so ``MIN_PAIRS`` of them would hold a live batch for seconds."""
        most = NARROW_CHUNK if narrowed else RESCREEN_CHUNK
        least = MIN_CHUNK if narrowed else min(most, max(MIN_CHUNK, MIN_PAIRS // max(1, n_studies)))
        rate = self._narrow_rate if narrowed else self._screen_rate
        if rate is None:
            return least
        target = max(MIN_CHUNK_S, self.settings.batch_max_ms / 1000)
        return max(least, min(most, int(rate * target / n_studies)))

    _narrow_rate: float | None = None

    def _learn_rate(self, pairs: int, seconds: float, narrowed: bool = False) -> None:
        """Patient x study evaluations per second, smoothed over chunks (chunks too small to time are ignored);
        ``narrowed`` chunks (most patients skipped) have a rate of their own."""
        if pairs < MIN_CHUNK or seconds <= 0:
            return
        rate = pairs / seconds
        old = self._narrow_rate if narrowed else self._screen_rate
        new = rate if old is None else 0.7 * old + 0.3 * rate
        if narrowed:
            self._narrow_rate = new
        else:
            self._screen_rate = new

    _narrowings: tuple[object, dict[frozenset[str], Narrowing | None]] | None = None
    _matched: pl.DataFrame
    #: See :attr:`screener.engine.rebuild.RebuildRole.narrow_rescreens`.
    narrow_rescreens: bool

    def _narrowing(self, only: frozenset[str] | None) -> Narrowing | None:
        """The narrowing of a re-screen against ``only`` (:mod:`screener.engine._narrow`), built once per rules
        version (a rule change builds it on the rebuild thread); ``None``: screen the chunk whole (every open
        study, or a screen function that is not the rules' own: a test double need not honour the studies'
        fact filters)."""
        from screener.engine.matches import _default_screen

        if only is None or not self.narrow_rescreens or self._screen is not _default_screen:
            return None
        if self._narrowings is None or self._narrowings[0] is not self.studies:
            self._narrowings = (self.studies, {})
        cache = self._narrowings[1]
        if only not in cache:
            cache[only] = safe_narrowing([s for sid, s in self.studies.items() if sid in only], self.clock.now())
        return cache[only]

    def _chunk_state(self, partition: int, ids: pl.Series, only: frozenset[str] | None) -> tuple[PatientState, bool]:
        """The state a chunk is screened with, and whether it was narrowed."""
        part = self._parts[partition]
        narrow = self._narrowing(only)
        if narrow is None:
            return part.state.select(ids), False
        known = self._matched.filter(
            (pl.col("partition") == partition) & pl.col("study_id").is_in(list(narrow.studies))
        )["patient_id"]
        ids = pl.Series("patient_id", ids, dtype=pl.String).drop_nulls().unique().sort()
        narrowed = narrow.select(part.state.parts(), ids, known)
        return (narrowed if narrowed is not None else narrow.apply(part.state.select(ids), known)), True

    def _drain(self, budget_s: float | None) -> int:
        """Screen queued chunks until the queue is empty or ``budget_s`` has passed (at least one chunk).
        A chunk whose screening fails goes back to the front of the queue."""
        t0 = time.perf_counter()
        new = 0
        while self._queue:
            p, ids, trigger, only = self._queue.popleft()
            part = self._parts.get(p)
            if part is None or part.replaying:
                continue
            n_studies = len(only) if only is not None else max(1, len(self.studies))
            limit = self._chunk_limit(n_studies, narrowed=self._narrowing(only) is not None)
            if ids.len() > limit:
                # Keep each chunk near one batch's time, so live batches never wait long behind a re-screen.
                self._queue.appendleft((p, ids.slice(limit), trigger, only))
                ids = ids.slice(0, limit)
            started = time.perf_counter()
            try:
                state, narrowed = self._chunk_state(p, ids, only)
                new += self._screen_and_record(state, self.clock.now(), trigger, only=only, owners=_owners(ids, p))
            except ScreenerError:
                self._queue.appendleft((p, ids, trigger, only))
                raise
            if narrowed and ids.len() > state.persons.height:
                # Decided without a screen (ineligible for every study): counted as evaluated all the same.
                now = self.clock.now()
                n_open = sum(1 for sid in only or () if sid in self.studies and self.studies[sid].is_open(now))
                self.metrics.screens.labels(trigger).inc((ids.len() - state.persons.height) * n_open)
            self._learn_rate(ids.len() * n_studies, time.perf_counter() - started, narrowed)
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
