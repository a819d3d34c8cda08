"""Where a rule change's new hot views are loaded from the history store (:class:`ViewLoader`): a worker process
at low CPU priority (the default), or the calling thread.

Why a process. Polars has one thread pool per process and its size cannot be set per query. A rebuild's scans
and pruning (seconds per partition) fill that pool, and every Polars call of the batch thread then waits behind
them: at 200k patients on 2 cores the live events' p99 went from 0.3 s to 4.5-6.3 s during a rebuild, although
both threads release the GIL. In a child process the rebuild has a pool of its own, and at ``nice`` 10 the OS
gives the engine's threads the cores whenever they want them (the rebuild takes what is left).

The child opens the store itself (the store's class, URL and options: nothing is shared but files), loads the
partition pruned with the new filter, sorts it by patient and writes the frames as uncompressed Arrow IPC files
in a scratch folder; the parent reads them (no decoding: Arrow IPC is the in-memory layout) and deletes them.
Errors in the child come back as a message (``StoreError`` is not rebuilt from its pickle).
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import pickle
import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from screener.history import HistoryStore, StoreError
from screener.state import FactFilter, PatientState

T = TypeVar("T")

#: The rebuild worker's niceness. Against the engine's threads (nice 0) it gets about a tenth of a busy core
#: (CFS weights 110 vs 1024); 19 (weight 15) let unrelated work on a shared host starve it: a 200k rebuild's
#: loads took 58 s instead of 29 s, for no gain in live latency.
REBUILD_NICE = 10

#: One view as the worker returns it: the IPC files of persons, facts and retracted, and the store's offset.
ViewFiles = tuple[str, str, str, int]


def lower_priority(thread: bool = False) -> None:
    """Run at niceness ``REBUILD_NICE`` at least: the calling thread only (``thread``; Linux keeps a niceness per
    thread, and a process it starts inherits it), else the whole process."""
    with contextlib.suppress(OSError, AttributeError):
        who = threading.get_native_id() if thread else 0
        if os.getpriority(os.PRIO_PROCESS, who) < REBUILD_NICE:
            os.setpriority(os.PRIO_PROCESS, who, REBUILD_NICE)


#: The free space ``/dev/shm`` needs to hold the views handed back (one partition's view at a time).
SHM_MIN_FREE = 4 * 2**30


def scratch_dir(state_dir: Path) -> Path:
    """Where the worker hands views back: a folder in ``/dev/shm`` when the host has one (memory: at 1M
    patients a partition's view is 1.2 GB of Arrow, which took 10 s to write to disk and 8 s to read back), named
    after ``state_dir`` so a restarted engine clears what a crashed one left; else ``state_dir/rebuild``. A
    ``/dev/shm`` with less than :data:`SHM_MIN_FREE` free (a container's default is 64 MB) is not used."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free >= SHM_MIN_FREE:
        digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]
        return shm / f"screener-rebuild-{digest}"
    return Path(state_dir) / "rebuild"


def portable(keep: FactFilter | None) -> FactFilter | None:
    """``keep`` as the worker can receive it. Its ``judge`` (the fast form of ``expr`` on distinct keys, built
    from the compiled studies) does not pickle: the rule compiler's JEXL closures are local lambdas, and every
    rebuild failed with "Can't pickle local object" and fell back to restoring each partition on the consumer's
    thread. The worker gets ``expr`` and ``since`` alone, which by ``judge``'s contract keep the same facts (it
    evaluates ``expr`` once on the partition's distinct keys)."""
    if keep is None:
        return None
    try:
        pickle.dumps(keep)
        return keep
    except Exception:
        return FactFilter(keep.expr, keep.since)


def _write(frame: pl.DataFrame, path: Path) -> str:
    frame.write_ipc(path, compression="uncompressed")
    return str(path)


def _by_patient(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` stably sorted by patient; one the store already gave in that order (a base without segments:
    the load keeps the base's order) is not sorted again (8 s for 4M facts on a loaded host)."""
    if frame["patient_id"].is_sorted():
        return frame
    return frame.sort("patient_id", maintain_order=True)


def read_twice(read: Callable[[], T]) -> T | str:
    """In the worker: ``read()``, once more when it raises :class:`StoreError` (a compaction that replaced the
    files between the manifest and the scan is the usual cause); the second error's text when it fails again."""
    error = ""
    for _ in range(2):
        try:
            return read()
        except StoreError as exc:
            error = str(exc)
    return error or "unreadable"


def load_view_files(
    store_cls: type[HistoryStore],
    url: str,
    options: dict[str, str],
    partition: int,
    keep: FactFilter | None,
    out_dir: str,
) -> ViewFiles | str | None:
    """In the worker: the partition's view pruned with ``keep`` written to ``out_dir`` (``None``: the store has
    nothing for it; a string: why it could not be read). Read once more on a failure: a compaction that
    replaced the files between the manifest and the scan is the usual cause."""
    store = store_cls(url, options)
    got = read_twice(lambda: store.load(partition, keep=keep))
    if isinstance(got, str):
        return got
    if got is None:
        return None
    state, offset = got
    folder = Path(out_dir) / f"p{partition}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    return (
        _write(_by_patient(state.persons), folder / "persons.arrow"),
        _write(_by_patient(state.facts), folder / "facts.arrow"),
        _write(state.retracted, folder / "retracted.arrow"),
        offset,
    )


def read_view_files(files: ViewFiles) -> tuple[PatientState, int]:
    """In the engine: the state the worker wrote, its files removed."""
    persons, facts, retracted, offset = files
    try:
        frames = [pl.read_ipc(f) for f in (persons, facts, retracted)]
    finally:
        shutil.rmtree(Path(persons).parent, ignore_errors=True)
    return PatientState(persons=frames[0], facts=frames[1], retracted=frames[2]), offset


def _warm() -> None:
    """In a new worker: import what its loads use."""
    import screener.engine._delta  # noqa: F401


class ViewLoader:
    """Loads partitions' views from ``store`` under a new filter, in a worker process (``process=True``) or in
    the calling thread. The worker is started at the first load and kept for the next rule change."""

    def __init__(self, store: HistoryStore, scratch: Path, process: bool = True) -> None:
        self.store = store
        self.scratch = scratch
        self.process = process
        self._pool: ProcessPoolExecutor | None = None

    def load(self, partition: int, keep: FactFilter | None) -> tuple[PatientState, int] | None:
        """The partition's view and offset, ``None`` when the store has none. :raises StoreError: unreadable."""
        if not self.process:
            return self.store.load(partition, keep=keep)
        got = self._run(load_view_files, partition, portable(keep))
        if isinstance(got, str):
            raise StoreError(
                f"history unreadable in the rebuild worker: {got[:200]}", url=self.store.url, partition=partition
            )
        return None if got is None else read_view_files(got)

    def load_delta(self, partition: int, old: FactFilter, new: FactFilter) -> tuple[pl.DataFrame | None, int] | None:
        """The stored facts of the partition that ``new`` keeps and ``old`` does not, and the store's offset
        (:func:`screener.engine._delta.load_delta_file`; the frame is ``None`` when the whole view must be
        loaded). ``None`` when the store has nothing for it. :raises StoreError: unreadable."""
        got = self.load_delta_gated(partition, old, new, None)
        return None if got is None else (got[0], got[1])

    def load_delta_gated(
        self, partition: int, old: FactFilter, new: FactFilter, gates: list[list[pl.Expr]] | None
    ) -> tuple[pl.DataFrame | None, int, pl.Series | None] | None:
        """:meth:`load_delta` and, with ``gates``, the stored patients that pass them (see
        :func:`screener.engine._delta.delta_and_gated`), in one read."""
        from screener.engine._delta import delta_and_gated, load_delta_file

        store = self.store
        if not self.process:
            return delta_and_gated(store, partition, old, new, gates)
        got = self._run(load_delta_file, partition, portable(old), portable(new), gates)
        if isinstance(got, str):
            raise StoreError(f"history unreadable for the delta: {got[:200]}", url=store.url, partition=partition)
        if got is None:
            return None
        path, offset, gated = got
        if path is None:
            return None, offset, gated
        try:
            return pl.read_ipc(path), offset, gated
        finally:
            shutil.rmtree(Path(path).parent, ignore_errors=True)

    def load_gated(self, partition: int, gates: list[list[pl.Expr]]) -> pl.Series | None:
        """The partition's stored patients that pass some study's gates
        (:func:`screener.engine._narrow.gated_patients`), ``None`` when the store has nothing for it.
        :raises StoreError: unreadable."""
        from screener.engine._narrow import gated_patients, load_gated

        if not self.process:
            got = self.store.view(partition, parallel="prefiltered")
            return None if got is None else gated_patients(got[1], gates)
        found: pl.Series | str | None = self._run(load_gated, partition, gates)
        if isinstance(found, str):
            raise StoreError(
                f"history unreadable for the gates: {found[:200]}", url=self.store.url, partition=partition
            )
        return found

    def warm(self) -> None:
        """Start the worker now, without waiting for it (its start, imports included, took 5-10 s at nice 10 on
        a busy host: the first partition of the first rule change paid it)."""
        if self.process and self._pool is None:
            self._start()
            assert self._pool is not None
            self._pool.submit(_warm)

    def _start(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)  # what a worker of a crashed engine left
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=lower_priority
        )

    def _run(self, fn: Any, partition: int, *filters: Any) -> Any:
        """``fn(store class, url, options, partition, *filters, scratch)`` in the worker (started again, once,
        when it died)."""
        store = self.store
        for attempt in range(2):
            if self._pool is None:
                self._start()
            assert self._pool is not None
            self.scratch.mkdir(parents=True, exist_ok=True)
            try:
                args = (type(store), store.url, store.storage_options, partition, *filters, str(self.scratch))
                return self._pool.submit(fn, *args).result()
            except BrokenProcessPool:
                # The worker died (killed, out of memory): a new one is started, once.
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop the worker (a load in progress is abandoned) and remove its scratch folder."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        shutil.rmtree(self.scratch, ignore_errors=True)
