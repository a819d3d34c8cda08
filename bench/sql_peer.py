"""``python -m bench.sql_peer``: screen() against DuckDB running screener's own generated SQL, side by side.

Usage::

    POLARS_MAX_THREADS=2 python -m bench.sql_peer --patients 100000 [--threads 2] [--runs 3] [--seed 1]
        [--spark local[2]]

Both read the same synthetic population: Polars from the frames (as the engine holds them), DuckDB from the same
frames written to Parquet (``read_parquet``; DuckDB's scan is part of its time, the Parquet write is not;
DuckDB's result is a table in its memory, as screen()'s is a frame). The
SQL comes from :func:`screener.rules.sql.to_sql` for every sample study in ``rules/`` it can lower (no
hand-written SQL; the others are named and left out of both sides).
Every (study, patient) outcome must be identical before any timing counts; the best of ``--runs`` is reported
for each side, ratio first (DuckDB time / screener time: above 1 means screener is faster). ``--spark MASTER``
also times the same SQL on Spark (:func:`screener.sql_spark.spark_screen`: Parquet in, Parquet out, the shared
steps cached), after one untimed warm-up run whose outcomes must be identical too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sql_peer", description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rules", default=str(ROOT / "rules"))
    ap.add_argument("--spark", default=None, metavar="MASTER", help="also time Spark on MASTER, e.g. local[2]")
    args = ap.parse_args(argv)
    os.environ.setdefault("POLARS_MAX_THREADS", str(args.threads))

    import polars as pl  # after POLARS_MAX_THREADS is set

    from connectors.synthetic.population import generate_frames
    from screener.errors import RuleError
    from screener.rules import load_studies, screen
    from screener.rules.sql import to_sql
    from screener.sql_duckdb import connect, prepare, run_parquet, write_parquet
    from screener.state import PatientState

    if pl.thread_pool_size() != args.threads:
        print(f"warning: Polars uses {pl.thread_pool_size()} threads (set POLARS_MAX_THREADS before starting)")
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    studies = []
    for s in load_studies(sorted(Path(args.rules).glob("*.yaml"))).studies:
        try:
            to_sql([s], now)
            studies.append(s)
        except RuleError as exc:  # a construct the SQL lowering does not support yet: said, never hidden
            print(f"left out {s.id}: {str(exc).splitlines()[0]}")
    persons, facts = generate_frames(args.patients, seed=args.seed, now=now)
    state = PatientState(persons=persons, facts=facts)
    print(f"{args.patients:,} patients, {facts.height:,} facts, {len(studies)} studies, {args.threads} threads each")
    with tempfile.TemporaryDirectory(prefix="sql-peer-") as tmp:
        fpath, ppath = write_parquet(state, tmp)
        ours = screen(state, studies, now, evidence="none")
        theirs = run_parquet(studies, now, fpath, ppath, threads=args.threads)
        key = ["study_id", "patient_id"]
        a = ours.select(*key, "outcome").sort(key)
        b = theirs.select(*key, "outcome").sort(key)
        if a.height != b.height or not a.equals(b):
            diff = a.join(b, on=key, how="full", suffix="_sql").filter(
                pl.col("outcome").ne_missing(pl.col("outcome_sql"))
            )
            print(f"outcomes differ on {diff.height} rows: no timing reported", file=sys.stderr)
            return 1
        print(f"outcomes identical on all {a.height:,} (study, patient) rows")
        t_ours, t_sql = [], []
        for _ in range(args.runs):
            t = time.perf_counter()
            screen(state, studies, now, evidence="none")
            t_ours.append(time.perf_counter() - t)
            # DuckDB materialises its result in its own memory (as screen() returns a frame in Polars'),
            # with the SQL generated inside the timing as screen() compiles inside its own; the query runs as
            # its steps (shared ones as temp tables: DuckDB plans the whole query far slower than it runs it).
            con = connect(args.threads)
            t = time.perf_counter()
            con.execute("CREATE TEMP TABLE _out AS " + prepare(con, studies, now, fpath, ppath))
            t_sql.append(time.perf_counter() - t)
            n = con.execute("SELECT count(*) FROM _out").fetchone()[0]
            con.close()
            assert n == a.height, (n, a.height)
        t_spark = _spark(args, studies, now, fpath, ppath, a) if args.spark else []
    best_ours, best_sql = min(t_ours), min(t_sql)
    print(f"ratio DuckDB/screener: {best_sql / best_ours:.2f}x (above 1: screener faster)")
    print(f"screener screen(evidence='none'): best {best_ours:.2f} s of {args.runs}")
    print(f"DuckDB generated SQL over Parquet: best {best_sql:.2f} s of {args.runs}")
    if t_spark:
        print(f"Spark ({args.spark}) generated SQL, Parquet in and out: best {min(t_spark):.2f} s of {args.runs}")
    return 0


def _spark(
    args: argparse.Namespace, studies: list[Any], now: datetime, fpath: Path, ppath: Path, want: Any
) -> list[float]:
    from screener.sql_spark import spark_screen, spark_session

    spark = spark_session(args.spark, shuffle_partitions=2 * args.threads)
    key = ["study_id", "patient_id"]
    got = spark_screen(spark, studies, now, fpath, ppath).select(*key, "outcome").sort(key)
    if not got.equals(want):
        raise SystemExit("Spark outcomes differ from screener's: no timing reported")
    print(f"Spark outcomes identical on all {got.height:,} rows")
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        spark_screen(spark, studies, now, fpath, ppath)
        times.append(time.perf_counter() - t)
    spark.stop()
    return times


if __name__ == "__main__":
    raise SystemExit(main())
