"""The history-store benchmarks at a tiny scale: they run to the end and their own checks hold.

Nothing here measures speed (``python -m bench.history_failover --patients 1000000`` does, by hand); these only keep
the scripts working as the engine under them changes (a renamed engine attribute once broke the failover figure).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_failover_takes_every_partition_from_the_store_without_replay_or_duplicates(tmp_path: Path) -> None:
    out = _run(
        "bench.history_failover", "--patients", "3000", "--events", "500", "--gap", "200", "--store", str(tmp_path)
    )
    assert re.search(r"restores by source \{'snapshot': 0, 'history': 4, 'replay': 0\}", out), out
    assert "never 0 = True" in out, out
    assert "duplicates 0" in out, out


def test_rule_edit_screens_every_probe_against_the_added_study(tmp_path: Path) -> None:
    out = _run("bench.history_rules", "--patients", "3000", "--store", str(tmp_path))
    sent = re.search(r"probes sent (\d+), matched (\d+)", out)
    assert sent is not None, out
    assert int(sent.group(1)) > 0 and sent.group(1) == sent.group(2), out
    added = re.search(r"the added study: (\d+) matches, (\d+) distinct patients", out)
    assert added is not None and added.group(1) == added.group(2), out
