"""``python -m bench.sql_peer``: screen() against DuckDB running screener's own generated SQL, side by side.

Usage::

    POLARS_MAX_THREADS=2 python -m bench.sql_peer --patients 100000 [--threads 2] [--runs 3] [--seed 1]
                                                  [--workload replica|realistic] [--studies N] [--chunk N]
                                                  [--spark local[2]]

``--workload replica`` (default): the sample studies in ``rules/`` replicated to ``--studies`` (default: one copy
of each sample, i.e. the samples themselves) over ``generate_frames(--patients, seed=--seed)`` at 2026-06-01 12:00
UTC. ``--workload realistic``: ``--studies`` (default 100) distinct generated studies over the realistic
population (``bench._workload.write_realistic_population``, cached in ``--pop-dir``) at ``BENCH_NOW``.

Both read the same synthetic population: Polars from the frames (as the engine holds them), DuckDB from the same
frames written to Parquet (``read_parquet``; DuckDB's scan is part of its time, the Parquet write is not;
DuckDB's result is a table in its memory, as screen()'s is a frame). The
SQL comes from :func:`screener.rules.sql.to_sql` for every study it can lower (no hand-written SQL); the
others are named with the construct that stopped them, counted by construct, and left out of both sides.
Every (study, patient) outcome must be identical before any timing counts; the best of ``--runs`` is reported
for each side, ratio first (DuckDB time / screener time: above 1 means screener is faster). ``--spark MASTER``
also times the same SQL on Spark (:func:`screener.sql_spark.spark_screen`: Parquet in, Parquet out, the shared
steps cached), after one untimed warm-up run whose outcomes must be identical too.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _lowerable(studies: list[Any], now: datetime) -> tuple[list[Any], dict[str, str]]:
    """The studies :func:`to_sql` lowers, and for the others the first line of its ``RuleError``."""
    from screener.errors import RuleError
    from screener.rules.sql import to_sql

    ok, left_out = [], {}
    for s in studies:
        try:
            to_sql([s], now)
            ok.append(s)
        except RuleError as exc:  # a construct the SQL lowering does not support yet: said, never hidden
            left_out[s.id] = str(exc).splitlines()[0]
    return ok, left_out


def _construct(message: str) -> str:
    """The construct a lowering error names ("fact filters", "the transform 'after'", ...), else the message."""
    m = re.search(r"(?:does not support|supports) (.+?)(?: \(.*\))?(?: yet)?$", message)
    return (m.group(1) if m else message)[:60]


def _screen(state: Any, studies: list[Any], now: datetime, chunk: int) -> Any:
    """``screen(evidence="none")`` of everyone, ``chunk`` patients per call when ``chunk`` (concatenated)."""
    import polars as pl

    from screener.rules import screen

    if not chunk:
        return screen(state, studies, now, evidence="none")
    ids = state.persons["patient_id"]
    parts = [
        screen(state.select_patients(ids[i : i + chunk]), studies, now, evidence="none")
        for i in range(0, len(ids), chunk)
    ]
    return pl.concat(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sql_peer", description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rules", default=str(ROOT / "rules"))
    ap.add_argument("--workload", choices=("replica", "realistic"), default="replica")
    ap.add_argument("--studies", type=int, default=None, help="replica: the samples; realistic: 100")
    ap.add_argument("--pop-dir", type=Path, default=Path("/tmp/screener-screen-profile"))
    ap.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="screener screens this many patients per call (inside its timing; bounds its memory at 1M realistic)",
    )
    ap.add_argument("--spark", default=None, metavar="MASTER", help="also time Spark on MASTER, e.g. local[2]")
    ap.add_argument(
        "--no-duckdb",
        action="store_true",
        help="with --spark: Spark against screener only (at 1M the DuckDB side needs more memory than a shared "
        "machine has)",
    )
    ap.add_argument(
        "--duckdb-memory",
        default="8GB",
        help="DuckDB's memory_limit (it spills beyond it; its own default, 80%% of RAM, got the 1M replica "
        "run OOM-killed on a shared 24 GB machine)",
    )
    args = ap.parse_args(argv)
    if args.no_duckdb and not args.spark:
        ap.error("--no-duckdb needs --spark")
    os.environ.setdefault("POLARS_MAX_THREADS", str(args.threads))

    import polars as pl  # after POLARS_MAX_THREADS is set

    from bench._workload import BENCH_NOW, sample_rule_files, write_realistic_population, write_workload_studies
    from screener.rules import load_studies
    from screener.sql_duckdb import connect, prepare, run_parquet, write_parquet
    from screener.state import PatientState

    if pl.thread_pool_size() != args.threads:
        print(f"warning: Polars uses {pl.thread_pool_size()} threads (set POLARS_MAX_THREADS before starting)")
    rules = Path(args.rules)
    count = args.studies or (len(sample_rule_files(rules)) if args.workload == "replica" else 100)
    with tempfile.TemporaryDirectory(prefix="sql-peer-rules-") as rules_tmp:
        loaded = load_studies(write_workload_studies(args.workload, count, Path(rules_tmp), rules))
    if loaded.errors:
        print("\n".join(str(e) for e in loaded.errors[:5]), file=sys.stderr)
        return 1
    if args.workload == "realistic":
        now = BENCH_NOW
        paths = write_realistic_population(args.pop_dir, args.patients)
        persons, facts = pl.read_parquet(paths[0]), pl.read_parquet(paths[1])
    else:
        from connectors.synthetic.population import generate_frames

        now = datetime(2026, 6, 1, 12, tzinfo=UTC)
        persons, facts = generate_frames(args.patients, seed=args.seed, now=now)
    studies, left_out = _lowerable(loaded.studies, now)
    for sid, why in left_out.items():
        print(f"left out {sid}: {why}")
    if left_out:
        by = sorted(Counter(_construct(w) for w in left_out.values()).items(), key=lambda kv: -kv[1])
        print(
            f"{len(left_out)} of {len(loaded.studies)} studies not lowered to SQL: "
            + "; ".join(f"{what} x{n}" for what, n in by)
        )
    if not studies:
        print("no study lowers to SQL: nothing to compare", file=sys.stderr)
        return 2
    state = PatientState(persons=persons, facts=facts)
    print(
        f"workload={args.workload}: {args.patients:,} patients, {facts.height:,} facts, {len(studies)} of "
        f"{len(loaded.studies)} studies compared, {args.threads} threads each (DuckDB memory_limit "
        f"{args.duckdb_memory}); load {os.getloadavg()}"
    )
    with tempfile.TemporaryDirectory(prefix="sql-peer-") as tmp:
        fpath, ppath = write_parquet(state, tmp)
        ours = _screen(state, studies, now, args.chunk)
        key = ["study_id", "patient_id"]
        a = ours.select(*key, "outcome").sort(key)
        if args.no_duckdb:
            del ours
            t_ours = []
            for _ in range(args.runs):
                t = time.perf_counter()
                _screen(state, studies, now, args.chunk)
                t_ours.append(time.perf_counter() - t)
            t_spark = _spark(args, studies, now, fpath, ppath, a)
            print(f"ratio Spark/screener: {min(t_spark) / min(t_ours):.2f}x (above 1: screener faster)")
            per_call = f", {args.chunk:,} patients per call" if args.chunk else ""
            print(f"screener screen(evidence='none'){per_call}: best {min(t_ours):.2f} s of {args.runs}")
            print(f"Spark ({args.spark}) generated SQL, Parquet in and out: best {min(t_spark):.2f} s of {args.runs}")
            return 0
        theirs = run_parquet(studies, now, fpath, ppath, threads=args.threads, memory_limit=args.duckdb_memory)
        b = theirs.select(*key, "outcome").sort(key)
        if a.height != b.height or not a.equals(b):
            diff = a.join(b, on=key, how="full", suffix="_sql").filter(
                pl.col("outcome").ne_missing(pl.col("outcome_sql"))
            )
            print(f"outcomes differ on {diff.height} rows: no timing reported", file=sys.stderr)
            return 1
        print(f"outcomes identical on all {a.height:,} (study, patient) rows")
        del ours, theirs, b  # only ``a`` is kept (Spark's check): 1M x 17 rows each
        t_ours, t_sql = [], []
        for _ in range(args.runs):
            t = time.perf_counter()
            _screen(state, studies, now, args.chunk)
            t_ours.append(time.perf_counter() - t)
            # DuckDB materialises its result in its own memory (as screen() returns a frame in Polars'),
            # with the SQL generated inside the timing as screen() compiles inside its own; the query runs as
            # its steps (shared ones as temp tables: DuckDB plans the whole query far slower than it runs it).
            con = connect(args.threads, args.duckdb_memory)
            t = time.perf_counter()
            con.execute("CREATE TEMP TABLE _out AS " + prepare(con, studies, now, fpath, ppath))
            t_sql.append(time.perf_counter() - t)
            n = con.execute("SELECT count(*) FROM _out").fetchone()[0]
            con.close()
            assert n == a.height, (n, a.height)
        t_spark = _spark(args, studies, now, fpath, ppath, a) if args.spark else []
    best_ours, best_sql = min(t_ours), min(t_sql)
    print(f"ratio DuckDB/screener: {best_sql / best_ours:.2f}x (above 1: screener faster)")
    per_call = f", {args.chunk:,} patients per call" if args.chunk else ""
    print(f"screener screen(evidence='none'){per_call}: best {best_ours:.2f} s of {args.runs}")
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
    # The checked run is timed too (it does the same work as the others: the whole result comes back to
    # Python), so ``--runs 1`` screens once on Spark, which at 1M patients takes a quarter of an hour here.
    t = time.perf_counter()
    got = spark_screen(spark, studies, now, fpath, ppath)
    times = [time.perf_counter() - t]
    got = got.select(*key, "outcome").sort(key)
    if not got.equals(want):
        raise SystemExit("Spark outcomes differ from screener's: no timing reported")
    print(f"Spark outcomes identical on all {got.height:,} rows")
    for _ in range(args.runs - 1):
        t = time.perf_counter()
        spark_screen(spark, studies, now, fpath, ppath)
        times.append(time.perf_counter() - t)
    spark.stop()
    return times


if __name__ == "__main__":
    raise SystemExit(main())
