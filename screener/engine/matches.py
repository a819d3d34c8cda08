"""Match recording: screen results to match rows, the worklist store, the matches topic and its sweep."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from screener.alerts.base import MATCH_COLUMNS
from screener.engine._base import EngineBase, _seconds, log
from screener.engine.base import Record
from screener.errors import DeliveryError, EventError, ScreenerError
from screener.state import PatientState
from screener.vocab import INELIGIBLE, MATCH_OUTCOMES, TS

if TYPE_CHECKING:
    from screener.rules import LoadResult, Study

#: Matches per sweep page.
SWEEP_LIMIT = 10_000


def _default_loader(paths: Sequence[Path]) -> LoadResult:
    from screener.rules import load_studies

    return load_studies(paths)


def _default_screen(state: PatientState, studies: Sequence[Study], now: datetime) -> pl.DataFrame:
    from screener.rules import screen

    # Only eligible/possible rows are stored, so only they are returned (with criteria and evidence texts);
    # every patient is still evaluated against every study.
    return screen(state, studies, now, evidence="outcomes", rows="matches")


def _criteria_json() -> pl.Expr:
    """``criteria`` (List(Struct{name, group, result, evidence})) as a JSON array string, vectorised."""
    return pl.concat_str(
        pl.lit("["),
        pl.col("criteria").list.eval(pl.element().struct.json_encode()).list.join(","),
        pl.lit("]"),
    )


def matches_from_screen(
    result: pl.DataFrame,
    persons: pl.DataFrame,
    dnc_register: pl.Series,
    now: datetime,
    event_times: pl.DataFrame | None = None,
    outcomes: Sequence[str] = MATCH_OUTCOMES,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Turn a screen result into match rows (``MATCH_COLUMNS``) and per-study suppression counts.

    Keeps outcomes ``eligible``/``possible`` (or ``outcomes``); drops patients flagged do-not-contact (state flag or the
    register) or deceased. Returns ``(matches, suppressed)`` where ``suppressed`` has columns
    ``study_id, reason ('do-not-contact'|'deceased'), n``. Pure.
    """
    cand = result.filter(pl.col("outcome").is_in(list(outcomes)))
    empty_supp = pl.DataFrame(schema={"study_id": pl.String, "reason": pl.String, "n": pl.UInt32})
    if cand.height == 0:
        return _empty_matches(), empty_supp
    cand = cand.join(
        persons.select("patient_id", "setting", "imd_decile", "ethnic_group", "do_not_contact", "deceased"),
        on="patient_id",
        how="left",
    ).with_columns(
        (pl.col("do_not_contact").fill_null(False) | pl.col("patient_id").is_in(dnc_register.implode())).alias("_dnc"),
        pl.col("deceased").fill_null(False).alias("_dead"),
    )
    suppressed = (
        cand.filter(pl.col("_dnc") | pl.col("_dead"))
        .with_columns(
            pl.when(pl.col("_dead")).then(pl.lit("deceased")).otherwise(pl.lit("do-not-contact")).alias("reason")
        )
        .group_by("study_id", "reason")
        .agg(pl.len().alias("n"))
    )
    kept = cand.filter(~pl.col("_dnc") & ~pl.col("_dead"))
    if event_times is not None and event_times.height:
        kept = kept.join(event_times, on="patient_id", how="left")
    else:
        kept = kept.with_columns(pl.lit(None, dtype=TS).alias("event_time"))
    matches = kept.select(
        pl.col("study_id").cast(pl.String),
        pl.col("patient_id").cast(pl.String),
        pl.col("outcome").cast(pl.String),
        pl.col("rule_hash").cast(pl.String),
        _criteria_json().alias("criteria"),
        pl.lit(now).cast(TS).alias("matched_at"),
        pl.col("setting").cast(pl.String),
        pl.col("imd_decile").cast(pl.Int8),
        pl.col("ethnic_group").cast(pl.String),
        pl.col("event_time").cast(TS),
    )
    return matches, suppressed


def _empty_matches() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "study_id": pl.String,
            "patient_id": pl.String,
            "outcome": pl.String,
            "rule_hash": pl.String,
            "criteria": pl.String,
            "matched_at": TS,
            "setting": pl.String,
            "imd_decile": pl.Int8,
            "ethnic_group": pl.String,
            "event_time": TS,
        }
    )


