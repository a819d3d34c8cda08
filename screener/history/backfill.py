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

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from screener.errors import EventError
from screener.history.store import HistoryStore
from screener.ingest import DecodedBatch, decode_batch

__all__ = ["StoreBackfill", "backfill_frames", "kafka_partitions", "murmur2"]


def kafka_partitions(keys: pl.Series, partitions: int) -> pl.Series:
    """The partition kafka-python's default partitioner sends each key to (keys as String or Binary).

    kafka-python's ``murmur2``, vectorised with NumPy (:func:`murmur2`), is evaluated once per distinct key, then
    joined back.
    """
    as_bytes = keys.cast(pl.Binary) if keys.dtype != pl.Binary else keys
    distinct = as_bytes.unique()
    hashes = murmur2(distinct.to_list())
    parts = pl.Series("partition", (hashes & 0x7FFFFFFF) % partitions, dtype=pl.Int32)
    table = pl.DataFrame({"key": distinct, "partition": parts})
    return as_bytes.rename("key").to_frame().join(table, on="key", how="left", maintain_order="left")["partition"]


def murmur2(keys: list[bytes | None]) -> np.ndarray:
    """kafka-python's ``kafka.partitioner.default.murmur2`` of every key (a None key hashes as empty), as
    uint64 holding the unsigned 32-bit result: the keys are grouped by length and hashed a 4-byte block at a time
    over the whole group."""
    m, mask = np.uint64(0x5BD1E995), np.uint64(0xFFFFFFFF)
    data = [k or b"" for k in keys]
    lengths = np.fromiter((len(k) for k in data), dtype=np.int64, count=len(data))
    out = np.zeros(len(data), dtype=np.uint64)
    for length in np.unique(lengths).tolist():
        idx = np.flatnonzero(lengths == length)
        raw = np.frombuffer(b"".join(data[i] for i in idx.tolist()), dtype=np.uint8)
        block = raw.reshape(len(idx), length).astype(np.uint64)
        h = np.full(len(idx), (0x9747B28C ^ length) & 0xFFFFFFFF, dtype=np.uint64)
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
        out[idx] = h
    return out


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
    frames: Iterable[pl.DataFrame],
    *,
    partitions: int,
    start_offsets: Mapping[int, int],
    compact: bool = True,
) -> StoreBackfill:
    """Append every frame's events (JSON ``key``/``value`` or event rows) to ``store``, one segment per frame
    and partition, then set each partition's offset to ``start_offsets[p]`` (0 when absent) and compact.

    Rejected events are counted (not dead-lettered: there is no topic position to name). The store must not
    already hold the partitions with a later offset (a backfill goes first).
    """
    started = time.perf_counter()
    out = StoreBackfill()
    for frame in frames:
        if frame.height == 0:
            continue
        out.events_in += frame.height
        as_rows = "event_id" in frame.columns
        # a row without a patient id has no partition: it is judged (and rejected) with partition 0's rows
        where = kafka_partitions(frame["patient_id" if as_rows else "key"], partitions).fill_null(0)
        for p in where.unique().sort().to_list():
            rows = frame.filter(where == p)
            decoded = _decode(rows, as_rows)
            out.rejected += len(decoded.rejects)
            if decoded.rejects and len(out.reasons) < 5:
                out.reasons.extend(_reason(exc) for _, exc in decoded.rejects[: 5 - len(out.reasons)])
            if not decoded.accepted:
                continue
            upd, facts, control = decoded.frames
            store.append(p, facts, upd, control, start_offsets.get(p, 0), same_offset=True)
            out.accepted += decoded.accepted
            out.per_partition[p] = out.per_partition.get(p, 0) + decoded.accepted
    for p in range(partitions):
        store.mark(p, start_offsets.get(p, 0))
        if compact:
            store.compact(p)
    out.bytes_stored = store.size_bytes()
    out.seconds = time.perf_counter() - started
    return out


def _decode(rows: pl.DataFrame, as_rows: bool) -> DecodedBatch:
    if as_rows:
        from screener.history.rows import decode_rows

        return decode_rows(rows)
    return decode_batch(rows["value"].to_list())


def _reason(exc: EventError) -> str:
    """The field and what is wrong with it (never the offending value: it may be a patient identifier)."""
    return f"{exc.field}: {exc.message}" if exc.field else exc.message
