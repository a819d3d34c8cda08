"""A timeline of an engine's work for ``bench.engine_latency --timeline FILE``: every batch's stages, polls,
maintenance calls (snapshots, history appends, the sweep, rule polls, gauges) and garbage collections, as JSON
lines with wall-clock start and end, so latency spikes can be laid beside what the engine was doing."""

from __future__ import annotations

import functools
import gc
import json
import threading
import time
from pathlib import Path
from typing import Any

#: Engine methods timed on every call (those that exist on the engine; wrapped on the instance).
SPANS = (
    "_poll_batch",
    "_prepare",
    "_execute",
    "_finish",
    "settle",
    "reload_rules",
    "_sweep_unpublished",
    "_snapshot",
    "_check_health",
    "_update_gauges",
    "_drain",
    "_flush_matches",
    "_commit",
    "_plan",
    "_screen_and_record",
)


class Timeline:
    """Collects spans; :meth:`attach` wraps an engine's methods and hooks the garbage collector."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._gc_t0: dict[int, float] = {}
        self.batch = threading.local()

    def add(self, kind: str, t0: float, t1: float, **extra: Any) -> None:
        row = {"kind": kind, "t0": t0, "t1": t1, "ms": round((t1 - t0) * 1000, 2)}
        row["thread"] = threading.current_thread().name
        row.update(extra)
        with self._lock:
            self.rows.append(row)

    def attach(self, engine: Any) -> None:
        for name in SPANS:
            method = getattr(engine, name, None)
            if method is not None:
                setattr(engine, name, self._wrap(name, method))
        job_of = engine._history_job

        def history_job(partition: int) -> Any:
            job = job_of(partition)
            if job is None:
                return None

            def timed() -> None:
                t0 = time.time()
                try:
                    job()
                finally:
                    self.add("history_job", t0, time.time(), partition=partition)

            return timed

        engine._history_job = history_job
        gc.callbacks.append(self._on_gc)
        from screener.state import LiveState

        compact = LiveState.compact
        timeline = self

        def timed_compact(live: Any) -> None:
            t0, tail = time.time(), live._tail_facts.height
            compact(live)
            if tail:
                timeline.add("compact", t0, time.time(), tail_facts=tail, facts=live._facts.height)

        setattr(LiveState, "compact", timed_compact)  # noqa: B010 - bench only: time every fold of the tail
        from screener.engine._affects import AffectsIndex
        from screener.state import FactFilter

        self._patched: list[tuple[Any, str, Any]] = [(LiveState, "compact", compact)]
        for cls, name, kind in (
            (FactFilter, "learn", "keep_learn"),
            (AffectsIndex, "learn", "affects_learn"),
            (AffectsIndex, "__init__", "affects_build"),
        ):
            original = getattr(cls, name)
            self._patched.append((cls, name, original))
            setattr(cls, name, self._wrap_plain(kind, original))
        self._unpatch = self._restore

    def detach(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        unpatch = getattr(self, "_unpatch", None)
        if unpatch is not None:
            unpatch()

    def _wrap(self, name: str, method: Any) -> Any:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.time(), time.thread_time()
            extra: dict[str, Any] = {}
            if name == "_execute" and args:
                self.batch.number = args[0].number
                extra = {"batch": args[0].number, "records": args[0].total}
                parts = getattr(args[0], "by_part", {})
                owner = getattr(method, "__self__", None)
                if owner is not None:
                    extra["tail_facts"] = sum(
                        owner._parts[p].state._tail_facts.height for p in parts if p in owner._parts
                    )
            try:
                out = method(*args, **kwargs)
            finally:
                t1 = time.time()
                if name == "_poll_batch":
                    extra = {"records": sum(len(v) for v in out.values())} if isinstance(out, dict) else {}
                elif name == "_finish" and args:
                    b = args[0]
                    extra = {
                        "batch": b.number,
                        "records": b.total,
                        "parse_ms": round(b.parse_s * 1000, 1),
                        "apply_ms": round(b.apply_s * 1000, 1),
                        "screen_ms": round(b.screen_s * 1000, 1),
                        "flush_ms": round(b.flush_s * 1000, 1),
                    }
                if name in ("_execute", "_prepare", "_poll_batch"):
                    extra["cpu_ms"] = round((time.thread_time() - c0) * 1000, 1)
                if name != "settle" or t1 - t0 > 0.001:
                    self.add(name, t0, t1, **extra)
            return out

        return timed

    def _restore(self) -> None:
        for cls, name, original in self._patched:
            setattr(cls, name, original)

    def _wrap_plain(self, kind: str, method: Any) -> Any:
        timeline = self

        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.time()
            try:
                return method(*args, **kwargs)
            finally:
                if time.time() - t0 > 0.002:
                    timeline.add(kind, t0, time.time())

        return timed

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        tid = threading.get_ident()
        if phase == "start":
            self._gc_t0[tid] = time.time()
        else:
            t0 = self._gc_t0.pop(tid, None)
            if t0 is not None:
                self.add("gc", t0, time.time(), generation=info.get("generation"), collected=info.get("collected"))

    def write(self, path: Path, samples: list[tuple[float, float, int | None]]) -> None:
        """The spans, then one ``match`` row per latency sample (wall time stored, latency, batch number)."""
        with path.open("w") as fh:
            for row in sorted(self.rows, key=lambda r: r["t0"]):
                fh.write(json.dumps(row) + "\n")
            for wall, lat, batch in samples:
                fh.write(json.dumps({"kind": "match", "t1": wall, "latency": lat, "batch": batch}) + "\n")


def summarise(path: Path, q: float = 99.0) -> list[str]:
    """The batches whose matches' latency is above the ``q``-th percentile, beside what overlapped them."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    matches = [r for r in rows if r["kind"] == "match"]
    if not matches:
        return ["no matches"]
    ordered = sorted(m["latency"] for m in matches)
    cut = ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
    slow = sorted({m["batch"] for m in matches if m["latency"] >= cut and m["batch"] is not None})
    execs = {r["batch"]: r for r in rows if r["kind"] == "_execute"}
    finishes = {r["batch"]: r for r in rows if r["kind"] == "_finish"}
    others = [r for r in rows if r["kind"] not in ("match", "_execute", "_finish")]
    out = [f"p{q:g} {cut * 1000:.0f} ms: {len(slow)} batches"]
    for b in slow:
        ex, fin = execs.get(b), finishes.get(b)
        if ex is None:
            continue
        worst = max(m["latency"] for m in matches if m["batch"] == b)
        lo = ex["t0"] - worst
        near = [
            f"{r['kind']}({r['thread'][-8:]}) {r['ms']:.0f}ms @{r['t0'] - ex['t0']:+.2f}"
            for r in others
            if r["t1"] >= lo and r["t0"] <= ex["t1"] and (r["ms"] >= 5 or r["kind"] == "gc")
        ]
        stages = {k: fin[k] for k in ("parse_ms", "apply_ms", "screen_ms", "flush_ms")} if fin else {}
        out.append(
            f"batch {b}: worst {worst * 1000:.0f} ms, {ex['records']} records, execute {ex['ms']:.0f} ms {stages}; "
            + "; ".join(near[:12])
        )
    return out
