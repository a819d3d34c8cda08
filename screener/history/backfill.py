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
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from screener.errors import EventError
from screener.history._bulk import DEFAULT_MEMORY_BYTES, BulkLoad, ahead_of
from screener.history._frames import fact_rows_schema
from screener.history.store import HistoryStore
from screener.ingest import decode_batch

__all__ = ["Frame", "StoreBackfill", "backfill_frames", "kafka_partitions", "murmur2", "murmur2_series"]

Frame = pl.DataFrame | Callable[[], pl.DataFrame]
"""What :func:`backfill_frames` reads: a frame, or a function that makes one (called on a decode worker, so a
source's mapping of chunk *n+1* runs beside the decoding of chunk *n*)."""

#: Threads that decode and split chunks while the next chunk is read (Polars releases the GIL), and that write
#: partitions at the end: one per core, at most 4.
WORKERS = max(1, min(4, os.cpu_count() or 1))
#: Patient buckets per partition (ranges of ids: see :class:`_Partitioner`); sorting a partition's facts a bucket at a
#: time is about half the CPU of one sort of 2.5M facts.
BUCKETS = 8


def kafka_partitions(keys: pl.Series, partitions: int, cache: _Partitioner | None = None) -> pl.Series:
    """The partition kafka-python's default partitioner sends each key to (keys as String or Binary).

    kafka-python's ``murmur2``, vectorised with NumPy (:func:`murmur2_series`), is evaluated once per distinct
    key, then joined back.
    """
    as_bytes = keys.cast(pl.Binary) if keys.dtype != pl.Binary else keys
    frame = as_bytes.rename("key").to_frame()
    table = (cache or _Partitioner(partitions)).lookup(as_bytes)
    return frame.join(table, on="key", how="left", maintain_order="left")["partition"]


