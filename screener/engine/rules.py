"""Rule files: polling, hot reload, the pruning filter compiled from the studies, study metrics."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from screener.engine._base import EngineBase, _end_of, _start_of, log
from screener.errors import ScreenerError
from screener.state import FactFilter, LiveState


class RulesRole(EngineBase):
    """The loaded studies and the fact filter compiled from them."""

    # --- rules ----------------------------------------------------------------------------------------------
    def _rules_signature(self) -> tuple[tuple[str, int, int], ...]:
        root = Path(self.settings.rules_dir)
        files = sorted([*root.rglob("*.yaml"), *root.rglob("*.yml")]) if root.exists() else []
        sig = []
        for f in files:
            with contextlib.suppress(OSError):
                st = f.stat()
                sig.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(sig)

    def reload_rules(self, force: bool = False) -> bool:
        """Reload ``rules_dir`` if any file changed (or ``force``). Returns True when the study set changed.

        A study whose file still exists but no longer loads keeps its previous version; each load error is
        logged and counted in ``screener_rule_load_errors_total``. An added or changed study triggers a rebuild
        of every assigned partition (which screens everyone against it).
        """
        self._next_rules_poll = self.clock.monotonic() + self.settings.rules_poll_s
        sig = self._rules_signature()
        if not force and sig == self._rules_sig:
            return False
        self.settle()  # the batch in flight finishes under the rules it was started with
        self._rules_sig = sig
        try:
            result = self._loader([Path(self.settings.rules_dir)])
        except ScreenerError as exc:
            self.metrics.rule_load_errors.labels("<rules>").inc()
            log.warning("rules_load_failed", error=str(exc))
            return False
        loaded = {s.id: s for s in result.studies}
        for err in result.errors:
            file = getattr(err, "file", None) or "<rules>"
            self.metrics.rule_load_errors.labels(Path(file).name).inc()
            log.warning("rule_load_error", file=str(file), error=str(err))
        if result.errors:
            present = {str(Path(f).resolve()) for f, _, _ in sig}
            loaded_paths = {str(Path(s.path).resolve()) for s in loaded.values()}
            for old in self.studies.values():
                old_path = str(Path(old.path).resolve())
                if old.id not in loaded and old_path in present and old_path not in loaded_paths:
                    loaded[old.id] = old
                    log.warning("rule_kept_previous_version", study=old.id, file=old_path)
        before = {sid: s.content_hash for sid, s in self.studies.items()}
        after = {sid: s.content_hash for sid, s in loaded.items()}
        if before == after and not force:
            return False
        added_or_changed = sorted(sid for sid, h in after.items() if before.get(sid) != h)
        removed = sorted(set(before) - set(after))
        self.studies = loaded
        self.rule_reloads += 1
        self._compile_pruning()
        self._publish_study_metrics(removed)
        with contextlib.suppress(Exception):
            self.store.sync_studies(list(loaded.values()))
        log.info(
            "rules_loaded", studies=len(loaded), changed=added_or_changed, removed=removed, errors=len(result.errors)
        )
        if added_or_changed and self._parts:
            self._rebuild_all()
        return True

    def _compile_pruning(self) -> None:
        now = self.clock.now()
        relevant = [s for s in self.studies.values() if s.closes is None or _end_of(s.closes) >= now]
        filters: list[pl.Expr] = []
        horizons: list[Any] = []
        unbounded = False
        for s in relevant:
            fact_filter = getattr(s, "fact_filter", None)
            if fact_filter is None:
                filters = []
                unbounded = True
                break
            filters.append(fact_filter())
            h = getattr(s, "horizon", None)
            if h is None:
                unbounded = True
            else:
                horizons.append(h)
        expr: pl.Expr | None
        if not relevant:
            expr = pl.lit(False)
        elif filters:
            # One column per study, OR-ed horizontally: Polars plans this much faster than a deep `|` chain.
            expr = pl.any_horizontal([f.fill_null(False) for f in filters])
        else:
            expr = None
        self._horizon = None if unbounded or not horizons else max(horizons)
        # The cut-off is fixed at compile time: as time moves on it keeps a little more than needed, never less.
        self._keep = FactFilter(expr, now - self._horizon if self._horizon is not None else None)
        digest = hashlib.sha256(
            json.dumps(sorted((s.id, s.content_hash) for s in self.studies.values())).encode()
        ).hexdigest()
        self._rules_fingerprint = digest

    def _publish_study_metrics(self, removed: Sequence[str]) -> None:
        self.metrics.rules_loaded.set(len(self.studies))
        for s in self.studies.values():
            self.metrics.study_target.labels(s.id, s.sponsor).set(s.target or 0)
            if s.opens is not None:
                self.metrics.study_opens.labels(s.id).set(_start_of(s.opens).timestamp())
            if s.closes is not None:
                self.metrics.study_closes.labels(s.id).set(_end_of(s.closes).timestamp())
        for sid in removed:
            for g in (self.metrics.study_opens, self.metrics.study_closes):
                with contextlib.suppress(KeyError):
                    g.remove(sid)

    def _rebuild_all(self) -> None:
        """Reset every assigned partition and replay it from the beginning (then screen everyone in it)."""
        from kafka import TopicPartition

        for p, part in self._parts.items():
            tp = TopicPartition(self.settings.events_topic, p)
            begin = self._beginning(tp)
            target = max(part.offset, part.replay_until or 0)
            part.state = LiveState()
            part.pending = []
            part.dirty = False
            part.offset = begin
            part.replay_until = target if target > begin else None
            self._consumer.seek(tp, begin)
            self._seeks[p] = self._seeks.get(p, 0) + 1
            self._queue = deque(q for q in self._queue if q[0] != p)
            log.info("partition_rebuild", partition=p, from_offset=begin, until=target)
