"""Time :func:`screener.rules.screen` at the two ends that matter: small calls (the engine's micro-batches) and
the whole population.

    python -m bench.screen_profile small  [--patients 10] [--studies 50] [--calls 30] [--evidence MODE]
    python -m bench.screen_profile large  [--patients 20000] [--studies 50] [--evidence MODE] [--chunk N] [--repeat R]
                                          [--rows all|matches] [--split join|filter|scan]
                                          [--workload replica|realistic] [--workers N] [--all-columns]

``MODE``: all | matches | none | outcomes (``screen(evidence=...)``); ``--rows``: ``screen(rows=...)`` (with
``matches`` the outcome counts come from :func:`screener.rules.screen_with_counts`, so ``ineligible`` is still
counted over every (study, patient)).

``--workload`` (``bench._workload.WORKLOADS``): ``replica`` (default) replicates the samples in ``rules/`` to
``--studies`` (``bench._workload.replicate_studies``) over ``connectors.synthetic.population.generate_frames``
(seed 7, ``BENCH_NOW``); a subset of the 100k or 1M file is used when only that exists. ``realistic`` generates
``--studies`` distinct studies (``bench._realistic_studies``) over the realistic population of exactly
``--patients`` (``bench._realistic_population``, seed 7). Populations are cached as Parquet in ``--pop-dir``
(default ``/tmp/screener-screen-profile``).

    python -m bench.screen_profile large --workload realistic --patients 1000000 --studies 100 \
        --evidence outcomes --rows matches --chunk 250000 --split scan --repeat 2

``--split scan`` never holds the whole facts frame: each chunk's facts are read from the Parquet file when it is
screened (a patient-id range that prunes row groups, then the exact ids), inside the timed part; use it at 1M and
2M realistic patients (7.7 GiB of facts in memory at 1M). It reads only the columns a screen of these studies
reads (``screener.rules.features.screen_columns``; ``--fact-columns``: every column ``screen()`` may read,
``screener.rules._facts.FACT_COLUMNS``, as sessions 4 to 6 did; ``--all-columns``: every column of the file, as
sessions before 2026-12-02 session 4 did). ``--workers N`` screens N chunks at once, one thread each (Polars runs
its queries without the GIL; N chunks in memory at a time): wall time on an idle host, the CPU-seconds stay those
of one.

``small`` screens consecutive slices of ``--patients`` patients and prints the per-call median, p90 and
mean; ``large`` screens everyone once (after one warm-up on 1000 patients) and prints the wall time, the
CPU-seconds of every thread (``time.process_time``: the figure to compare on a loaded host), and the
process's peak RSS (VmHWM), also as it was before the timed part (loading the population). ``--profile FILE``
writes a cProfile of the timed part.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from screener import _allocator

# ``large`` is a batch screen: as ``screener screen`` does, before Polars loads (a _RJEM_MALLOC_CONF you set wins:
# give _RJEM_MALLOC_CONF=dirty_decay_ms:500,muzzy_decay_ms:1000 for Polars' own default). ``small`` times the
# engine's micro-batches, and the engine keeps Polars' default.
if sys.argv[1:2] == ["large"]:
    _allocator.apply(["screen"], os.environ)

import polars as pl

if TYPE_CHECKING:
    from screener.state import PatientState

T = TypeVar("T")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _population(pop_dir: Path, n: int, workload: str = "replica") -> tuple[pl.DataFrame, pl.DataFrame]:
    from bench._workload import population_paths, subset, write_population, write_realistic_population

    if workload == "realistic":
        persons_path, facts_path = write_realistic_population(pop_dir, n)
        return pl.read_parquet(persons_path), pl.read_parquet(facts_path)

    for size in (n, 100_000, 1_000_000):
        persons_path, facts_path = population_paths(pop_dir, size)
        if size >= n and persons_path.exists() and facts_path.exists():
            persons, facts = pl.read_parquet(persons_path), pl.read_parquet(facts_path)
            return (persons, facts) if size == n else subset(persons, facts, n)
    write_population(pop_dir, n)
    persons_path, facts_path = population_paths(pop_dir, n)
    return pl.read_parquet(persons_path), pl.read_parquet(facts_path)


def _studies(count: int, workload: str = "replica") -> list[Any]:
    from bench._workload import write_workload_studies
    from screener.rules import load_studies

    out = Path(tempfile.mkdtemp(prefix="screen-profile-rules-"))
    write_workload_studies(workload, count, out, Path("rules"))
    loaded = load_studies([out])
    if loaded.errors:
        raise SystemExit(f"rule errors: {loaded.errors[:3]}")
    return loaded.studies


def main() -> None:
    from bench._workload import BENCH_NOW, WORKLOADS
    from screener.rules import screen
    from screener.rules._facts import FACT_COLUMNS
    from screener.rules.features import screen_columns
    from screener.state import PatientState

    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("small", "large"))
    ap.add_argument("--patients", type=int)
    ap.add_argument("--studies", type=int, default=50)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument(
        "--evidence",
        default=None,
        help="screen(evidence=...): all | matches | none | outcomes (default: small all, large matches)",
    )
    ap.add_argument("--rows", choices=("all", "matches"), default="all", help="screen(rows=...)")
    ap.add_argument(
        "--split",
        choices=("join", "filter", "scan"),
        default="join",
        help="large with --chunk: how facts are split into chunks (inside the timed part; see _chunks)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="large: timed runs (the best is reported)")
    ap.add_argument("--chunk", type=int, default=0, help="large: screen this many patients per call")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="large with --chunk: screen this many chunks at once, one thread each (Polars runs without the GIL)",
    )
    ap.add_argument(
        "--all-columns",
        action="store_true",
        help="--split scan: read every column of the facts file (default: only the columns these studies read)",
    )
    ap.add_argument(
        "--fact-columns",
        action="store_true",
        help="--split scan: read every column screen() may read (default: only those these studies read)",
    )
    ap.add_argument("--pop-dir", type=Path, default=Path("/tmp/screener-screen-profile"))
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--workload", choices=WORKLOADS, default="replica", help="see the module docstring")
    args = ap.parse_args()
    small = args.what == "small"
    chunk = args.chunk
    n = args.patients or (10 if small else 20_000)
    evidence = args.evidence or ("all" if small else "matches")
    kw: dict[str, Any] = {} if evidence == "all" else {"evidence": evidence}
    if args.rows != "all":
        kw["rows"] = args.rows

    studies = _studies(args.studies, args.workload)
    total = n * args.calls if small else n
    facts: pl.DataFrame | pl.LazyFrame
    if not small and args.split == "scan":
        if not chunk:
            raise SystemExit("--split scan needs --chunk N")
        persons_path, facts_path = _population_paths(args.pop_dir, max(total, 1000), args.workload)
        persons, facts = pl.read_parquet(persons_path), pl.scan_parquet(facts_path)
        if not args.all_columns:
            wanted = set(FACT_COLUMNS) if args.fact_columns else set(screen_columns(studies))
            facts = facts.select([c for c in facts.collect_schema() if c in wanted])
    else:
        persons, facts = _population(args.pop_dir, max(total, 1000), args.workload)
    n_facts = facts.height if isinstance(facts, pl.DataFrame) else facts.select(pl.len()).collect().item()
    print(
        f"workload={args.workload}: {len(studies)} studies, {persons.height} patients, {n_facts} facts "
        f"{'loaded' if isinstance(facts, pl.DataFrame) else 'to scan'}; evidence={evidence}, rows={args.rows}"
    )
    prof = cProfile.Profile() if args.profile else None

    if small:
        ids = persons["patient_id"]
        assert isinstance(facts, pl.DataFrame)  # --split scan is for large only
        state = PatientState(persons, facts)
        screen(state.select_patients(ids[:n]), studies, BENCH_NOW, **kw)  # warm-up
        times = []
        if prof:
            prof.enable()
        for k in range(args.calls):
            part = state.select_patients(ids[k * n : (k + 1) * n])
            t0 = time.perf_counter()
            screen(part, studies, BENCH_NOW, **kw)
            times.append(time.perf_counter() - t0)
        if prof:
            prof.disable()
        times.sort()
        print(
            f"screen() {n} patients x {len(studies)} studies, {args.calls} calls: "
            f"median {statistics.median(times) * 1000:.1f} ms, p90 {times[int(0.9 * len(times))] * 1000:.1f} ms, "
            f"mean {statistics.mean(times) * 1000:.1f} ms"
        )
    else:
        persons = persons.head(n)
        if isinstance(facts, pl.DataFrame):
            facts = facts.filter(pl.col("patient_id").is_in(persons["patient_id"].implode()))
            n_facts = facts.height
        warm = PatientState(persons.head(1000), _pick_facts(facts, persons.head(1000)))
        screen(warm, studies, BENCH_NOW, **kw)
        rss_before = _peak_rss_mb()  # loading and subsetting the population
        if prof:
            prof.enable()
        walls, cpus = [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            rows, outcomes = _large(persons, facts, studies, chunk, kw, args.split, args.workers)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        if prof:
            prof.disable()
        split = f" split={args.split}" + (f" workers={args.workers}" if args.workers > 1 else "") if chunk else ""
        print(
            f"workload={args.workload}: screen() {n} patients x {len(studies)} studies ({n_facts} facts), "
            f"evidence={evidence}, "
            f"rows={args.rows}, chunk={chunk or 'none'}{split}: "
            f"best {min(walls):.2f} s of {[round(w, 2) for w in walls]} "
            f"(CPU-s, every thread: {[round(c, 2) for c in cpus]}), {rows} rows, "
            f"outcomes {dict(sorted(outcomes.items()))}, peak RSS {_peak_rss_mb():.0f} MB "
            f"({rss_before:.0f} MB before the timed part), "
            f"{_allocator.VARIABLE}={os.environ.get(_allocator.VARIABLE, '')!r}"
        )
    if prof:
        prof.dump_stats(str(args.profile))


def _population_paths(pop_dir: Path, n: int, workload: str) -> tuple[Path, Path]:
    """The cached Parquet files holding at least ``n`` patients of ``workload`` (generated when missing)."""
    from bench._workload import population_paths, write_population, write_realistic_population

    if workload == "realistic":
        return write_realistic_population(pop_dir, n)
    for size in (n, 100_000, 1_000_000):
        paths = population_paths(pop_dir, size)
        if size >= n and paths[0].exists() and paths[1].exists():
            return paths
    return write_population(pop_dir, n)


def _pick_facts(facts: pl.DataFrame | pl.LazyFrame, persons: pl.DataFrame) -> pl.DataFrame:
    """The facts of ``persons``; from a scan, a patient-id range first (row groups outside it are skipped)."""
    ids = persons["patient_id"]
    if isinstance(facts, pl.DataFrame):
        return facts.filter(pl.col("patient_id").is_in(ids.implode()))
    lo, hi = ids.min(), ids.max()
    return facts.filter(
        pl.col("patient_id").is_between(pl.lit(lo), pl.lit(hi)), pl.col("patient_id").is_in(ids.implode())
    ).collect()


def _chunks(
    persons: pl.DataFrame, facts: pl.DataFrame | pl.LazyFrame, chunk: int, split: str
) -> Iterator[PatientState]:
    """The population ``chunk`` patients at a time. ``filter``: each chunk's facts picked by one ``is_in`` when
    it is screened (one chunk's copy alive at a time); ``scan``: likewise, read from the Parquet file (the whole
    facts frame is never in memory); ``join``: every fact tagged with its chunk by a join, then
    ``partition_by`` (a copy of all facts, twice, up front: several seconds and GB at 1M patients)."""
    from screener.state import PatientState

    if split in ("filter", "scan"):
        for start in range(0, persons.height, chunk):
            p = persons.slice(start, chunk)
            yield PatientState(p, _pick_facts(facts, p))
        return
    assert isinstance(facts, pl.DataFrame)
    index = persons.select("patient_id", (pl.int_range(pl.len()) // chunk).alias("_c"))
    pp = persons.join(index, on="patient_id").partition_by("_c", as_dict=True, include_key=False)
    fp = facts.join(index, on="patient_id").partition_by("_c", as_dict=True, include_key=False)
    for key, p in pp.items():
        yield PatientState(p, fp.get(key, facts.clear()))


def _each_chunk(
    persons: pl.DataFrame,
    facts: pl.DataFrame | pl.LazyFrame,
    chunk: int,
    split: str,
    workers: int,
    one: Callable[[PatientState], T],
) -> Iterator[T]:
    """``one(state)`` for each chunk, in order. With ``workers`` > 1 (``filter``/``scan`` splits), that many chunks
    are read and screened at once, one thread each (at most ``workers`` chunks in memory)."""
    if workers <= 1 or split == "join":
        for state in _chunks(persons, facts, chunk, split):
            yield one(state)
        return
    from screener.state import PatientState

    def task(start: int) -> T:
        p = persons.slice(start, chunk)
        return one(PatientState(p, _pick_facts(facts, p)))

    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[T]] = deque()
        for start in range(0, persons.height, chunk):
            if len(pending) >= workers:
                yield pending.popleft().result()
            pending.append(pool.submit(task, start))
        while pending:
            yield pending.popleft().result()


def _large(
    persons: pl.DataFrame,
    facts: pl.DataFrame | pl.LazyFrame,
    studies: list[Any],
    chunk: int,
    kw: dict[str, Any],
    split: str = "join",
    workers: int = 1,
) -> tuple[int, dict[str, int]]:
    from bench._workload import BENCH_NOW
    from screener.rules import screen, screen_with_counts
    from screener.state import PatientState

    def one(state: PatientState) -> tuple[int, dict[str, int]]:
        if kw.get("rows") == "matches":
            r, counts = screen_with_counts(state, studies, BENCH_NOW, **{"evidence": "all", **kw})
            totals = counts.select("eligible", "possible", "ineligible").sum().row(0, named=True)
            return r.height, {o: int(c) for o, c in totals.items() if c}
        r = screen(state, studies, BENCH_NOW, **kw)
        return r.height, dict(r.group_by("outcome").len().iter_rows())

    if chunk:
        rows = 0
        outcomes: dict[str, int] = {}
        for n, part in _each_chunk(persons, facts, chunk, split, workers, one):
            rows += n
            for o, c in part.items():
                outcomes[o] = outcomes.get(o, 0) + c
    else:
        assert isinstance(facts, pl.DataFrame)
        rows, outcomes = one(PatientState(persons, facts))
    return rows, outcomes


if __name__ == "__main__":
    main()
