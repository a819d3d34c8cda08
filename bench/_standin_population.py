"""STAND-IN (remove when connectors.synthetic.population lands): a tiny random population for harness work."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

from screener.state import FACTS_SCHEMA, PERSONS_SCHEMA


def generate_frames(n: int, seed: int, now: datetime, studies) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"P{i:07d}" for i in range(n)]
    birth = [now.date() - timedelta(days=int(d)) for d in rng.integers(0, 95 * 365, n)]
    persons = pl.DataFrame({
        "patient_id": ids, "birth_date": birth,
        "sex": rng.choice(["F", "M", None], n, p=[0.49, 0.49, 0.02]).tolist(),
        "ethnic_group": rng.choice(["asian", "black", "mixed", "white", "other"], n).tolist(),
        "imd_decile": rng.integers(1, 11, n).tolist(),
        "setting": rng.choice(["hospital", "community", "primary-care", "home", None], n).tolist(),
    }).with_columns(pl.col("imd_decile").cast(pl.Int8))
    persons = persons.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in PERSONS_SCHEMA.items()
                                    if c not in persons.columns]).select(list(PERSONS_SCHEMA))
    persons = persons.with_columns(pl.lit(False).alias("do_not_contact"), pl.lit(False).alias("deceased"))
    codes = []
    for s in studies:
        for c in s.concepts.values():
            for system, code in c.codes:
                codes.append((system, code + ("9" if system in ("ICD10", "ATC") and len(code) < 5 else ""), c.unit))
    codes = sorted(set(codes), key=str)
    m = n * 12
    pick = rng.integers(0, len(codes), m)
    pid = rng.integers(0, n, m)
    days = rng.exponential(300, m)
    rows = {
        "patient_id": [ids[i] for i in pid], "event_id": [f"E{i}" for i in range(m)],
        "kind": ["measurement"] * m, "system": [codes[i][0] for i in pick], "code": [codes[i][1] for i in pick],
        "value": rng.gamma(2.0, 30.0, m).round(1).tolist(), "text": [None] * m,
        "unit": [codes[i][2] for i in pick],
        "occurred_at": [now - timedelta(days=float(d)) for d in days], "status": ["active"] * m,
        "setting": [None] * m,
    }
    facts = pl.DataFrame(rows, schema=FACTS_SCHEMA)
    return persons, facts
