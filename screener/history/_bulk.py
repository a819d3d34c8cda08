"""A backfill's bulk load: the decoded frames of every chunk, per partition, held in memory up to a budget and
spilled to local Arrow IPC files beyond it, then written once as each partition's compacted base.

The result is exactly what appending one segment per chunk and compacting gives (the store's general path,
:meth:`HistoryStore.append` + :meth:`HistoryStore.compact`, which folds with :func:`screener.state.apply_frames`),
without writing, re-reading and folding segments:

* a partition whose frames are *pure appends* (no retraction, correction or merge among them) and whose store
  partition is empty: the facts are the chunks' facts in order, the last copy of each ``event_id`` kept (what
  ``apply_frames`` does to new facts over an empty state), sorted by patient (stable: a patient bucket at a time,
  the buckets end to end), read back from the spill files (memory: that partition's facts) and written as the
  base's Parquet file; the persons are ``apply_frames`` of the person updates and flags alone over an empty state
  (each fact-only patient stands in as one row), so demographics fold by the engine's rules;
* any other partition (a retraction, a merge, or history already in the store) goes the general way: one
  segment of all its frames, then :meth:`HistoryStore.compact` (memory: that partition's frames).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

from screener.history._frames import CONTROL_SCHEMA, conform, sort_by_patient
from screener.history._frames import fact_rows_schema as _fact_rows_schema
from screener.history._frames import upd_schema as _upd_schema
from screener.history.store import HistoryStore, StoreError
from screener.state import RETRACTED_SCHEMA, PatientState, apply_frames

__all__ = ["DEFAULT_MEMORY_BYTES", "BulkLoad", "ahead_of"]

_FOLDING_OPS = ("retract", "merge")
#: Fact columns kept however empty (what orders and identifies a fact, and the general path's ``seq``).
_KEPT = frozenset({"seq", "patient_id", "event_id", "kind", "occurred_at"})
#: Facts a bulk load holds in memory before it spills to local files (Polars' size estimate).
DEFAULT_MEMORY_BYTES = 1 << 30


def ahead_of(store: HistoryStore, partition: int, doc: dict[str, object] | None, offset: int) -> None:
    """Refuse a backfill at ``offset`` into a partition the store already holds past it (an engine has written
    live events there): its events would be ignored as a replay, so say so instead of dropping them.

    :raises StoreError: naming the partition and both offsets.
    """
    held = -1 if doc is None else int(str(doc["offset"]))
    if held > offset:
        raise StoreError(
            f"the store is at offset {held}, past the backfill's start {offset}: start the backfill with the broker "
            "reachable (it starts at the topic's end) or into an empty store",
            url=store.url,
            partition=partition,
        )


class BulkLoad:
    """Collects a backfill's decoded frames per partition (:meth:`add`), then writes them (:meth:`finish`).

    Facts are held in memory up to ``memory_bytes`` (Polars' estimate) and spilled beyond it, so memory stays
    bounded by that plus one chunk while collecting, and ``workers`` partitions while writing (that many are
    written at once, on as many threads). Use as a context manager:
    the spill folder (under ``spill_dir``, default the system's temporary folder) is removed on exit, whether
    :meth:`finish` ran or not.
    """

    def __init__(
        self,
        store: HistoryStore,
        start_offsets: Mapping[int, int],
        spill_dir: Path | None = None,
        *,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        workers: int = 1,
    ) -> None:
        self._store = store
        self._starts = dict(start_offsets)
        self._dir = Path(tempfile.mkdtemp(prefix="screener-backfill-", dir=spill_dir))
        self._budget = memory_bytes
        self._workers = max(1, workers)
        self._files: dict[int, list[tuple[Path | pl.DataFrame, list[tuple[int, int, int]]]]] = {}
        self._upd: dict[int, list[pl.DataFrame]] = {}
        self._control: dict[int, list[pl.DataFrame]] = {}
        self._folds: set[int] = set()
        self._hashes: dict[int, list[pl.Series]] = {}
        self._shift: dict[int, int] = {}

    def __enter__(self) -> BulkLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def add(self, partition: int, upd: pl.DataFrame, facts: Mapping[int, pl.DataFrame], control: pl.DataFrame) -> None:
        """One chunk's frames for ``partition`` (``seq`` counting from 0 in the chunk; shifted here so it keeps
        increasing across chunks), its facts split by patient bucket: every patient id of bucket ``b`` sorts before
        every id of a later bucket (nulls in the first), the same buckets for every chunk (each keeps its rows in
        order). The facts stay in memory within the budget, else go to a spill file (one per chunk, the buckets
        one after another); person updates and control rows (small) stay."""
        shift = self._shift.get(partition, 0)
        pieces = [(b, f) for b, f in sorted(facts.items()) if f.height]
        top = max((int(x["seq"].max()) for x in (upd, control, *(f for _, f in pieces)) if x.height), default=-1)  # type: ignore[arg-type]  # polars types Series.max() as any scalar: seq is an integer column
        self._shift[partition] = shift + top + 1
        if pieces:
            rows = conform(pl.concat([f for _, f in pieces]).with_columns(pl.col("seq") + shift), _fact_rows_schema())
            spans, start = [], 0
            for b, f in pieces:
                spans.append((b, start, f.height))
                start += f.height
            size = int(rows.estimated_size())
            held: Path | pl.DataFrame = rows
            if self._budget >= size:
                self._budget -= size
            else:
                held = self._dir / f"p{partition}-{len(self._files.get(partition, ())):06d}.arrow"
                rows.write_ipc(held)
            self._files.setdefault(partition, []).append((held, spans))
            # the event ids' hashes, for finish's test for copies: hashed while the chunk is fresh in the caches
            # (hashing them at the end, scattered over all the chunks' buffers, cost ~3x the CPU)
            self._hashes.setdefault(partition, []).append(rows["event_id"].hash())
        if upd.height:
            self._upd.setdefault(partition, []).append(conform(upd.with_columns(pl.col("seq") + shift), _upd_schema()))
        if control.height:
            rows = conform(control.with_columns(pl.col("seq") + shift), CONTROL_SCHEMA)
            self._control.setdefault(partition, []).append(rows)
            if rows["op"].is_in(_FOLDING_OPS).any():
                self._folds.add(partition)

    def partitions(self) -> list[int]:
        """The partitions that received something."""
        return sorted({*self._files, *self._upd, *self._control})

    def finish(self) -> None:
        """Write every partition that received something, then set every known start offset (``mark``)."""
        with ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="backfill-write") as pool:
            list(pool.map(self._write, self.partitions()))
        for p, offset in self._starts.items():
            self._store.mark(p, offset)

    def _runs(self, p: int) -> list[pl.DataFrame]:
        """The partition's facts per bucket, in bucket order, each bucket's rows in order (read back from memory or
        the spill files)."""
        buckets: dict[int, list[pl.DataFrame]] = {}
        for held, spans in self._files.get(p, []):
            frame = pl.read_ipc(held) if isinstance(held, Path) else held
            for b, start, n in spans:
                buckets.setdefault(b, []).append(frame.slice(start, n))
        return [pl.concat(buckets[b]) for b in sorted(buckets)]

    def _write(self, p: int) -> None:
        offset = self._starts.get(p, 0)
        upd = pl.concat(self._upd.pop(p, [pl.DataFrame(schema=_upd_schema())]))
        control = pl.concat(self._control.pop(p, [pl.DataFrame(schema=CONTROL_SCHEMA)]))
        runs = self._runs(p)
        hashes = self._hashes.pop(p, [])
        files = [held for held, _ in self._files.pop(p, []) if isinstance(held, Path)]
        facts = pl.concat(runs) if runs else pl.DataFrame(schema=_fact_rows_schema())
        # columns null on every row (a source fills only some) are neither sorted nor written (the store's
        # readers insert them): each costs the sort's gather as much as a filled one
        # (kept out by building frames of the other columns: ``DataFrame.drop`` here cost a copy of the partition)
        nulls = {c for c in facts.columns if c not in _KEPT and facts[c].null_count() == facts.height}
        if nulls and facts.height:
            runs = [pl.DataFrame([s for s in run.iter_columns() if s.name not in nulls]) for run in runs]
            facts = pl.concat(runs)
        doc = self._store.manifest(p)
        ahead_of(self._store, p, doc, offset)
        empty = doc is None or (not doc.get("base") and not doc["segments"])
        if p in self._folds or not empty:
            # one event's rows share a seq and a patient (so a bucket): the stable sort gives the chunks' order back
            self._store.append(p, facts.sort("seq", maintain_order=True), upd, control, offset, same_offset=True)
            self._store.compact(p)
        else:
            # apply_frames over an empty state keeps the last copy of each event id, in order; as many distinct
            # hashes as rows proves there is no copy (cheaper than de-duplicating the strings). Each patient's
            # smallest seq (patient id and seq alone) stands in for the patient when the persons are folded.
            if (pl.concat(hashes).n_unique() if hashes else 0) != facts.height:
                facts = facts.sort("seq", maintain_order=True)
                stand_ins = facts.group_by("patient_id").agg(pl.col("seq").min())
                facts = sort_by_patient(facts.unique(subset=["event_id"], keep="last", maintain_order=True))
            else:
                # the buckets are in patient order, so sorting each (smaller, so cheaper per row than sorting the
                # whole) sorts the partition; seq increases along each bucket, so each patient's first row holds it
                facts = pl.concat([sort_by_patient(run) for run in runs]) if runs else facts
                stand_ins = facts.filter((pl.col("patient_id") != pl.col("patient_id").shift(1)).fill_null(True))
            del runs
            stand_ins = conform(stand_ins.select("seq", "patient_id"), _fact_rows_schema())
            folded, _ = apply_frames(PatientState(), upd, stand_ins, control)
            empty_tombs = pl.DataFrame(schema=RETRACTED_SCHEMA)
            # the base's writer leaves ``seq`` out (``facts.drop`` would copy the partition)
            self._store.write_base(p, folded.persons, facts, empty_tombs, offset, by_patient=True)
        for f in files:
            f.unlink(missing_ok=True)
