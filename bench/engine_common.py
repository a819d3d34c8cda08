"""Helpers for the engine benchmarks (``bench/engine_*.py``): a 50-study rules folder and event payloads."""

from __future__ import annotations

import re
import shutil
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_studies(out: Path, n: int = 50) -> Path:
    """Write ``n`` open studies into ``out``: the sample studies in ``rules/`` cloned round-robin under new ids,
    with their dates widened to 2020-01-01 .. 2035-12-31 so every one is open. Returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.yaml"):
        old.unlink()
    shutil.rmtree(out / "concepts", ignore_errors=True)
    if (ROOT / "rules" / "concepts").exists():
        shutil.copytree(ROOT / "rules" / "concepts", out / "concepts")
    sources = sorted((ROOT / "rules").glob("*.yaml"))
    for i in range(n):
        text = sources[i % len(sources)].read_text()
        text = re.sub(r"(\n\s*id:\s*)([A-Z0-9-]+)", rf"\g<1>\g<2>-{i:02d}", text, count=1)
        text = re.sub(r"(\n\s*opens:\s*)\S+", r"\g<1>2020-01-01", text, count=1)
        text = re.sub(r"(\n\s*closes:\s*)\S+", r"\g<1>2035-12-31", text, count=1)
        (out / f"study-{i:02d}.yaml").write_text(text)
    return out


def event_payloads(n_events: int, now: datetime, seed: int = 11, start_index: int = 0) -> list[tuple[bytes, bytes]]:
    """``n_events`` (key, value) pairs from the synthetic population, patient by patient."""
    from connectors.synthetic.population import generate
    from screener.events import dump_event

    out: list[tuple[bytes, bytes]] = []
    for patient in generate(max(1, n_events // 5), seed=seed, now=now, start_index=start_index):
        for ev in patient:
            out.append((ev.patient_id.encode(), dump_event(ev)))
            if len(out) >= n_events:
                return out
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
