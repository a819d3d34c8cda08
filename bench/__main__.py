"""``python -m bench``: run the benchmarks and write BENCHMARKS.md.

Usage::

    python -m bench --scale 10k,100k,1m [--studies 10,50,100] [--runs N] [--peer-patients N]
                    [--sections full,scaling,streaming,backfill] [--out BENCHMARKS.md] [--smoke]

``--smoke`` is the tiny scale the unit test runs (a few hundred patients, no broker sections): it checks the
harness, not the speed. Everything else is heavy: run it once, on a quiet machine.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench._stats import fmt_count, machine, parse_count

SECTIONS = ("full", "scaling", "streaming", "backfill")
ROOT = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", default="10k,100k,1m", help="patient counts, e.g. 10k,100k,1m")
    p.add_argument("--studies", default="10,50,100", help="study counts, e.g. 10,50,100")
    p.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median, min, max)")
    p.add_argument(
        "--peer-patients",
        type=int,
        default=1000,
        help="patients in the subset the peers evaluate one by one (their rate is scaled)",
    )
    p.add_argument(
        "--peers",
        default="pyjexl-raw,pyjexl-raw+all,pyjexl,rule-engine,simpleeval,zen-engine",
        help="peer engines; NAME+all evaluates every criterion instead of stopping at the first decisive one",
    )
    p.add_argument(
        "--chunk", type=int, default=None, help="screen this many patients per screen() call (default: all at once)"
    )
    p.add_argument(
        "--explain-limit",
        type=parse_count,
        default=5_000_000,
        help="run the full-explanation screen() only for cells of at most this many patient-studies",
    )
    p.add_argument(
        "--explain-chunk",
        type=parse_count,
        default=50_000,
        help="the largest cell's screen() run (one run) passes this many patients per call, as the "
        "engine's full re-screen does; 0 skips it",
    )
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument(
        "--workloads",
        default="replica,realistic",
        help="full-screen rows: replica (sample replicas, with the peers) and/or realistic (distinct generated "
        "studies over the realistic population, screener only: the peers cannot run the v2 constructs)",
    )
    p.add_argument("--rules", type=Path, default=ROOT / "rules")
    p.add_argument("--workdir", type=Path, default=None, help="where populations and study copies go")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--streaming-events", type=int, default=200_000)
    p.add_argument("--latency-rate", type=int, default=200, help="events/s for the latency measurement")
    p.add_argument("--backfill-rows", type=int, default=1_000_000)
    p.add_argument("--smoke", action="store_true", help="tiny scale, harness check only")
    return p


def _log(msg: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.smoke:
        args.scale, args.studies, args.runs, args.explain_limit = "200,400", "7,14", 1, 3000
        args.explain_chunk = 100
        args.peer_patients = min(args.peer_patients, 100)
        if "--sections" not in argv:
            args.sections = "full,scaling"
    scales = sorted(parse_count(s) for s in args.scale.split(","))
    study_counts = sorted(int(s) for s in args.studies.split(","))
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s): {', '.join(sorted(unknown))}")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    command = "python -m bench " + shlex.join(argv)
    started = datetime.now(UTC)
    host = machine()

    with tempfile.TemporaryDirectory(prefix="screener-bench-") as tmp:
        work = args.workdir or Path(tmp)
        report: dict[str, Any] = {
            "command": command,
            "started": started,
            "machine": host,
            "sections": {},
            "scales": scales,
            "study_counts": study_counts,
            "runs": args.runs,
        }
        from bench._workload import BENCH_NOW, replicate_studies, sample_rule_files, write_population

        # the peers cannot run the rule language v2 constructs: the full-screen and scaling sections replicate
        # the samples written in the first language (the engine's streaming section reads every sample)
        report["samples"] = len(sample_rule_files(args.rules, peer_translatable=True))

        if {"full", "scaling"} & set(sections):
            study_dirs = {}
            for n in study_counts:
                study_dirs[n] = work / f"studies-{n}"
                replicate_studies(args.rules, n, study_dirs[n], peer_translatable=True)
            populations = {}
            for n in scales:
                _log(f"population {fmt_count(n)}")
                t0 = time.perf_counter()
                populations[n] = write_population(work / "population", n, args.seed, BENCH_NOW)
                report.setdefault("generation", {})[n] = time.perf_counter() - t0
            report["now"] = BENCH_NOW

            from bench._scaling import run_cell

            cells: dict[tuple[int, int, str], Any] = {}
            grid = (
                [(p, s) for p in scales for s in study_counts]
                if "scaling" in sections
                else [(scales[-1], study_counts[-1])]
            )
            wanted = [(p, s, "outcomes") for p, s in grid]
            wanted += [(p, s, "explain") for p, s in grid if p * s <= args.explain_limit]
            for p, s, mode in wanted:
                _log(f"scaling cell {fmt_count(p)} patients x {s} studies ({mode})")
                cell = cells[(p, s, mode)] = run_cell(*populations[p], study_dirs[s], args.runs, args.chunk, mode)
                _log(f"  {cell.timing.median:.2f} s, peak {cell.rss_peak / 2**20:.0f} MiB")
            top = (scales[-1], study_counts[-1])
            if "full" in sections and args.explain_chunk and top[0] * top[1] > args.explain_limit:
                _log(f"screen() with explanations, {fmt_count(top[0])} x {top[1]}, {args.explain_chunk:,} per call")
                cells[(*top, "explain")] = run_cell(
                    *populations[top[0]], study_dirs[top[1]], 1, args.explain_chunk, "explain"
                )
                _log(f"  {cells[(*top, 'explain')].timing.median:.2f} s")
            report["cells"] = cells
            report["chunk"] = args.chunk
            report["explain_limit"] = args.explain_limit

            if "full" in sections:
                report["sections"]["full"] = _full(
                    args,
                    populations[scales[-1]],
                    study_dirs[study_counts[-1]],
                    cells[(scales[-1], study_counts[-1], "outcomes")],
                    peers,
                )
                if "realistic" in args.workloads.split(","):
                    report["sections"]["full"]["realistic"] = _realistic(args, work, scales[-1], study_counts[-1])
                    report["realistic"] = report["sections"]["full"]["realistic"]
            if "scaling" in sections:
                report["sections"]["scaling"] = True

        if "streaming" in sections:
            from bench._streaming import run_streaming

            _log("streaming")
            report["sections"]["streaming"] = _guard(
                lambda: run_streaming(
                    args.streaming_events, args.runs, args.latency_rate, work / "streaming", args.rules
                )
            )
        if "backfill" in sections:
            from bench._backfill import run_backfill

            _log("backfill")
            report["sections"]["backfill"] = _guard(
                lambda: run_backfill(args.backfill_rows, args.runs, work / "backfill")
            )

        report["finished"] = datetime.now(UTC)
        report["load_end"] = machine()["load"]
        from bench._report import render

        args.out.write_text(render(report))
        _log(f"wrote {args.out}")
    return 0


def _guard(section: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a broker section; a failure is reported in BENCHMARKS.md instead of losing the other sections."""
    try:
        return section()
    except Exception as exc:  # the report must still be written, saying what failed and why
        _log(f"  failed: {exc!r}")
        return {"error": "".join(traceback.format_exception_only(exc)).strip()}


