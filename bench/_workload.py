"""The benchmark workload: the studies and the synthetic population every engine is given.

Studies
    The sample studies in ``rules/`` replicated to the requested count. Copy 0 of each sample is the sample
    itself; copy ``k`` gets the id ``<ID>-R<k>`` and every numeric literal in its criteria scaled by a factor
    that cycles through :data:`THRESHOLD_FACTORS` (integers stay integers), so the replicas are distinct
    studies with overlapping but different eligible sets. Windows (``'90d'``) and ``at_least`` counts are left
    alone. Test cases are dropped from the replicas (their expectations no longer hold); concept sets are
    shared by copying ``rules/concepts/``.

Population
    ``connectors.synthetic.population.generate_frames(n, seed, now)`` (the synthetic connector), written once
    per scale to Parquet so the per-cell subprocesses of the scaling table read the same patients.

Two workloads (:data:`WORKLOADS`), chosen with ``--workload`` by ``bench.screen_profile``, ``bench.sql_peer``
and shown side by side by ``python -m bench``:

``replica``    the above: the sample studies replicated (shared concept sets) over the synthetic connector's
               population (~23 facts per patient);
``realistic``  100 genuinely distinct generated studies (:mod:`bench._realistic_studies`) over a population of
               ~64 facts per patient with a long tail and ~5,800 distinct codes (:mod:`bench._realistic_population`),
               cached as ``persons-realistic-N-sSEED.parquet`` / ``facts-realistic-N-sSEED.parquet``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import yaml

__all__ = [
    "BENCH_NOW",
    "THRESHOLD_FACTORS",
    "WORKLOADS",
    "generate_population",
    "load_population",
    "population_paths",
    "realistic_paths",
    "replicate_studies",
    "sample_rule_files",
    "write_population",
    "write_realistic_population",
    "write_workload_studies",
]

WORKLOADS = ("replica", "realistic")

#: The screening instant of every benchmark (fixed, so runs are comparable and the samples' windows hit).
BENCH_NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)

#: Threshold multipliers for replica k (cycled). 1.0 never appears after copy 0, so replicas differ.
THRESHOLD_FACTORS = (0.9, 1.1, 0.8, 1.2, 0.95, 1.05, 0.85, 1.15, 0.75, 1.25)

_NUMBER = re.compile(r"(?<![\w.$'\"])(\d+(?:\.\d+)?)(?![\w.$'\"])")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def sample_rule_files(rules_dir: Path, peer_translatable: bool = False) -> list[Path]:
    """The study files in ``rules_dir`` (not ``concepts/``), sorted by name.

    ``peer_translatable``: only the studies the peer engines can be given (``bench._features.plan_studies``
    translates them): the rule language v2 constructs (per-fact filters, relations, episodes, exposures, trends)
    have no peer translation, so the peer comparison keeps to the samples written in the first language.
    """
    files = sorted(p for p in rules_dir.glob("*.yaml") if p.is_file())
    if not peer_translatable:
        return files
    from bench._features import PEER_TRANSFORMS, plan_studies
    from screener.rules import load_study

    keep = []
    for path in files:
        try:
            _plans, features, _concepts = plan_studies([load_study(path)])
        except Exception:  # any construct the translator does not know: not a peer workload
            continue
        if all(f.transform in PEER_TRANSFORMS for f in features.values()):
            keep.append(path)
    return keep


def _scale_literals(expr: str, factor: float) -> str:
    """Scale every numeric literal outside quoted strings by ``factor`` (integers rounded, never to 0)."""

    def scale(m: re.Match[str]) -> str:
        text = m.group(1)
        if "." in text:
            decimals = len(text.split(".")[1])
            return f"{float(text) * factor:.{decimals}f}"
        value = int(text)
        if value == 0:
            return text
        return str(max(1, round(value * factor)))

    out: list[str] = []
    pos = 0
    for q in _QUOTED.finditer(expr):
        out.append(_NUMBER.sub(scale, expr[pos : q.start()]))
        out.append(q.group(0))
        pos = q.end()
    out.append(_NUMBER.sub(scale, expr[pos:]))
    return "".join(out)


def _scale_criteria(node: Any, factor: float) -> Any:
    if isinstance(node, str):
        return _scale_literals(node, factor)
    if isinstance(node, dict):
        return {k: (v if k == "at_least" else _scale_criteria(v, factor)) for k, v in node.items()}
    return node


def replicate_studies(rules_dir: Path, count: int, out_dir: Path, peer_translatable: bool = False) -> list[Path]:
    """Write ``count`` study files built from the samples in ``rules_dir`` into ``out_dir``; return their paths.

    ``peer_translatable``: replicate only the samples the peers can run (see :func:`sample_rule_files`).

    :raises ValueError: when ``rules_dir`` holds no study file.
    """
    samples = sample_rule_files(rules_dir, peer_translatable)
    if not samples:
        raise ValueError(f"no study files in {rules_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if (rules_dir / "concepts").is_dir():
        shutil.copytree(rules_dir / "concepts", out_dir / "concepts", dirs_exist_ok=True)
    docs = [yaml.safe_load(p.read_text()) for p in samples]
    written: list[Path] = []
    for k in range(count):
        base, rep = docs[k % len(docs)], k // len(docs)
        doc = dict(base)
        doc.pop("tests", None)
        doc["study"] = dict(base["study"])
        if rep:
            factor = THRESHOLD_FACTORS[(rep - 1) % len(THRESHOLD_FACTORS)]
            doc["study"]["id"] = f"{base['study']['id']}-R{rep:02d}"
            for group in ("include", "exclude"):
                if doc.get(group):
                    doc[group] = _scale_criteria(doc[group], factor)
        path = out_dir / f"{doc['study']['id'].lower()}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=200))
        written.append(path)
    return written


def generate_population(n: int, seed: int = 7, now: datetime = BENCH_NOW) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(persons, facts)`` for ``n`` synthetic patients, in :mod:`screener.state`'s schemas."""
    from connectors.synthetic.population import generate_frames

    persons, facts = generate_frames(n, seed=seed, now=now)
    return persons, facts


