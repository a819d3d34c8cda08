"""Patient history as a store of its own (see :mod:`screener.history.store`), and the engine's local snapshots
(:mod:`screener.history.snapshots`).

``open_store(url)`` gives a :class:`HistoryStore` (a local folder or ``s3://bucket/prefix``) with, per partition,
``append(partition, facts, persons, control, offset)``, ``scan(partitions=None) -> (persons, facts)`` (lazy),
``offset(partition)``, ``load(partition, keep)`` and ``compact(partition)``.
"""

from screener.history.snapshots import SnapshotError, load_snapshot, load_snapshot_parts, save_snapshot
from screener.history.store import HistoryStore, StoreError, conform, open_store

__all__ = [
    "HistoryStore",
    "SnapshotError",
    "StoreError",
    "conform",
    "load_snapshot",
    "load_snapshot_parts",
    "open_store",
    "save_snapshot",
]