class _Partitioner:
    """Key -> partition, hashed per chunk (the work is the chunk's, however many patients the backfill has met:
    a lookup in the keys seen so far would build or probe all of them for every chunk): JSON keys
    (:meth:`lookup`) and the patient ids of event rows (:meth:`of_ids`); and patient id -> bucket
    (:meth:`bucket`), ranges of ids in their sorted order, so that a partition's facts are sorted bucket by bucket
    (each smaller, so cheaper per row to sort) and the buckets put end to end."""

    def __init__(self, partitions: int, buckets: int | None = None) -> None:
        self.partitions = partitions
        self._buckets = BUCKETS if buckets is None else buckets
        self._bounds: pl.Series | None = None
        self._lock = threading.Lock()

    def lookup(self, keys: pl.Series) -> pl.DataFrame:
        """``key`` (Binary) and ``partition`` for the distinct keys of ``keys`` (Binary)."""
        distinct = keys.rename("key").unique()
        hashes = murmur2_series(distinct)
        return pl.DataFrame([distinct, pl.Series("partition", (hashes & 0x7FFFFFFF) % self.partitions, dtype=pl.Int32)])

    @property
    def buckets(self) -> int:
        return self._buckets

    def of_ids(self, ids: pl.Series) -> pl.DataFrame:
        """``patient_id`` (String), ``partition`` and ``slot`` (``partition * buckets + bucket``) for the distinct
        ids of ``ids`` (String)."""
        distinct = ids.drop_nulls().unique().rename("patient_id")
        parts = pl.Series("partition", (murmur2_series(distinct) & 0x7FFFFFFF) % self.partitions, dtype=pl.Int32)
        return pl.DataFrame([distinct, parts, (parts * self._buckets + self.bucket(distinct)).rename("slot")])

    def bucket(self, ids: pl.Series) -> pl.Series:
        """``bucket`` (Int32) of each patient id (a null is in bucket 0): the number of bounds at or below it. The
        bounds are evenly spaced ids of the first chunk that has any (any bounds give the same order; even ones
        give buckets of similar size), the same for every chunk after."""
        with self._lock:
            if self._bounds is None and ids.null_count() < ids.len():
                seen = ids.drop_nulls().unique().sort()
                step = max(seen.len() // self._buckets, 1)
                self._bounds = seen.gather(list(range(step, seen.len(), step))[: self._buckets - 1])
            bounds = self._bounds
        if bounds is None or bounds.len() == 0:
            return pl.Series("bucket", [0] * ids.len(), dtype=pl.Int32)
        # a comparison per bound (a null compares as null: not counted) is cheaper than a binary search per id
        above = [(pl.col("id") >= pl.lit(b)).cast(pl.Int32) for b in bounds.to_list()]
        return ids.rename("id").to_frame().select(pl.sum_horizontal(above).cast(pl.Int32).alias("bucket")).to_series()


def murmur2(keys: list[bytes | None]) -> np.ndarray:
    """kafka-python's ``kafka.partitioner.default.murmur2`` of every key (a None key hashes as empty), as
    uint64 holding the unsigned 32-bit result: the keys are grouped by length and hashed a 4-byte block at a time
    over the whole group."""
    data = [k or b"" for k in keys]
    lengths = np.fromiter((len(k) for k in data), dtype=np.int64, count=len(data))
    out = np.zeros(len(data), dtype=np.uint64)
    for length in np.unique(lengths).tolist():
        idx = np.flatnonzero(lengths == length)
        out[idx] = _murmur2_block(b"".join(data[i] for i in idx.tolist()), len(idx), length)
    return out


def murmur2_series(keys: pl.Series) -> np.ndarray:
    """:func:`murmur2` of every key of a String (its UTF-8 bytes) or Binary series (a null hashes as empty),
    without a Python object per key: each group of keys of one byte length is joined into one hex text, which
    gives the group's bytes end to end, hashed as a block."""
    raw = keys.cast(pl.Binary) if keys.dtype != pl.Binary else keys
    lengths = raw.bin.size().fill_null(0)
    out = np.zeros(raw.len(), dtype=np.uint64)
    for length in lengths.unique().sort().to_list():
        where = lengths == length
        group = raw.filter(where).fill_null(b"")
        data = bytes.fromhex(str(group.bin.encode("hex").str.join("").item() or ""))
        out[where.arg_true().to_numpy()] = _murmur2_block(data, group.len(), length)
    return out


def _murmur2_block(data: bytes, n: int, length: int) -> np.ndarray:
    """murmur2 of ``n`` keys of ``length`` bytes each, laid end to end in ``data``."""
    m, mask = np.uint64(0x5BD1E995), np.uint64(0xFFFFFFFF)
    block = np.frombuffer(data, dtype=np.uint8).reshape(n, length).astype(np.uint64)
    h = np.full(n, (0x9747B28C ^ length) & 0xFFFFFFFF, dtype=np.uint64)
    for i in range(length // 4):
        b = block[:, 4 * i : 4 * i + 4]
        k = b[:, 0] | (b[:, 1] << np.uint64(8)) | (b[:, 2] << np.uint64(16)) | (b[:, 3] << np.uint64(24))
        k = (k * m) & mask
        k ^= k >> np.uint64(24)
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail, base = length % 4, length & ~3
    if tail >= 3:
        h ^= block[:, base + 2] << np.uint64(16)
    if tail >= 2:
        h ^= block[:, base + 1] << np.uint64(8)
    if tail >= 1:
        h = ((h ^ block[:, base]) * m) & mask
    h ^= h >> np.uint64(13)
    h = (h * m) & mask
    h ^= h >> np.uint64(15)
    return h


@dataclass
class StoreBackfill:
    """What a backfill wrote: events read and accepted, rejects (with the first few reasons), per-partition
    counts, bytes stored and seconds."""

    events_in: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)
    per_partition: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
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
        if bulk:
            load.finish()
    if not bulk:
        for p in range(partitions):
            store.mark(p, starts[p])
            if compact:
                store.compact(p)
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
    table = cache.of_ids(pl.concat([upd["patient_id"], facts["patient_id"], control["patient_id"]]))

    def tagged(x: pl.DataFrame, column: str) -> pl.DataFrame:
        on = table.select("patient_id", column)
        return x.join(on, on="patient_id", how="left", maintain_order="left").with_columns(pl.col(column).fill_null(0))

    u = _by(tagged(upd, "partition"), "partition") if upd.height else {}
    c = _by(tagged(control, "partition"), "partition") if control.height else {}
    f: dict[int, dict[int, pl.DataFrame]] = {}
    for slot, g in (_by(tagged(facts, "slot"), "slot") if facts.height else {}).items():
        f.setdefault(slot // cache.buckets, {})[slot % cache.buckets] = g
    parts = sorted({*u, *f, *c}) or [0]
    # an accepted event gives rows of one seq (a person update, a fact, a control row, or several of these)
    counts = {
        p: _events([x[p]["seq"] for x in (u, c) if p in x], [g["seq"] for g in f.get(p, {}).values()]) for p in parts
    }
    counts[parts[0]] += decoded.accepted - sum(counts.values())
    for i, p in enumerate(parts):
        empty = upd.clear(), facts.clear(), control.clear()
        yield _Part(
            p, u.get(p, empty[0]), f.get(p, {}), c.get(p, empty[2]), counts[p], decoded.rejects if i == 0 else []
        )


def _by(frame: pl.DataFrame, key: str) -> dict[int, pl.DataFrame]:
    """``frame``'s rows per value of the integer column ``key``, in order, the key dropped."""
    groups = frame.partition_by(key, maintain_order=True, include_key=False, as_dict=True)
    return {int(k[0]): g for k, g in groups.items()}


def _events(others: list[pl.Series], pieces: list[pl.Series]) -> int:
    """The events that gave these rows (their distinct ``seq``): ``others`` the person updates' and control rows'
    seqs, ``pieces`` the facts' per bucket (which never share a seq). The rows of one kind only, each in seq order
    strictly increasing, are one event each (no hashing then)."""
    alone = pieces if not others else others if len(others) == 1 and not pieces else []
    if alone and all(s.len() < 2 or bool((s.diff().drop_nulls() > 0).all()) for s in alone):
        return sum(s.len() for s in alone)
    seqs = [*others, *pieces]
    return pl.concat(seqs).n_unique() if seqs else 0


def _reason(exc: EventError) -> str:
    """The field and what is wrong with it (never the offending value: it may be a patient identifier)."""
    return f"{exc.field}: {exc.message}" if exc.field else exc.message
