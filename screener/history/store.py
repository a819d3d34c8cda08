"""The history store: every applied fact of every patient, per partition, as append-only Parquet segments plus a
compacted base, in a local folder or an S3-compatible bucket.

Layout under the store's root (one store holds one topic's partitions)::

    p-00003/manifest.json            {"version": 1, "offset": N, "base": "base-...", "segments": [...], "next": K}
    p-00003/base-<id>/persons.parquet, facts.parquet, retracted.parquet     the compacted state
    p-00003/seg-<n>-<offset>/upd.parquet, facts.parquet, control.parquet    one append: decoded batches as applied

A segment holds a batch's frames exactly as :func:`screener.ingest.decode_batch` splits them (person updates,
fact rows, control rows: retractions, merges, do-not-contact, deaths), unpruned, with ``seq`` giving their order.
The manifest is the only object ever overwritten (an S3 PUT is atomic), written after the files it names, so a
reader never sees half an append; ``offset`` is the partition offset after the last append (the next record the
engine must read to continue from the store). Reading folds the segments over the base with
:func:`screener.state.apply_frames` (the engine's own semantics for corrections, retractions and merges) for just
the patients they touch; :meth:`HistoryStore.compact` writes that fold as the new base and drops the segments.

Object I/O goes through ``obstore`` (the Rust ``object_store`` crate), lazy reads through Polars' own
``scan_parquet`` (the same crate), so local folders and S3 behave alike and share configuration: pass
``storage_options`` (``aws_endpoint``, ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_region``,
``aws_allow_http``) or set the usual ``AWS_*`` environment variables. Frames are read against the current
``FACTS_SCHEMA``/``PERSONS_SCHEMA`` (missing columns come back null, unknown ones are dropped), so a store
written before a schema change still reads. One writer per partition at a time (the partition's owner).
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import obstore
import polars as pl
from obstore.store import LocalStore, from_url

from screener.history import _fold
from screener.history._errors import StoreError
from screener.history._frames import (
    CONTROL_SCHEMA,
    PARQUET_OPTIONS,
    Parallel,
    conform,
    keys_expr,
    sort_by_patient,
)
from screener.history._frames import fact_rows_schema as _fact_rows_schema
from screener.history._frames import upd_schema as _upd_schema
from screener.state import (
    FACTS_SCHEMA,
    PERSONS_SCHEMA,
    RETRACTED_SCHEMA,
    FactFilter,
    PatientState,
)

__all__ = ["CONTROL_SCHEMA", "HistoryStore", "StoreError", "conform", "keys_expr", "open_store", "sort_by_patient"]

#: Storage options that are HTTP-client settings for obstore (Polars takes them with the rest).
_CLIENT_KEYS = ("aws_allow_http", "allow_http")
#: Base facts columns written even when every row is null (what identifies and orders a fact).
_KEPT = frozenset({"patient_id", "event_id", "kind", "occurred_at"})


def _truthy(options: dict[str, str], keys: Sequence[str]) -> bool:
    return any(str(options.get(k, "")).lower() in ("1", "true", "yes") for k in keys)


def open_store(url: str | Path, storage_options: dict[str, str] | None = None) -> HistoryStore:
    """The store at ``url``: a local folder (a path or ``file://...``, created if missing) or
    ``s3://bucket/prefix``."""
    return HistoryStore(str(url), storage_options)


class HistoryStore:
    """One topic's history, per partition. Thread-safe within a process (one lock per partition)."""

    def __init__(self, url: str, storage_options: dict[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        if "://" in self.url and not self.url.startswith("file://"):
            self._root = self.url
            config = {k: v for k, v in self.storage_options.items() if k not in _CLIENT_KEYS}
            client = {"allow_http": True} if _truthy(self.storage_options, _CLIENT_KEYS) else None
            self._store: Any = from_url(self.url, config=config or None, client_options=client)  # type: ignore[arg-type]  # obstore's TypedDicts: keys are the user's
            self._polars_options: dict[str, str] | None = self.storage_options or None
        else:
            path = Path(self.url.removeprefix("file://")).resolve()
            path.mkdir(parents=True, exist_ok=True)
            self._root = str(path)
            self._store = LocalStore(str(path))
            self._polars_options = None
        self._locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def __repr__(self) -> str:
        return f"HistoryStore({self.url!r})"

    # --- objects --------------------------------------------------------------------------------------------
    def _lock(self, partition: int) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(partition, threading.Lock())

    @staticmethod
    def _dir(partition: int) -> str:
        return f"p-{partition:05d}"

    def _put_frame(self, key: str, frame: pl.DataFrame) -> int:
        buf = io.BytesIO()
        frame.write_parquet(buf, statistics=True, **PARQUET_OPTIONS)
        data = buf.getvalue()
        obstore.put(self._store, key, data)
        return len(data)

    def _put_facts(self, key: str, frame: pl.DataFrame) -> int:
        """A base's facts: ``FACTS_SCHEMA``'s columns but those missing from ``frame`` or null on every row (the
        readers insert a missing column as nulls, :meth:`_scan` and :meth:`_read_frame`, so the file reads back
        the same; a column of nulls costs the writer per row, and a backfill from one source leaves a quarter of
        them empty). An empty frame is written with every column."""
        have = frame.collect_schema()
        kept = [
            c
            for c in FACTS_SCHEMA
            if c in _KEPT or not frame.height or (c in have and frame[c].null_count() < frame.height)
        ]
        return self._put_frame(key, conform(frame, {c: FACTS_SCHEMA[c] for c in kept}))

    def _sink_frame(self, key: str, frame: pl.LazyFrame) -> None:
        if self._polars_options is None:
            Path(f"{self._root}/{key}").parent.mkdir(parents=True, exist_ok=True)
        frame.sink_parquet(
            f"{self._root}/{key}", statistics=True, storage_options=self._polars_options, **PARQUET_OPTIONS
        )

    def _read_frame(self, key: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
        data = obstore.get(self._store, key).bytes()
        return conform(pl.read_parquet(io.BytesIO(bytes(data))), schema)

    def _scan(self, keys: Sequence[str], schema: dict[str, pl.DataType], parallel: Parallel = "auto") -> pl.LazyFrame:
        if not keys:
            return pl.LazyFrame(schema=schema)
        return pl.scan_parquet(
            [f"{self._root}/{k}" for k in keys],
            parallel=parallel,
            schema=schema,
            missing_columns="insert",
            extra_columns="ignore",
            storage_options=self._polars_options,
        )

    def manifest(self, partition: int) -> dict[str, Any] | None:
        """The partition's manifest, or ``None`` when the store has nothing for it.

        :raises StoreError: the manifest exists but cannot be read (a damaged store: the engine replays).
        """
        key = f"{self._dir(partition)}/manifest.json"
        try:
            raw = obstore.get(self._store, key).bytes()
        except FileNotFoundError:
            return None
        except Exception as exc:
            if type(exc).__name__ == "NotFoundError":
                return None
            raise StoreError(f"manifest unreadable ({type(exc).__name__})", url=self.url, partition=partition) from exc
        try:
            doc = json.loads(bytes(raw))
            if not isinstance(doc, dict) or not isinstance(doc.get("segments"), list) or "offset" not in doc:
                raise ValueError("not a manifest")
        except ValueError as exc:
            raise StoreError(f"manifest damaged ({exc})", url=self.url, partition=partition) from exc
        return doc

    def _put_manifest(self, partition: int, doc: dict[str, Any]) -> None:
        obstore.put(self._store, f"{self._dir(partition)}/manifest.json", json.dumps(doc).encode())

    def partitions(self) -> list[int]:
        """The partitions the store holds a manifest for."""
        listed = obstore.list_with_delimiter(self._store, None)
        out = []
        for prefix in listed["common_prefixes"]:
            name = prefix.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("p-") and name[2:].isdigit() and self.manifest(int(name[2:])) is not None:
                out.append(int(name[2:]))
        return sorted(out)

    # --- the API --------------------------------------------------------------------------------------------
    def offset(self, partition: int) -> int | None:
        """The partition offset after the last append (where a restore continues), or ``None`` when empty."""
        doc = self.manifest(partition)
        return None if doc is None else int(doc["offset"])

    def append(
        self,
        partition: int,
        facts: pl.DataFrame,
        persons: pl.DataFrame,
        control: pl.DataFrame,
        offset: int,
        *,
        same_offset: bool = False,
    ) -> bool:
        """Append one segment: the decoded frames of the records up to ``offset`` (exclusive), unpruned.

        ``facts`` (``seq`` + FACTS_SCHEMA columns), ``persons`` (``seq`` + the person-update columns) and
        ``control`` (``seq, patient_id, op, arg``: retractions, merges, do-not-contact, deaths) are the frames of
        :func:`screener.ingest.decode_batch` (several batches concatenated with increasing ``seq``). An append
        whose ``offset`` is not past the store's is a repetition (a replay, a zombie owner) and is ignored:
        returns False (``same_offset`` accepts one at the store's offset: a backfill's many segments). Files
        first, manifest last: a crash in between leaves unreferenced files, not a torn history.
        """
        with self._lock(partition):
            doc = self.manifest(partition) or {"version": 1, "offset": -1, "base": None, "segments": [], "next": 0}
            if offset < int(doc["offset"]) or (offset == int(doc["offset"]) and not same_offset):
                return False
            n = int(doc.get("next", 0))
            seg = f"seg-{n:08d}-{offset}-{uuid.uuid4().hex[:8]}"
            d = self._dir(partition)
            self._put_frame(f"{d}/{seg}/upd.parquet", conform(persons, _upd_schema()))
            self._put_frame(f"{d}/{seg}/facts.parquet", conform(facts, _fact_rows_schema()))
            self._put_frame(f"{d}/{seg}/control.parquet", conform(control, CONTROL_SCHEMA))
            doc["segments"] = [*doc["segments"], seg]
            doc["offset"] = offset
            doc["next"] = n + 1
            self._put_manifest(partition, doc)
            return True

    def write_base(
        self,
        partition: int,
        persons: pl.DataFrame,
        facts: pl.DataFrame | pl.LazyFrame,
        retracted: pl.DataFrame,
        offset: int,
        *,
        by_patient: bool = False,
    ) -> None:
        """Replace the partition's history with an already folded state (a bulk load: a backfill, a benchmark),
        sorted by patient (stable), at ``offset``. Earlier segments and base are dropped. Lazy ``facts`` are
        streamed into the file (Polars' ``sink_parquet``) rather than collected first; eager ``facts`` that are
        already in that order say so with ``by_patient`` (not sorted again)."""
        with self._lock(partition):
            doc = self.manifest(partition)
            d = self._dir(partition)
            base = f"base-{uuid.uuid4().hex[:12]}"
            self._put_frame(f"{d}/{base}/persons.parquet", conform(persons, PERSONS_SCHEMA).sort("patient_id"))
            if isinstance(facts, pl.LazyFrame):
                lazy = conform(facts, FACTS_SCHEMA).sort("patient_id", maintain_order=True)
                self._sink_frame(f"{d}/{base}/facts.parquet", lazy)
            else:
                self._put_facts(f"{d}/{base}/facts.parquet", facts if by_patient else sort_by_patient(facts))
            self._put_frame(f"{d}/{base}/retracted.parquet", conform(retracted, RETRACTED_SCHEMA))
            new = {"version": 1, "offset": offset, "base": base, "segments": [], "next": 0}
            self._put_manifest(partition, new)
            if doc is not None:
                for name in [doc.get("base"), *doc["segments"]]:
                    if name:
                        self._delete_prefix(f"{d}/{name}/")

    def mark(self, partition: int, offset: int) -> None:
        """Record that the partition's history is complete up to ``offset`` with nothing to add (an empty
        stretch of the topic, or a backfill's start)."""
        with self._lock(partition):
            doc = self.manifest(partition) or {"version": 1, "offset": -1, "base": None, "segments": [], "next": 0}
            if offset > int(doc["offset"]):
                doc["offset"] = offset
                self._put_manifest(partition, doc)

    def view(
        self, partition: int, parallel: Parallel = "auto"
    ) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.DataFrame, int] | None:
        """The partition's current history as ``(persons, facts, retracted, offset)``, or ``None`` when the store
        has none: the base scanned lazily, the segments folded in for the patients they touch. ``parallel`` is
        the base facts' Parquet strategy (``"prefiltered"`` for a filter that keeps few rows).

        :raises StoreError: the manifest or a file it names is missing or unreadable.
        """
        doc = self.manifest(partition)
        if doc is None:
            return None
        d = self._dir(partition)
        try:
            return _fold.fold(self, d, doc, parallel)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(
                f"history unreadable ({type(exc).__name__}: {exc})", url=self.url, partition=partition
            ) from exc

    def load(self, partition: int, keep: pl.Expr | FactFilter | None = None) -> tuple[PatientState, int] | None:
        """The partition's state pruned with ``keep`` (its expression and cut-off pushed down into the scan) and
        its offset, or ``None`` when the store has nothing for it. :raises StoreError: as :meth:`view`."""
        keyed = isinstance(keep, FactFilter) and keep.expr is not None and keep.keys is not None
        if keyed:
            assert isinstance(keep, FactFilter)
            folded = _fold.load_folded(self, partition, keep)
            if folded is not None:
                return folded
        # A filter on the key columns is decided before the other columns are decoded (prefiltered).
        got = self.view(partition, parallel="prefiltered" if keyed else "auto")
        if got is None:
            return None
        persons, facts, retracted, offset = got
        if isinstance(keep, FactFilter):
            if keep.since is not None:
                facts = facts.filter(pl.col("occurred_at") >= pl.lit(keep.since).cast(FACTS_SCHEMA["occurred_at"]))
            if keep.expr is not None and keep.keys is not None:
                # The rules' filter reads only the low-cardinality key columns: judge each distinct combination
                # once (a scan of those columns alone) and keep the facts by a semi-join, as FactFilter does.
                distinct = facts.select(keep.keys).unique().collect()
                allowed = FactFilter(keep.expr)(distinct)
                # A filter keeps the base's order (sorted by patient): the engine's views then need no sort.
                facts = facts.filter(keys_expr(keep.keys, allowed.select(keep.keys)))
            elif keep.expr is not None:
                facts = facts.filter(keep.expr.fill_null(False))
        elif keep is not None:
            facts = facts.filter(keep.fill_null(False))
        try:
            p, f = pl.collect_all([persons, facts])
        except Exception as exc:
            raise StoreError(f"history unreadable ({type(exc).__name__})", url=self.url, partition=partition) from exc
        return PatientState(persons=p, facts=f, retracted=retracted), offset

    def scan(self, partitions: Sequence[int] | None = None) -> tuple[pl.LazyFrame, pl.LazyFrame]:
        """``(persons, facts)`` of the given partitions (default: all), lazily: filter and select before
        collecting and Polars reads only what it needs. :raises StoreError: as :meth:`view`."""
        parts = self.partitions() if partitions is None else list(partitions)
        persons: list[pl.LazyFrame] = []
        facts: list[pl.LazyFrame] = []
        for p in parts:
            got = self.view(p)
            if got is not None:
                persons.append(got[0])
                facts.append(got[1])
        if not persons:
            return pl.LazyFrame(schema=PERSONS_SCHEMA), pl.LazyFrame(schema=FACTS_SCHEMA)
        return pl.concat(persons), pl.concat(facts)

    def compact(self, partition: int) -> bool:
        """Fold the partition's segments into a new base (corrections, retractions and merges applied), then
        drop the old base and the segments. Returns False when there was nothing to fold."""
        with self._lock(partition):
            doc = self.manifest(partition)
            if doc is None or not doc["segments"]:
                return False
            d = self._dir(partition)
            persons, facts, retracted, _ = _fold.fold(self, d, doc)
            p, f = pl.collect_all([persons.sort("patient_id"), facts.sort("patient_id", maintain_order=True)])
            base = f"base-{uuid.uuid4().hex[:12]}"
            self._put_frame(f"{d}/{base}/persons.parquet", p)
            self._put_facts(f"{d}/{base}/facts.parquet", f)
            self._put_frame(f"{d}/{base}/retracted.parquet", retracted)
            old = [doc["base"], *doc["segments"]] if doc.get("base") else list(doc["segments"])
            doc["base"], doc["segments"] = base, []
            self._put_manifest(partition, doc)
            for name in old:
                self._delete_prefix(f"{d}/{name}/")
            return True

    def _delete_prefix(self, prefix: str) -> None:
        for chunk in obstore.list(self._store, prefix):
            keys = [m["path"] for m in chunk]
            if keys:
                obstore.delete(self._store, keys)

    def size_bytes(self, partition: int | None = None) -> int:
        """Bytes stored (one partition, or all)."""
        prefix = None if partition is None else f"{self._dir(partition)}/"
        return sum(m["size"] for chunk in obstore.list(self._store, prefix) for m in chunk)

    def segments(self, partition: int) -> int:
        """How many segments wait for compaction."""
        doc = self.manifest(partition)
        return 0 if doc is None else len(doc["segments"])

    def put_object(self, partition: int, name: str, data: bytes) -> None:
        """Store a small side object of the partition (e.g. the engine's matched pairs), replacing it."""
        obstore.put(self._store, f"{self._dir(partition)}/{name}", data)

    def get_object(self, partition: int, name: str) -> bytes | None:
        """A side object of the partition, or ``None`` when there is none."""
        try:
            return bytes(obstore.get(self._store, f"{self._dir(partition)}/{name}").bytes())
        except FileNotFoundError:
            return None

    def drop(self, partition: int) -> None:
        """Forget a partition's history (its manifest first, so a reader sees none rather than part)."""
        with self._lock(partition):
            self._delete_prefix(f"{self._dir(partition)}/")