class MatchesRole(EngineBase):
    """Recording matches in the worklist store and on the matches topic."""

    def _flush_matches(self) -> None:
        """Wait for the broker to acknowledge the matches published since the last flush, then mark them
        published in the store (a failure to mark only means the sweep publishes them again)."""
        if self._publisher is None:
            return
        keys = self._publisher.flush()
        if keys:
            try:
                self.store.mark_published(keys)
            except Exception as exc:
                log.warning("mark_published_failed", matches=len(keys), error_type=type(exc).__name__)

    def _sweep_unpublished(self) -> int:
        """Publish stored matches no broker acknowledged, left by a crash (or a failed publish) between the
        worklist write and the acknowledgement, once ``matches_sweep_settle_s`` old (younger ones may be
        another engine's, still in flight). Returns how many were published."""
        self._next_sweep = self.clock.monotonic() + self.settings.matches_sweep_interval_s
        if self._publisher is None:
            return 0
        settled = datetime.now(UTC) - _seconds(self.settings.matches_sweep_settle_s)
        try:
            rows = self.store.unpublished_matches(settled_before=settled, limit=SWEEP_LIMIT)
            if rows.height:
                self._publisher.publish(rows)
                self._flush_matches()
                log.info("unpublished_matches_sent", matches=rows.height)
        except ScreenerError as exc:
            log.warning("sweep_failed", error_type=type(exc).__name__)
            return 0
        if rows.height >= SWEEP_LIMIT:
            self._next_sweep = 0.0  # more to do: again at the next step
        return rows.height

    def _dead_letter(self, rec: Record, exc: EventError) -> None:
        value = rec.value or b""
        doc = {
            "reason": exc.message,
            "error": str(exc),
            "field": exc.field,
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "timestamp": rec.timestamp,
            "payload": value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value),
        }
        self._producer.send(
            self.settings.dlq_topic,
            key=rec.key,
            value=json.dumps(doc).encode(),
            headers=[("reason", exc.message.encode()[:200])],
        )
        self.metrics.dead_letters.labels("validate", exc.message[:60]).inc()

    def _screen_and_record(
        self,
        state: PatientState,
        now: datetime,
        trigger: str,
        event_times: pl.DataFrame | None = None,
        only: frozenset[str] | None = None,
        owners: pl.DataFrame | None = None,
    ) -> int:
        """Screen ``state`` against the open studies (``only`` those ids, when given), store the matches and the
        ``ineligible`` rows of known matches now ruled out (:mod:`screener.engine.follow`), publish the new
        matches (not flushed). ``owners`` (``patient_id, partition``) says whose pairs these are."""
        studies = [s for s in self.studies.values() if s.is_open(now) and (only is None or s.id in only)]
        if not studies or state.persons.height == 0:
            return 0
        known = self._known_pairs(state, studies)
        fused = self._screen_known is not None and known.height > 0
        if fused:
            assert self._screen_known is not None
            result = self._screen_known(state, studies, now, known.select("study_id", "patient_id"))
        else:
            result = self._screen(state, studies, now)
        # Every patient is evaluated against every study, whatever rows the screen function returns.
        self.metrics.screens.labels(trigger).inc(state.persons.height * len(studies))
        closed_rows = self._ruled_out(state, result, studies, now, known, holds_known=fused)
        if result.filter(pl.col("outcome").is_in(MATCH_OUTCOMES)).height == 0 and closed_rows.height == 0:
            return 0
        dnc = self.store.do_not_contact()
        matches, suppressed = matches_from_screen(result, state.persons, dnc, now, event_times)
        if closed_rows.height:
            closed, _ = matches_from_screen(closed_rows, state.persons, dnc, now, event_times, outcomes=(INELIGIBLE,))
            self.metrics.matches_closed.inc(closed.height)
        else:
            closed = matches.clear()
        for study, reason, n in suppressed.iter_rows():
            if reason == "deceased":
                self.metrics.deceased_suppressed.labels(study).inc(n)
            else:
                self.metrics.do_not_contact_suppressed.labels(study).inc(n)
        if matches.height == 0 and closed.height == 0:
            return 0
        try:
            sent = pl.concat([matches, closed]) if closed.height else matches
            new = self.store.record_matches(sent.select(list(MATCH_COLUMNS)))
        except ScreenerError:
            raise
        except Exception as exc:
            raise DeliveryError(f"recording matches failed: {type(exc).__name__}", channel="store") from exc
        self._note_pairs(matches, closed, owners)
        new = new.filter(pl.col("outcome").is_in(MATCH_OUTCOMES))  # a closed match is never alerted
        if new.height:
            counts = new.group_by("study_id", "outcome", pl.col("setting").fill_null("unknown")).agg(pl.len())
            for study, outcome, setting, n in counts.iter_rows():
                self.metrics.matches.labels(study, outcome, setting).inc(n)
            if "event_time" in new.columns:
                wall = time.time()
                for ts in new["event_time"].drop_nulls().to_list():
                    self.metrics.event_to_match_latency.observe(max(0.0, wall - ts.timestamp()))
            if self._publisher is not None:
                self._publisher.publish(new)
            self.matches_recorded += new.height
        return new.height
