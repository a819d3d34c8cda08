"""Scaling: one (patients, studies) cell per subprocess, so each cell's peak RSS is its own.

Run by :mod:`bench.__main__` as ``python -m bench._scaling --persons P --facts F --studies DIR --runs N
--mode outcomes|explain`` (see :func:`bench._full_screen.screen_outcomes`); prints one JSON object on its last
stdout line::

    {"patients": 100000, "facts": 1234567, "studies": 50, "timing": {...}, "rss_loaded": bytes,
     "rss_peak": bytes, "outcomes": {"eligible": n, ...}}

``rss_loaded`` is the resident set after reading the Parquet population and compiling the studies;
``rss_peak`` the high-water mark over the timed screens (sampled by psutil every 5 ms and checked against
the kernel's ``VmHWM``). Python's ``tracemalloc`` cannot see Polars' Rust allocations, RSS can.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CellResult", "run_cell"]


@dataclass(frozen=True)
class CellResult:
    patients: int
    facts: int
    studies: int
    mode: str
    timing: Any  # bench._stats.Timing
    rss_loaded: int
    rss_peak: int
    outcomes: dict[str, int]
    chunk: int | None = None


def run_cell(
    persons: Path,
    facts: Path,
    studies_dir: Path,
    runs: int,
    chunk: int | None,
    mode: str = "outcomes",
    timeout: float = 3600,
) -> CellResult:
    """Run one cell in a fresh interpreter and parse its report.

    :raises RuntimeError: with the child's stderr when it fails.
    """
    from bench._stats import Timing

    cmd = [
        sys.executable,
        "-m",
        "bench._scaling",
        "--persons",
        str(persons),
        "--facts",
        str(facts),
        "--studies",
        str(studies_dir),
        "--runs",
        str(runs),
        "--mode",
        mode,
    ]
    if chunk:
        cmd += ["--chunk", str(chunk)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"scaling cell failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return CellResult(
        data["patients"],
        data["facts"],
        data["studies"],
        mode,
        Timing.from_dict(data["timing"]),
        data["rss_loaded"],
        data["rss_peak"],
        data["outcomes"],
        chunk,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._scaling")
    parser.add_argument("--persons", type=Path, required=True)
    parser.add_argument("--facts", type=Path, required=True)
    parser.add_argument("--studies", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=None)
    parser.add_argument("--mode", choices=("outcomes", "explain"), default="outcomes")
    args = parser.parse_args(argv)

    import gc

    import polars as pl

    from bench._full_screen import screen_outcomes
    from bench._stats import PeakRSS, timed_runs
    from bench._workload import BENCH_NOW
    from screener.rules import load_studies

    persons = pl.read_parquet(args.persons)
    facts = pl.read_parquet(args.facts)
    loaded = load_studies([args.studies])
    if loaded.errors:
        print("\n".join(str(e) for e in loaded.errors), file=sys.stderr)
        return 1
    studies = loaded.studies
    gc.collect()
    with PeakRSS() as rss:
        rss_loaded = rss.current()
        timing, result = timed_runs(
            lambda: screen_outcomes(persons, facts, studies, BENCH_NOW, args.chunk, args.mode), args.runs
        )
    outcomes = dict(result.group_by("outcome").len().iter_rows())
    print(
        json.dumps(
            {
                "patients": persons.height,
                "facts": facts.height,
                "studies": len(studies),
                "timing": timing.as_dict(),
                "rss_loaded": rss_loaded,
                "rss_peak": rss.peak,
                "outcomes": outcomes,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
