"""The benchmark harness at a tiny scale: it runs, agrees with screener, and refuses to time a wrong engine.

Nothing here measures speed; ``python -m bench --scale 10k,100k,1m`` does, by hand (see BENCHMARKS.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _bench_importable() -> Iterator[None]:
    # bench/ is a top-level folder of the repository, not an installed package.
    sys.path.insert(0, str(ROOT))
    yield
    sys.path.remove(str(ROOT))


def test_smoke_run_writes_every_table(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "python -m bench --smoke" in text
    for heading in ("## Machine", "## Workload", "## 1. Full screen", "## 2. Scaling"):
        assert heading in text
    for peer in ("pyjexl-raw", "pyjexl", "rule-engine", "simpleeval", "zen-engine"):
        assert f"| {peer} " in text
    assert "Outcomes agree exactly" in text
    # the realistic workload's row beside the replica row (screener only), and its population in the workload table
    assert re.search(
        r"^\| \*\*screener\*\*, outcomes, realistic workload \(14 distinct studies, [\d,]+ facts\) \| 400 x 14 \|",
        text,
        re.M,
    )
    assert re.search(r"^\| 400 \(realistic\) \| [\d,]+ \| \d+\.\d \|", text, re.M)
    scaling = text.split("## 2. Scaling", 1)[1]
    rows = [line for line in scaling.splitlines() if line.startswith("| 200 ") or line.startswith("| 400 ")]
    assert len(rows) == 4  # 2 populations x 2 study counts
    assert all("MiB" in r for r in rows)


def _workload(tmp_path: Path, n_patients: int = 150) -> tuple[object, object, list[object]]:
    from bench._workload import BENCH_NOW, generate_population, replicate_studies
    from screener.rules import load_studies

    replicate_studies(ROOT / "rules", 14, tmp_path / "studies", peer_translatable=True)  # the 7 first-language samples
    loaded = load_studies([tmp_path / "studies"])
    assert not loaded.errors
    persons, facts = generate_population(n_patients, seed=3, now=BENCH_NOW)
    return persons, facts, loaded.studies


def test_replicas_are_distinct_studies_with_scaled_thresholds(tmp_path: Path) -> None:
    from bench._workload import _scale_literals

    assert _scale_literals("egfr|latest('180d') >= 25 && age <= 80 && t2dm|ever", 1.2) == (
        "egfr|latest('180d') >= 30 && age <= 96 && t2dm|ever"
    )
    assert _scale_literals("x|latest('1y') >= 0.15", 0.8) == "x|latest('1y') >= 0.12"
    _, _, studies = _workload(tmp_path, 10)
    ids = [s.id for s in studies]
    assert len(set(ids)) == 14
    assert sum(i.endswith("-R01") for i in ids) == 7


def test_every_engine_agrees_including_unknowns(tmp_path: Path) -> None:
    from bench._full_screen import compare_peers
    from bench._workload import BENCH_NOW

    persons, facts, studies = _workload(tmp_path)
    # Unknown demographics and settings must flow through every engine's three-valued encoding.
    import polars as pl

    persons = persons.with_columns(  # type: ignore[attr-defined]
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(None).otherwise(pl.col("birth_date")).alias("birth_date"),
        pl.when(pl.int_range(pl.len()) % 5 == 0).then(None).otherwise(pl.col("setting")).alias("setting"),
    )
    result = compare_peers(
        persons, facts, studies, BENCH_NOW, ["pyjexl-raw", "pyjexl", "rule-engine", "simpleeval", "zen-engine"], runs=1
    )
    assert result.outcome_counts.get("possible", 0) > 0  # unknowns were exercised
    assert {p.name for p in result.peers} == {"pyjexl-raw", "pyjexl", "rule-engine", "simpleeval", "zen-engine"}
    assert all(p.timing.median > 0 for p in result.peers)


def test_a_peer_that_disagrees_is_never_timed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import _full_screen, _peers
    from bench._workload import BENCH_NOW

    persons, facts, studies = _workload(tmp_path, 60)

    def always_true(leaf: object, features: object) -> object:
        return lambda ctx: True

    liar = _peers.Peer("liar", "pyjexl", always_true, "features", "says yes to everything")
    monkeypatch.setitem(_peers.PEERS, "liar", liar)
    with pytest.raises(_full_screen.MismatchError, match="liar disagrees with screener"):
        _full_screen.compare_peers(persons, facts, studies, BENCH_NOW, ["liar"], runs=1)


EDGE_STUDY = """\
study:
  id: BENCH-EDGE
  title: "Every construct of the rule language, for the peers' translations"
  summary: "Not a real study."
  sponsor: non-commercial
  portfolio: false
  target: 10
  opens: 2020-01-01
  closes: 2035-12-31
  settings: [community, hospital, primary-care, home]
  team: bench
concepts:
  egfr: {ref: egfr}
  hba1c: {ref: hba1c}
  t2dm: {ref: type2_diabetes}
  ckd: {ref: chronic_kidney_disease}
include:
  arithmetic: (egfr|latest('2y') + 10) / 2 >= 20 || hba1c|max('5y') * 2 > 100
  ternary: "(t2dm|ever ? egfr|min('5y') : 90) < 75"
  negation: "!(sex in ['M']) || !(imd_decile <= 3)"
  grouped:
    at_least: 1
    of:
      some_ckd: ckd|count('10y') >= 1
      low_mean_egfr: egfr|mean('3y') < 70 && age >= 40
      recent_hba1c: hba1c|days_since < 400
exclude:
  remainder: egfr|latest('1y') % 7 == 3 || age_days // 365 > 85 || imd_quintile ^ 2 == 25
"""


def test_translations_cover_every_construct(tmp_path: Path) -> None:
    import shutil

    import polars as pl

    from bench._full_screen import compare_peers
    from bench._workload import BENCH_NOW, generate_population
    from screener.rules import load_studies

    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copytree(ROOT / "rules" / "concepts", rules / "concepts")
    (rules / "edge.yaml").write_text(EDGE_STUDY)
    loaded = load_studies([rules])
    assert not loaded.errors, loaded.errors
    persons, facts = generate_population(400, seed=3, now=BENCH_NOW)
    persons = persons.with_columns(
        pl.when(pl.int_range(pl.len()) % 6 == 0).then(None).otherwise(pl.col("sex")).alias("sex"),
        pl.when(pl.int_range(pl.len()) % 4 == 0).then(None).otherwise(pl.col("imd_decile")).alias("imd_decile"),
    )
    result = compare_peers(
        persons,
        facts,
        loaded.studies,
        BENCH_NOW,
        ["pyjexl-raw", "pyjexl-raw+all", "pyjexl", "rule-engine", "simpleeval", "zen-engine"],
        runs=1,
    )
    assert len(result.outcome_counts) >= 2, result.outcome_counts  # not a trivial all-the-same answer
