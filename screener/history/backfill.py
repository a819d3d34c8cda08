"""Backfill straight into the history store: canonical events validated with the engine's own checks and
appended per partition, partitioned exactly as the producer would have sent them (kafka-python's default
partitioner: ``murmur2(patient id) & 0x7fffffff % partitions``), so the engine reads them as if it had consumed
them. Each partition's store offset is set to the offset the engine should start reading the topic from
(normally the topic's end offsets at backfill time), so the live feed only carries new events.

Two forms of input frame, told apart by their columns: JSON (``key``, ``value``: one canonical event each,
judged by :func:`screener.ingest.decode_batch`; any source) or event *rows*
(:data:`screener.history.rows.ROW_SCHEMA`, built column-wise by a bulk source such as the OMOP connector and
judged column-wise by :func:`screener.history.rows.decode_rows`: the same frames and rejects, no JSON).

The history then holds the facts; matches for them come from the engine's first screen of those patients: a
partition restored from a store that is ahead of the group's committed offset (or with no committed offset) is
screened as a whole once (see :meth:`screener.engine.Engine` restore), so nobody backfilled is missed.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import polars as pl

from screener.errors import EventError
from screener.history._bulk import DEFAULT_MEMORY_BYTES, BulkLoad, ahead_of
from screener.history._frames import fact_rows_schema
from screener.history._partitioner import _Partitioner, kafka_partitions, murmur2, murmur2_series
from screener.history.store import HistoryStore
from screener.ingest import decode_batch

__all__ = ["Frame", "StoreBackfill", "backfill_frames", "kafka_partitions", "murmur2", "murmur2_series"]

Frame = pl.DataFrame | Callable[[], pl.DataFrame]
"""What :func:`backfill_frames` reads: a frame, or a function that makes one (called on a decode worker, so a
source's mapping of chunk *n+1* runs beside the decoding of chunk *n*)."""

#: Threads that decode and split chunks while the next chunk is read (Polars releases the GIL), and that write
#: partitions at the end: one per core, at most 4.
WORKERS = max(1, min(4, os.cpu_count() or 1))


@dataclass
class StoreBackfill:
    """What a backfill wrote: events read and accepted, rejects (with the first few reasons), per-partition
    counts, bytes stored and seconds (``write_seconds`` of them spent writing the partitions once every chunk was
    read and decoded: the bulk load's last step, or the general path's compaction)."""

    events_in: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    per_partition: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    write_seconds: float = 0.0
    bytes_stored: int = 0

    @property
    def rate(self) -> float:
        return self.events_in / self.seconds if self.seconds else 0.0


def backfill_frames(
    store: HistoryStore,
    frames: Iterable[Frame],
    *,
    partitions: int,
    start_offsets: Mapping[int, int],
    compact: bool = True,
    bulk: bool = True,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    workers: int = WORKERS,
) -> StoreBackfill:
    """Write every frame's events (JSON ``key``/``value`` or event rows; a frame may be given as a function that
    makes it, see :data:`Frame`) into ``store``, then set each
    partition's offset to ``start_offsets[p]`` (0 when absent).

    ``bulk`` (the default): one fold straight to each partition's compacted base (:class:`BulkLoad`; memory
    bounded by ``memory_bytes`` of facts plus one chunk, the rest spilled to local files, then one partition
    while writing). ``bulk=False``: the store's general path, one segment per frame and partition, then
    compaction unless ``compact=False``; both give the same history.
    Rejected events are counted (not dead-lettered: there is no topic position to name).

    ``workers`` threads decode and split the chunks (the next chunk is read from ``frames`` meanwhile; at most
    ``workers + 1`` decoded chunks wait, and they are applied in order, so the result does not depend on it) and
    then write the partitions, ``workers`` at a time (memory while writing: that many partitions).

    :raises StoreError: a partition of the store is already past its start offset (nothing is written then).
    """
    started = time.perf_counter()
    out = StoreBackfill()
    cache = _Partitioner(partitions)
    starts = {p: start_offsets.get(p, 0) for p in range(partitions)}
    for p in range(partitions):
        ahead_of(store, p, store.manifest(p), starts[p])
    with BulkLoad(store, starts, memory_bytes=memory_bytes, workers=workers) as load:
        for height, parts in _decoded_in_order(frames, cache, workers):
            out.events_in += height
            for part in parts:
                p = part.partition
                out.rejected += len(part.rejects)
                if part.rejects and len(out.reasons) < 5:
                    out.reasons.extend(_reason(exc) for _, exc in part.rejects[: 5 - len(out.reasons)])
                if not part.accepted:
                    continue
                if bulk:
                    load.add(p, part.upd, part.facts, part.control)
                else:
                    store.append(p, part.facts_in_order(), part.upd, part.control, starts[p], same_offset=True)
                out.accepted += part.accepted
                out.per_partition[p] = out.per_partition.get(p, 0) + part.accepted
        decoded = time.perf_counter()
        if bulk:
            load.finish()
    if not bulk:
        for p in range(partitions):
            store.mark(p, starts[p])
            if compact:
                store.compact(p)
    out.write_seconds = time.perf_counter() - decoded
    out.bytes_stored = store.size_bytes()
    out.seconds = time.perf_counter() - started
    return out


def _decoded_in_order(frames: Iterable[Frame], cache: _Partitioner, workers: int) -> Iterator[tuple[int, list[_Part]]]:
    """Each non-empty frame's height and decoded parts, in the frames' order, decoded on ``workers`` threads
    while the caller's iterator makes the next frames (at most ``workers + 1`` decoded frames wait). A callable
    is called on the worker that decodes its frame."""
    pending: deque[Future[tuple[int, list[_Part]]]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill-decode")

    def decoded(item: Frame) -> tuple[int, list[_Part]]:
        frame = item() if callable(item) else item
        return (frame.height, list(_decoded_parts(frame, cache))) if frame.height else (0, [])

    try:
        for item in frames:
            if isinstance(item, pl.DataFrame) and item.height == 0:
                continue
            pending.append(pool.submit(decoded, item))
            while len(pending) > workers or (pending and pending[0].done()):
                height, parts = pending.popleft().result()
                if height:
                    yield height, parts
        while pending:
            height, parts = pending.popleft().result()
            if height:
                yield height, parts
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class _Part:
    """One partition's share of a decoded frame, its facts split by patient bucket (:meth:`_Partitioner.bucket`)."""

    partition: int
    upd: pl.DataFrame
    facts: dict[int, pl.DataFrame]
    control: pl.DataFrame
    accepted: int
    rejects: list[tuple[int, EventError]]

    def facts_in_order(self) -> pl.DataFrame:
        """The facts in the frame's order (one event's rows share a seq and a patient, so a bucket)."""
        pieces = list(self.facts.values())
        if len(pieces) < 2:
            return pieces[0] if pieces else pl.DataFrame(schema=fact_rows_schema())
        return pl.concat(pieces).sort("seq", maintain_order=True)


def _decoded_parts(frame: pl.DataFrame, cache: _Partitioner) -> Iterator[_Part]:
    """The frame decoded, per partition. Event rows are decoded at once and the frames split by patient (each
    decoded row keeps its event's patient id); JSON is split by key first (the key is what the producer hashes).
    A row without a patient id has no partition: it is judged (and rejected) with partition 0's rows."""
    if "event_id" not in frame.columns:
        where = kafka_partitions(frame["key"], cache.partitions, cache).fill_null(0)
        for p in where.unique().sort().to_list():
            d = decode_batch(frame.filter(where == p)["value"].to_list())
            facts = d.facts.with_columns(cache.bucket(d.facts["patient_id"]))
            yield _Part(p, d.persons, _by(facts, "bucket"), d.control, d.accepted, d.rejects)
        return
    from screener.history.rows import decode_rows

    decoded = decode_rows(frame)
    upd, facts, control = decoded.frames

    def tagged(x: pl.DataFrame, column: str) -> pl.DataFrame:
        of = cache.slots if column == "slot" else cache.of_ids
        return x.with_columns(of(x["patient_id"]).alias(column))

    u = _by(tagged(upd, "partition"), "partition") if upd.height else {}
    c = _by(tagged(control, "partition"), "partition") if control.height else {}
    f: dict[int, dict[int, pl.DataFrame]] = {}
    for slot, g in (_by(tagged(facts, "slot"), "slot") if facts.height else {}).items():
        f.setdefault(slot // cache.buckets, {})[slot % cache.buckets] = g
    parts = sorted({*u, *f, *c}) or [0]
    # an accepted event gives rows of one seq (a person update, a fact, a control row, or several of these); facts
    # whose seq rises strictly along the frame are one event each in every piece (the pieces keep the order)
    rising = facts.height < 2 or bool((facts["seq"].diff().drop_nulls() > 0).all())
    counts = {
        p: _events([x[p]["seq"] for x in (u, c) if p in x], [g["seq"] for g in f.get(p, {}).values()], rising)
        for p in parts
    }
    counts[parts[0]] += decoded.accepted - sum(counts.values())
    for i, p in enumerate(parts):
        empty = upd.clear(), facts.clear(), control.clear()
        yield _Part(
            p, u.get(p, empty[0]), f.get(p, {}), c.get(p, empty[2]), counts[p], decoded.rejects if i == 0 else []
        )


def _by(frame: pl.DataFrame, key: str) -> dict[int, pl.DataFrame]:
    """``frame``'s rows per value of the integer column ``key``, in order, the key dropped: one stable sort by the
    key (one gather of every column) and a zero-copy slice per run, a quarter cheaper than ``partition_by``."""
    ordered = frame.sort(key, maintain_order=True)
    runs = ordered[key].rle()
    body = ordered.drop(key)
    out, start = {}, 0
    for value, n in zip(runs.struct.field("value").to_list(), runs.struct.field("len").to_list(), strict=True):
        out[int(value)] = body.slice(start, n)
        start += n
    return out


def _events(others: list[pl.Series], pieces: list[pl.Series], rising: bool = False) -> int:
    """The events that gave these rows (their distinct ``seq``): ``others`` the person updates' and control rows'
    seqs, ``pieces`` the facts' per bucket (which never share a seq; ``rising``: each is known to be in seq order
    strictly increasing). The rows of one kind only, each in seq order strictly increasing, are one event each
    (no hashing then)."""
    if pieces and not others and rising:
        return sum(s.len() for s in pieces)
    alone = pieces if not others else others if len(others) == 1 and not pieces else []
    if alone and all(s.len() < 2 or bool((s.diff().drop_nulls() > 0).all()) for s in alone):
        return sum(s.len() for s in alone)
    seqs = [*others, *pieces]
    return pl.concat(seqs).n_unique() if seqs else 0


def _reason(exc: EventError) -> str:
    """The field and what is wrong with it (never the offending value: it may be a patient identifier)."""
    return f"{exc.field}: {exc.message}" if exc.field else exc.message