def population_paths(directory: Path, n: int, seed: int = 7) -> tuple[Path, Path]:
    return directory / f"persons-{n}-s{seed}.parquet", directory / f"facts-{n}-s{seed}.parquet"


def write_population(directory: Path, n: int, seed: int = 7, now: datetime = BENCH_NOW) -> tuple[Path, Path]:
    """Generate ``n`` patients once and store them as Parquet (reused when already there)."""
    directory.mkdir(parents=True, exist_ok=True)
    persons_path, facts_path = population_paths(directory, n, seed)
    if not (persons_path.exists() and facts_path.exists()):
        persons, facts = generate_population(n, seed, now)
        persons.write_parquet(persons_path)
        facts.write_parquet(facts_path)
    return persons_path, facts_path


def load_population(directory: Path, n: int, seed: int = 7) -> tuple[pl.DataFrame, pl.DataFrame]:
    persons_path, facts_path = population_paths(directory, n, seed)
    return pl.read_parquet(persons_path), pl.read_parquet(facts_path)


def subset(persons: pl.DataFrame, facts: pl.DataFrame, n: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The first ``n`` patients and their facts."""
    head = persons.head(n)
    return head, facts.filter(pl.col("patient_id").is_in(head["patient_id"].implode()))


def study_ids(paths: Sequence[Path]) -> list[str]:
    return [yaml.safe_load(p.read_text())["study"]["id"] for p in paths]


def realistic_paths(directory: Path, n: int, seed: int = 7) -> tuple[Path, Path]:
    return directory / f"persons-realistic-{n}-s{seed}.parquet", directory / f"facts-realistic-{n}-s{seed}.parquet"


def write_realistic_population(directory: Path, n: int, seed: int = 7, now: datetime = BENCH_NOW) -> tuple[Path, Path]:
    """The realistic population of ``n`` patients as Parquet (generated chunk by chunk; reused when there)."""
    from bench._realistic_population import write

    directory.mkdir(parents=True, exist_ok=True)
    persons_path, facts_path = realistic_paths(directory, n, seed)
    if not (persons_path.exists() and facts_path.exists()):
        write(persons_path, facts_path, n, seed, now)
    return persons_path, facts_path


def write_workload_studies(workload: str, count: int, out_dir: Path, rules_dir: Path, seed: int = 7) -> list[Path]:
    """``count`` study files of ``workload`` (``replica``: :func:`replicate_studies` of ``rules_dir``;
    ``realistic``: :func:`bench._realistic_studies.write_studies`) written into ``out_dir``.

    :raises ValueError: for an unknown workload.
    """
    if workload == "replica":
        return replicate_studies(rules_dir, count, out_dir)
    if workload == "realistic":
        from bench._realistic_studies import write_studies

        return write_studies(out_dir, count, seed)
    raise ValueError(f"unknown workload {workload!r}; expected one of {', '.join(WORKLOADS)}")
