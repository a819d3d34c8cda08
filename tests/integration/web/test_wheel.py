"""A plain install: the wheel built from this repository, installed into a fresh virtual environment (no
system site-packages), runs `screener demo --for 20` from an empty folder and finds matches; `screener report`
there finds the demo's database.

Installing every dependency into a new venv takes minutes here, so the venv with the dependencies is kept
between runs (in the temp folder, keyed by the dependency list of pyproject.toml); each run builds the wheel
again and reinstalls screener itself into it, then `pip check` proves the environment complete.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    # Nothing from this checkout may leak into the installed environment (PYTHONPATH, SCREENER_* settings).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("SCREENER_")}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(ROOT)], ROOT, 600)
    (wheel,) = dist.glob("screener-*.whl")
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    venv = Path(tempfile.gettempdir()) / f"screener-wheel-venv-{key}"
    python = venv / "bin" / "python"
    if not (venv / ".deps-installed").exists():
        _run([sys.executable, "-m", "venv", "--clear", str(venv)], ROOT, 300)
        _run([str(python), "-m", "pip", "install", "-q", str(wheel)], ROOT, 1800)
        (venv / ".deps-installed").write_text(str(wheel.name))
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], ROOT, 600)
    _run([str(python), "-m", "pip", "check"], ROOT, 120)
    out = _run([str(python), "-c", "import sys; print(sys.prefix != sys.base_prefix, sys.flags.no_site)"], ROOT, 60)
    assert out.stdout.split()[0] == "True"
    return venv


def test_the_installed_wheel_runs_the_demo_from_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "empty"
    work.mkdir()
    screener = str(installed / "bin" / "screener")
    demo = _run([screener, "demo", "--for", "20"], work, 240)
    assert "sample_rules" in demo.stdout  # the rule files shipped in the wheel, not a checkout's
    shipped = len(list((ROOT / "rules").glob("*.yaml")))  # every sample study in the repo is in the wheel
    assert f"studies loaded {shipped}" in demo.stdout, demo.stdout
    db = work / "screener-demo" / "screener.db"
    with sqlite3.connect(db) as conn:
        (matches,) = conn.execute("SELECT count(*) FROM matches").fetchone()
    assert matches > 0
    report = _run([screener, "report", "--out", "report.html"], work, 120)
    assert "wrote report.html" in report.stdout and (work / "report.html").stat().st_size > 1000
