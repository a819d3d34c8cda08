"""One micro-batch: decoded on the consumer's thread (:meth:`BatchRole._prepare`), applied, screened and recorded
on the batch thread (:meth:`BatchRole._execute`), committed back on the consumer's thread
(:meth:`BatchRole._finish`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime

import polars as pl

from screener.engine import rescreen as _rescreen
from screener.engine._affects import AffectsIndex
from screener.engine._base import EngineBase, _Batch, _concat_states, _owners, log
from screener.engine.base import Partition, Record
from screener.ingest import decode_batch
from screener.state import TS, Changes, FactFilter

_NO_IDS = pl.Series("patient_id", [], dtype=pl.String)


class BatchRole(EngineBase):
    """The three stages of a micro-batch."""

    # --- the batch ------------------------------------------------------------------------------------------
    def _prepare(self, records: Mapping[Partition, Sequence[Record]]) -> _Batch | None:
        """On the consumer's thread: validate and decode the polled records (one decode for the whole batch, cut
        back by partition), dead-letter the bad ones. Rejects carry parse_event's own error."""
        t0 = time.perf_counter()
        live: list[Record] = []
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
            rec = live[i]
            seen = self._parts[rec.partition].replay_until
            if seen is not None and rec.offset < seen:
                # processed before (a replay after a lost store, or a new owner catching up to the group's
                # offset): its dead letter was written then, so a replay never repeats it
                self.metrics.dead_letters_replayed.inc()
                continue
            self._dead_letter(rec, exc)
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
        if self.screen_affected_only:
            # Only the affected-only plan reads the index: building it (a screen of a blank patient against every
            # study) held the first batch ~0.3-1.3 s, and learning each batch's keys cost ~2% of the batch.
            index = self._affects_index()
            index.learn(batch.keys.select(index.keys or []))
        live: list[tuple[int, Changes]] = []
        replayed: list[tuple[int, pl.Series]] = []
        for p, decoded in batch.by_part.items():
            part = self._parts.get(p)
            if part is None:
                continue
            changes = (
                part.state.apply_changes(*decoded.frames, keep=self._keep, report=self.screen_affected_only)
                if decoded.accepted
                else None
            )
            if changes is not None:
                part.dirty = True
            part.offset = batch.offsets[p][1]
            if part.replaying:
                part.pending.append(changes.touched if changes is not None else _NO_IDS)
                assert part.replay_until is not None
                if part.offset >= part.replay_until:
                    everyone = pl.concat(part.pending).unique()
                    part.replay_until, part.pending = None, []
                    log.info("replay_complete", partition=p, offset=part.offset, patients=everyone.len())
                    if everyone.len() > _rescreen.RESCREEN_CHUNK:
                        self._enqueue(p, everyone, "replay")
                    elif everyone.len():
                        replayed.append((p, everyone))
            elif changes is not None and changes.touched.len():
                live.append((p, changes))
        t_apply = time.perf_counter()
        screens = self._plan(live, now)
        if replayed:
            screens.append((pl.concat([_owners(ids, p) for p, ids in replayed]), None))
        if screens:
            event_times = (
                batch.event_stamps.group_by("patient_id")
                .agg(pl.col("_ts").max())
                .select(
                    "patient_id",
                    pl.from_epoch("_ts", time_unit="ms").dt.replace_time_zone("UTC").cast(TS).alias("event_time"),
                )
            )
            batch.new = 0
            for owners, only in screens:
                subs = [
                    self._parts[p].state.select(owners.filter(pl.col("partition") == p)["patient_id"])
                    for p in owners["partition"].unique().sort().to_list()
                ]
                batch.new += self._screen_and_record(
                    _concat_states(subs), now, "event", event_times, only=only, owners=owners
                )
        t_screen = time.perf_counter()
        self._flush_matches()
        for p, decoded in batch.by_part.items():
            # Screened and recorded: the batch may now go to the history store (a crash before this point
            # leaves it to be read again from the topic).
            part = self._parts.get(p)
            if part is not None:
                self._keep_frames(part, decoded.frames if decoded.accepted else None, batch.offsets[p][1])
        batch.apply_s, batch.screen_s, batch.flush_s = t_apply - t0, t_screen - t_apply, time.perf_counter() - t_screen

    _affects: AffectsIndex | None = None
    #: Screen a touched patient only against the studies its changes can affect (:mod:`screener.engine._affects`);
    #: False screens every touched patient against every open study (the reference the tests compare with). Off by
    #: default: on a quiet host (`python -m bench.engine_throughput --events 200000 --batch 20000`, 50 studies) the
    #: grouped screens cost more than one screen of everything (screen stage 10.4 s against 6.6 s: each new set of
    #: studies is a screen call and a feature plan of its own), so the index is opt-in until that is solved.
    screen_affected_only: bool = False

    def _plan(self, live: list[tuple[int, Changes]], now: datetime) -> list[tuple[pl.DataFrame, frozenset[str] | None]]:
        """The screens of a batch, all partitions together: ``(owners, studies)`` with ``owners`` the patients'
        ``patient_id, partition`` and ``studies`` ``None`` for every open study."""
        if not live:
            return []
        owners = pl.concat([_owners(c.touched, p) for p, c in live])
        if not self.screen_affected_only:
            return [(owners, None)]
        changes = Changes(
            touched=owners["patient_id"],
            facts=pl.concat([c.facts for _, c in live], how="vertical"),
            persons=pl.concat([c.persons for _, c in live], how="vertical"),
            whole=pl.concat([c.whole for _, c in live]),
        )
        open_ids = [sid for sid, s in self.studies.items() if s.is_open(now)]
        index = self._affects_index()

        def facts_of(ids: pl.Series) -> pl.DataFrame:
            mine = ids.to_frame().join(owners, on="patient_id", how="inner")
            cols = ["patient_id", *(index.keys or [])]
            return pl.concat(
                [
                    self._parts[p].state.select(mine.filter(pl.col("partition") == p)["patient_id"]).facts.select(cols)
                    for p in mine["partition"].unique().to_list()
                ]
                or [pl.DataFrame(schema={c: pl.String for c in cols})]
            )

        return [
            (ids.to_frame().join(owners, on="patient_id", how="inner"), only)
            for ids, only in index.plan(changes, open_ids, facts_of)
        ]

    def _affects_index(self) -> AffectsIndex:
        """The code -> studies index of the loaded studies (built again when the study set is replaced)."""
        index = self._affects
        if index is None or index.source is not self.studies:
            index = self._affects = AffectsIndex(self.studies.values(), source=self.studies, screen=self._screen)
        return index

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
