"""Small timing and machine helpers shared by the benchmark sections."""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

__all__ = ["PeakRSS", "Timing", "machine", "package_version", "timed_runs"]

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """Seconds per run: median, min and max of ``runs`` runs."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {"samples": list(self.samples), "median": self.median, "min": self.min, "max": self.max}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Timing:
        return cls(tuple(d["samples"]))


def timed_runs(fn: Callable[[], T], runs: int) -> tuple[Timing, T]:
    """Call ``fn`` ``runs`` times; return the timings and the last result."""
    samples: list[float] = []
    result: T | None = None
    for _ in range(max(1, runs)):
        result = None  # let the previous result go before the next run
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    assert result is not None
    return Timing(tuple(samples)), result


class PeakRSS:
    """Peak resident set size of this process, sampled every ``interval`` s and from ``getrusage``.

    ``tracemalloc`` does not see Polars' Rust allocations; RSS does.
    """

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        return int(self._proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self.current())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _vm_hwm())


def _vm_hwm() -> int:
    """The kernel's RSS high-water mark of this process (``VmHWM``), catching spikes between samples.

    Not ``getrusage().ru_maxrss``: on Linux that survives fork and exec, so a child of a big parent reports the
    parent's peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    """CPU model, cores, RAM, OS and Python, for the report header."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = "unknown"
    try:
        import psutil

        ram = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "ram": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def fmt_rate(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.2f} {unit}"
    return f"{x:.0f}"


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def fmt_seconds(t: float) -> str:
    if t >= 100:
        return f"{t:,.0f} s"
    if t >= 1:
        return f"{t:.2f} s"
    return f"{t * 1000:.1f} ms"


def timing_cell(t: Timing) -> str:
    """``median (min-max)``."""
    return f"{fmt_seconds(t.median)} ({fmt_seconds(t.min)} - {fmt_seconds(t.max)})"


def parse_count(text: str) -> int:
    """``10k`` -> 10000, ``1m`` -> 1000000."""
    t = text.strip().lower()
    mult = 1
    if t.endswith("k"):
        mult, t = 1000, t[:-1]
    elif t.endswith("m"):
        mult, t = 1_000_000, t[:-1]
    return int(float(t) * mult)


def fmt_count(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def fmt_ratio(x: float) -> str:
    """``1,234x``, ``12x``, ``3.4x``, ``0.05x``."""
    if x >= 100:
        return f"{x:,.0f}x"
    if x >= 10:
        return f"{x:.0f}x"
    if x >= 1:
        return f"{x:.1f}x"
    return f"{x:.2g}x"
