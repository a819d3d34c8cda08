"""Where a backfill's events go: the Kafka partition kafka-python's default partitioner sends each key to
(``murmur2(key) & 0x7fffffff % partitions``, vectorised with NumPy) and, within a partition, the patient bucket
(ranges of ids in their sorted order) the bulk load sorts its facts by."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import polars as pl

__all__ = ["BUCKETS", "kafka_partitions", "murmur2", "murmur2_series"]

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
    (:meth:`lookup`) and the patient ids of event rows (:meth:`of_ids`, :meth:`slots`); and patient id -> bucket
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

    def of_ids(self, ids: pl.Series) -> pl.Series:
        """``partition`` (Int32) of each patient id (String; a null is in partition 0)."""
        return _each(ids, self._partition).rename("partition")

    def slots(self, ids: pl.Series) -> pl.Series:
        """``slot`` (Int32) of each patient id: ``partition * buckets + bucket``."""
        return _each(ids, lambda x: self._partition(x) * self._buckets + self.bucket(x)).rename("slot")

    def _partition(self, ids: pl.Series) -> pl.Series:
        parts = pl.Series("partition", (murmur2_series(ids) & 0x7FFFFFFF) % self.partitions, dtype=pl.Int32)
        return parts.set(ids.is_null(), 0) if ids.null_count() else parts

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


def _each(ids: pl.Series, of: Callable[[pl.Series], pl.Series]) -> pl.Series:
    """``of`` (an Int32 per id, 0 for a null) for every id: evaluated on every row when nearly every id of a
    sample is distinct (a chunk of many patients: then about a fifth or more of the chunk's ids are distinct, and
    hashing every row is up to 2x cheaper), else on the distinct ids and joined back (a few patients' many rows:
    hashing every row would cost up to 2.5x more)."""
    sample = ids.head(4096)
    if sample.n_unique() > 0.95 * sample.len():
        return of(ids)
    distinct = ids.unique().rename("id")
    table = pl.DataFrame([distinct, of(distinct).rename("value")])
    tagged = ids.rename("id").to_frame().join(table, on="id", how="left", maintain_order="left")
    return tagged["value"].fill_null(0)


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
    without a Python object per key: each group of keys of one byte length is joined into one text (String; for
    Binary, one hex text), which gives the group's bytes end to end, hashed as a block."""
    raw = keys.cast(pl.Binary) if keys.dtype != pl.Binary else keys
    lengths = raw.bin.size().fill_null(0)
    out = np.zeros(raw.len(), dtype=np.uint64)
    for length in lengths.unique().sort().to_list():
        where = lengths == length
        if keys.dtype == pl.String:
            data = str(keys.filter(where).str.join("").item() or "").encode()
        else:
            data = bytes.fromhex(str(raw.filter(where).bin.encode("hex").str.join("").item() or ""))
        out[where.arg_true().to_numpy()] = _murmur2_block(data, int(where.sum()), length)
    return out


def _murmur2_block(data: bytes, n: int, length: int) -> np.ndarray:
    """murmur2 of ``n`` keys of ``length`` bytes each, laid end to end in ``data`` (uint32 arithmetic: NumPy
    wraps it modulo 2**32 as murmur2 does), as uint64."""
    m = np.uint32(0x5BD1E995)
    block = np.frombuffer(data, dtype=np.uint8).reshape(n, length)
    h = np.full(n, (0x9747B28C ^ length) & 0xFFFFFFFF, dtype=np.uint32)
    if length >= 4:
        words = np.ascontiguousarray(block[:, : length & ~3]).view("<u4")
        for i in range(length // 4):
            k = words[:, i] * m
            k ^= k >> np.uint32(24)
            k *= m
            h *= m
            h ^= k
    tail, base = length % 4, length & ~3
    if tail >= 3:
        h ^= block[:, base + 2].astype(np.uint32) << np.uint32(16)
    if tail >= 2:
        h ^= block[:, base + 1].astype(np.uint32) << np.uint32(8)
    if tail >= 1:
        h ^= block[:, base].astype(np.uint32)
        h *= m
    h ^= h >> np.uint32(13)
    h *= m
    h ^= h >> np.uint32(15)
    return h.astype(np.uint64)