def _realistic(args: argparse.Namespace, work: Path, patients: int, studies: int) -> dict[str, Any]:
    """Screener alone on the realistic workload (``bench._workload``), in its own process like a scaling cell."""
    from bench._scaling import run_cell
    from bench._workload import BENCH_NOW, write_realistic_population, write_workload_studies

    study_dir = work / f"studies-realistic-{studies}"
    write_workload_studies("realistic", studies, study_dir, args.rules, args.seed)
    _log(f"realistic population {fmt_count(patients)}")
    t0 = time.perf_counter()
    population = write_realistic_population(work / "population", patients, args.seed, BENCH_NOW)
    generation = time.perf_counter() - t0
    _log(f"realistic workload: {fmt_count(patients)} patients x {studies} distinct studies (outcomes)")
    cell = run_cell(*population, study_dir, args.runs, args.chunk, "outcomes")
    _log(f"  {cell.timing.median:.2f} s, peak {cell.rss_peak / 2**20:.0f} MiB")
    return {"cell": cell, "generation": generation}


def _full(
    args: argparse.Namespace, population: tuple[Path, Path], studies_dir: Path, cell: Any, peers: Sequence[str]
) -> dict[str, Any]:
    import polars as pl

    from bench._full_screen import compare_peers
    from bench._workload import BENCH_NOW
    from screener.rules import load_studies

    sub_persons = pl.scan_parquet(population[0]).head(args.peer_patients).collect()
    sub_facts = (
        pl.scan_parquet(population[1]).filter(pl.col("patient_id").is_in(sub_persons["patient_id"].implode())).collect()
    )
    loaded = load_studies([studies_dir])
    if loaded.errors:
        raise SystemExit("study files failed to load:\n" + "\n".join(str(e) for e in loaded.errors))
    _log(f"peers on {sub_persons.height} patients x {len(loaded.studies)} studies: {', '.join(peers)}")
    comparison = compare_peers(sub_persons, sub_facts, loaded.studies, BENCH_NOW, peers, args.runs)
    return {"comparison": comparison, "cell": cell, "facts_subset": sub_facts.height}


if __name__ == "__main__":
    raise SystemExit(main())
