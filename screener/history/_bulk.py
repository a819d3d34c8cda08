"""A backfill's bulk load: the decoded frames of every chunk, per partition, spilled to local Arrow IPC files as
they come (memory stays bounded by one chunk), then written once as each partition's compacted base.

The result is exactly what appending one segment per chunk and compacting gives (the store's general path,
:meth:`HistoryStore.append` + :meth:`HistoryStore.compact`, which folds with :func:`screener.state.apply_frames`),
without writing, re-reading and folding segments:

* a partition whose frames are *pure appends* (no retraction, correction or merge among them) and whose store
  partition is empty: the facts are the chunks' facts in order, the last copy of each ``event_id`` kept (what
  ``apply_frames`` does to new facts over an empty state), sorted by patient (stable), streamed from the spill
  files into the base's Parquet file; the persons are ``apply_frames`` of the person updates and flags alone
  over an empty state (each fact-only patient stands in as one row), so demographics fold by the engine's rules;
* any other partition (a retraction, a merge, or history already in the store) goes the general way: one
  segment of all its frames, then :meth:`HistoryStore.compact` (memory: that partition's frames).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from screener.history.store import (
    CONTROL_SCHEMA,
    HistoryStore,
    StoreError,
    _fact_rows_schema,
    _upd_schema,
    conform,
)
from screener.state import RETRACTED_SCHEMA, PatientState, apply_frames

__all__ = ["BulkLoad", "ahead_of"]

_FOLDING_OPS = ("retract", "merge")


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

    Use as a context manager: the spill folder (under ``spill_dir``, default the system's temporary folder) is
    removed on exit, whether :meth:`finish` ran or not.
    """

    def __init__(self, store: HistoryStore, start_offsets: Mapping[int, int], spill_dir: Path | None = None) -> None:
        self._store = store
        self._starts = dict(start_offsets)
        self._dir = Path(tempfile.mkdtemp(prefix="screener-backfill-", dir=spill_dir))
        self._files: dict[int, list[Path]] = {}
        self._upd: dict[int, list[pl.DataFrame]] = {}
        self._control: dict[int, list[pl.DataFrame]] = {}
        self._folds: set[int] = set()
        self._shift: dict[int, int] = {}

    def __enter__(self) -> BulkLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def add(self, partition: int, upd: pl.DataFrame, facts: pl.DataFrame, control: pl.DataFrame) -> None:
        """One chunk's frames for ``partition`` (``seq`` counting from 0 in the chunk; shifted here so it keeps
        increasing across chunks). The facts go to a spill file; person updates and control rows (small) stay."""
        shift = self._shift.get(partition, 0)
        top = max((int(x["seq"].max()) for x in (upd, facts, control) if x.height), default=-1)  # type: ignore[arg-type]  # polars types Series.max() as any scalar: seq is an integer column
        self._shift[partition] = shift + top + 1
        if facts.height:
            path = self._dir / f"p{partition}-{len(self._files.get(partition, ())):06d}.arrow"
            conform(facts.with_columns(pl.col("seq") + shift), _fact_rows_schema()).write_ipc(path)
            self._files.setdefault(partition, []).append(path)
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
        for p in self.partitions():
            self._write(p)
        for p, offset in self._starts.items():
            self._store.mark(p, offset)

    def _write(self, p: int) -> None:
        offset = self._starts.get(p, 0)
        upd = pl.concat(self._upd.pop(p, [pl.DataFrame(schema=_upd_schema())]))
        control = pl.concat(self._control.pop(p, [pl.DataFrame(schema=CONTROL_SCHEMA)]))
        files = self._files.pop(p, [])
        facts = (pl.scan_ipc(files) if files else pl.LazyFrame(schema=_fact_rows_schema())).select(
            list(_fact_rows_schema())
        )
        doc = self._store.manifest(p)
        ahead_of(self._store, p, doc, offset)
        empty = doc is None or (not doc.get("base") and not doc["segments"])
        if p in self._folds or not empty:
            self._store.append(p, facts.collect(), upd, control, offset, same_offset=True)
            self._store.compact(p)
        else:
            # apply_frames over an empty state keeps the last copy of each event id, in order; as many distinct
            # hashes as rows proves there is no copy (cheaper than de-duplicating the strings)
            kept = facts.drop("seq")
            n, distinct = facts.select(pl.len(), pl.col("event_id").hash().n_unique()).collect().row(0)
            if distinct != n:
                kept = kept.unique(subset=["event_id"], keep="last", maintain_order=True)
            stand_ins = (
                facts.group_by("patient_id").agg(pl.col("seq").min()).collect().pipe(conform, _fact_rows_schema())
            )
            folded, _ = apply_frames(PatientState(), upd, stand_ins, control)
            self._store.write_base(p, folded.persons, kept, pl.DataFrame(schema=RETRACTED_SCHEMA), offset)
        for f in files:
            f.unlink(missing_ok=True)
