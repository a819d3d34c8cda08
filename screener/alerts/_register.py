"""The do-not-contact register: a patient on it gets no matches and is hidden everywhere."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import polars as pl
import sqlalchemy as sa

from screener.alerts import schema as t
from screener.alerts._common import (
    _CHUNK,
    StoreBase,
)


class RegisterPart(StoreBase):
    def do_not_contact(self) -> pl.Series:
        """Patient ids currently on the do-not-contact register (String series named ``patient_id``)."""
        with self.engine.connect() as conn:
            ids = sorted(self._dnc_ids(conn))
        return pl.Series("patient_id", ids, dtype=pl.String)

    # --- do-not-contact ------------------------------------------------------------------------------------
    def dnc_add(self, patient_ids: Iterable[str], *, by: str, source: str = "web") -> int:
        """Add patients to the register (idempotent); returns how many were new. Their matches disappear."""
        ids = sorted({p.strip() for p in patient_ids if p and p.strip()})
        if not ids:
            return 0
        now = self.clock()
        with self.engine.begin() as conn:
            present: set[str] = set()
            for i in range(0, len(ids), _CHUNK):
                present.update(
                    conn.execute(
                        sa.select(t.do_not_contact.c.patient_id).where(
                            t.do_not_contact.c.patient_id.in_(ids[i : i + _CHUNK])
                        )
                    ).scalars()
                )
            new = [p for p in ids if p not in present]
            if new:
                conn.execute(
                    t.do_not_contact.insert(),
                    [{"patient_id": p, "added_at": now, "added_by": by, "source": source} for p in new],
                )
            self._audit(conn, by, "dnc_add", "do_not_contact", None, {"count": len(new), "source": source})
        return len(new)

    def dnc_remove(self, patient_ids: Iterable[str], *, by: str) -> int:
        """Remove patients from the register; returns how many were removed."""
        ids = sorted({p.strip() for p in patient_ids if p and p.strip()})
        if not ids:
            return 0
        with self.engine.begin() as conn:
            n = 0
            for i in range(0, len(ids), _CHUNK):
                n += conn.execute(
                    t.do_not_contact.delete().where(t.do_not_contact.c.patient_id.in_(ids[i : i + _CHUNK]))
                ).rowcount
            self._audit(conn, by, "dnc_remove", "do_not_contact", None, {"count": n})
        return n

    def dnc_entries(self, limit: int = 1000) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(
                    sa.select(t.do_not_contact).order_by(t.do_not_contact.c.added_at.desc()).limit(limit)
                ).mappings()
            ]
