"""Rule files: polling, hot reload, the pruning filter compiled from the studies, study metrics."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from screener.engine._affects import AffectsIndex
from screener.engine._base import EngineBase, _end_of, _start_of, log
from screener.errors import ScreenerError
from screener.state import FactFilter


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

    _rules_pool: ThreadPoolExecutor | None = None
    #: A load of the rules folder running on the rules thread, and the folder's signature it started from.
    _rules_loading: tuple[Future[Any], tuple[tuple[str, int, int], ...]] | None = None

    def reload_rules(self, force: bool = False, background: bool = False) -> bool:
        """Reload ``rules_dir`` if any file changed (or ``force``). Returns True when the study set changed.

        With ``background`` (what :meth:`step` does under :meth:`run`) the files are read and compiled on the
        rules thread, and a later call applies the result: parsing and compiling 17 sample studies takes
        0.5-1 s of CPU, which held the consumer (and so every live event) at each edit. Otherwise they are read
        here, and a load started in the background is waited for.

        A study whose file still exists but no longer loads keeps its previous version; each load error is
        logged and counted in ``screener_rule_load_errors_total``. An added or changed study makes every assigned
        partition build its new view from the history store in the background (:mod:`screener.engine.rebuild`);
        at the swap everyone is screened against the added or changed studies only.
        """
        self._next_rules_poll = self.clock.monotonic() + self.settings.rules_poll_s
        if self._rules_loading is None:
            sig = self._rules_signature()
            if not force and sig == self._rules_sig:
                return False
            self._rules_sig = sig
            if self._rules_pool is None:
                self._rules_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="screener-rules")
            self._rules_loading = (self._rules_pool.submit(self._loader, [Path(self.settings.rules_dir)]), sig)
        future, sig = self._rules_loading
        if background and not future.done():
            return False
        self._rules_loading = None
        self.settle()  # the batch in flight finishes under the rules it was started with
        try:
            result = future.result()
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
        pending = self._rebuild
        current = pending.studies if pending is not None else self.studies
        before = {sid: s.content_hash for sid, s in current.items()}
        after = {sid: s.content_hash for sid, s in loaded.items()}
        if before == after and not force:
            return False
        added_or_changed = sorted(sid for sid, h in after.items() if before.get(sid) != h)
        removed = sorted(set(before) - set(after))
        self.rule_reloads += 1
        keep, horizon, fingerprint = self._pruning_for(loaded)
        self._publish_study_metrics(loaded, removed)
        with contextlib.suppress(Exception):
            self.store.sync_studies(list(loaded.values()))
        log.info(
            "rules_loaded", studies=len(loaded), changed=added_or_changed, removed=removed, errors=len(result.errors)
        )
        if (added_or_changed or pending is not None) and self._parts:
            # Pruned facts may be needed by the new rules: the new view comes from the history store, in the
            # background; until it is ready, batches are screened with the studies and view they had.
            changed = set(added_or_changed) | (set(pending.changed) if pending is not None else set())
            self._start_rebuild(loaded, keep, horizon, fingerprint, sorted(changed & set(loaded)), removed)
        else:
            self._rebuild = None  # nothing assigned to rebuild: the new rules apply from the next batch
            self.studies, self._keep, self._horizon, self._rules_fingerprint = loaded, keep, horizon, fingerprint
        return True

    def _compile_pruning(self) -> None:
        """Install the fact filter, horizon and fingerprint of the loaded studies."""
        self._keep, self._horizon, self._rules_fingerprint = self._pruning_for(self.studies)

    def _pruning_for(self, studies: dict[str, Any]) -> tuple[FactFilter, Any, str]:
        """The fact filter (facts some study open now or later can use), the time horizon (the longest window)
        and the fingerprint of ``studies``."""
        now = self.clock.now()
        relevant = [s for s in studies.values() if s.closes is None or _end_of(s.closes) >= now]
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
        horizon = None if unbounded or not horizons else max(horizons)
        # The cut-off is fixed at compile time: as time moves on it keeps a little more than needed, never less.
        # Keys are judged by joins on the studies' code tables, not by planning the large expression (_affects).
        judge = AffectsIndex(relevant).keeps if filters else None
        keep = FactFilter(expr, now - horizon if horizon is not None else None, judge=judge)
        digest = hashlib.sha256(json.dumps(sorted((s.id, s.content_hash) for s in studies.values())).encode())
        return keep, horizon, digest.hexdigest()

    def _publish_study_metrics(self, studies: dict[str, Any], removed: Sequence[str]) -> None:
        self.metrics.rules_loaded.set(len(studies))
        for s in studies.values():
            self.metrics.study_target.labels(s.id, s.sponsor).set(s.target or 0)
            if s.opens is not None:
                self.metrics.study_opens.labels(s.id).set(_start_of(s.opens).timestamp())
            if s.closes is not None:
                self.metrics.study_closes.labels(s.id).set(_end_of(s.closes).timestamp())
        for sid in removed:
            for g in (self.metrics.study_opens, self.metrics.study_closes):
                with contextlib.suppress(KeyError):
                    g.remove(sid)
