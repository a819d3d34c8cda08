"""Feasibility counts and rule diffs: a study screened against the history as it stood at past instants.

Pure functions over the history's frames (``persons``, ``facts`` as :mod:`screener.state` defines them); the
command line (:mod:`screener.commands.feasibility`) reads the frames from the history store or an events file.

**No look-ahead.** :func:`as_of` keeps only what was known at the instant: a fact counts when it was recorded
(``recorded_at``, or ``occurred_at`` when the source gave no recording time) at or before the instant, and a
patient counts when some fact or their demographics were known by then. Demographics, the do-not-contact
register and deaths are taken as they are now (the state keeps no history of them): a patient who has since died
or opted out is left out of every instant, since they cannot be recruited.

**Disclosure control.** The functions return raw counts; :func:`disclosed` applies the NHS rule used by the
report (0 stays 0, 1-7 suppressed, the rest rounded to the nearest 5) before anything is shown.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import polars as pl

from screener.rules import screen
from screener.rules.model import Study
from screener.state import PatientState

__all__ = [
    "SUPPRESSED_MAX",
    "DiffResult",
    "Feasibility",
    "as_of",
    "disclosed",
    "feasibility",
    "month_steps",
    "rules_diff",
]

#: Counts of 1 to this are suppressed when shown (NHS convention for published patient counts).
SUPPRESSED_MAX = 7


def disclosed(count: int) -> int | None:
    """A count as it may be shown: 0 stays 0, 1-7 is ``None`` (suppressed), the rest round to the nearest 5."""
    if count == 0:
        return 0
    if count <= SUPPRESSED_MAX:
        return None
    return (count + 2) // 5 * 5


def _known_at(facts: pl.DataFrame) -> pl.Expr:
    if "recorded_at" in facts.columns:
        return pl.coalesce(pl.col("recorded_at"), pl.col("occurred_at"))
    return pl.col("occurred_at")


def as_of(persons: pl.DataFrame, facts: pl.DataFrame, at: datetime) -> PatientState:
    """The state as it was known at ``at``: facts recorded by then, patients known by then, none opted out or dead.

    Facts dated after ``at`` but recorded before it (a planned operation) are kept: screening at ``at`` ignores
    facts after its ``now`` anyway, except the ones a rule reads on purpose (``upcoming``).
    """
    at = at.astimezone(UTC)
    known = facts.filter(_known_at(facts) <= at)
    seen = known.select("patient_id").unique()
    people = persons.filter(~pl.col("do_not_contact").fill_null(False) & ~pl.col("deceased").fill_null(False))
    by_update = pl.col("updated_at").is_not_null() & (pl.col("updated_at") <= at)
    people = people.filter(by_update | pl.col("patient_id").is_in(seen.get_column("patient_id").implode()))
    return PatientState(persons=people, facts=known.filter(pl.col("patient_id").is_in(people["patient_id"].implode())))


def month_steps(at: datetime, months: int) -> list[datetime]:
    """``months + 1`` instants: ``at`` minus 0..months calendar months, oldest first (31 Mar - 1 month = 28 Feb)."""
    out: list[datetime] = []
    for k in range(months, -1, -1):
        y, m = divmod(at.year * 12 + at.month - 1 - k, 12)
        m += 1
        day = min(at.day, calendar.monthrange(y, m)[1])
        out.append(at.replace(year=y, month=m, day=day))
    return out


def _outcomes(state: PatientState, study: Study, at: datetime) -> pl.DataFrame:
    """``patient_id, outcome`` of the eligible and possible patients at ``at``."""
    rows = screen(state, [study], at, evidence="none", rows="matches")
    return rows.select("patient_id", "outcome")


@dataclass(frozen=True)
class Feasibility:
    """Raw feasibility figures of one study (apply :func:`disclosed` before showing any count)."""

    study_id: str
    title: str
    target: int
    at: datetime
    eligible: int
    possible: int
    #: (end of the month-long period, patients first eligible in it), oldest first
    monthly: list[tuple[datetime, int]]
    #: dimension -> {group -> eligible or possible patients now}; groups with no patient are left out
    breakdown: dict[str, dict[str, int]] = field(default_factory=dict)
    #: the study's closing day (None: not given)
    closes: date | None = None

    def months_left(self) -> float | None:
        """Calendar months from ``at`` to the end of the closing day (None without one; 0 when closed)."""
        if self.closes is None:
            return None
        days = (self.closes - self.at.date()).days + 1
        return max(days, 0) / (365.25 / 12)

    @property
    def new_eligible(self) -> int:
        return sum(n for _t, n in self.monthly)

    def rate_per_month(self) -> float | None:
        """New eligible patients per month over the period, from the disclosed total (``None`` when suppressed)."""
        total = disclosed(self.new_eligible)
        if total is None or not self.monthly:
            return None
        return total / len(self.monthly)

    def months_to_target(self, conversion: float = 1.0) -> float | None:
        """Months to reach the target if ``conversion`` of the new eligible patients enrol each month."""
        rate = self.rate_per_month()
        if not rate or conversion <= 0:
            return None
        return self.target / (rate * conversion)

    def to_json(self, conversion: float = 1.0) -> dict[str, object]:
        """JSON-ready, every patient count disclosure-controlled (``null`` = 1-7, suppressed)."""
        return {
            "study_id": self.study_id,
            "title": self.title,
            "target": self.target,
            "at": self.at.isoformat().replace("+00:00", "Z"),
            "eligible": disclosed(self.eligible),
            "possible": disclosed(self.possible),
            "new_eligible_per_month": [
                {"period_end": t.date().isoformat(), "patients": disclosed(n)} for t, n in self.monthly
            ],
            "new_eligible_total": disclosed(self.new_eligible),
            "rate_per_month": self.rate_per_month(),
            "conversion": conversion,
            "months_to_target": self.months_to_target(conversion),
            "closes": self.closes.isoformat() if self.closes else None,
            "months_left": self.months_left(),
            "breakdown": {
                dim: {group: disclosed(n) for group, n in groups.items()} for dim, groups in self.breakdown.items()
            },
            "disclosure": f"counts of 1-{SUPPRESSED_MAX} are suppressed (null); the rest are rounded to 5",
        }


_DIMENSIONS = {
    "setting": pl.col("setting"),
    "imd_quintile": ((pl.col("imd_decile").cast(pl.Int32) + 1) // 2).cast(pl.String),
    "ethnic_group": pl.col("ethnic_group"),
}


def feasibility(
    persons: pl.DataFrame,
    facts: pl.DataFrame,
    study: Study,
    at: datetime,
    months: int = 12,
    outcomes: Callable[[PatientState, Study, datetime], pl.DataFrame] | None = None,
) -> Feasibility:
    """Eligible/possible patients at ``at``, patients first eligible in each of the ``months`` before, by group.

    A patient is *first eligible* in a period when they are eligible at its end and were not eligible at the end
    of any earlier period (nor at the start), so the monthly figures add up to the distinct patients who became
    eligible during the whole span. Screening at each instant sees only what was known then (:func:`as_of`).
    ``outcomes(state, study, at)`` screens one instant (``patient_id, outcome`` of the eligible and possible
    patients; default: :func:`screener.rules.screen`; the CLI's ``--engine`` passes DuckDB's or Spark's).
    """
    if at.tzinfo is None:
        raise ValueError("feasibility() needs a timezone-aware instant")
    at = at.astimezone(UTC)
    steps = month_steps(at, months)
    eligible_at: list[pl.DataFrame] = []
    now_rows = pl.DataFrame(schema={"patient_id": pl.String, "outcome": pl.String})
    for i, t in enumerate(steps):
        rows = (outcomes or _outcomes)(as_of(persons, facts, t), study, t)
        if i == len(steps) - 1:
            now_rows = rows
        eligible_at.append(rows.filter(pl.col("outcome") == "eligible").select("patient_id", pl.lit(i).alias("step")))
    first = pl.concat(eligible_at).group_by("patient_id").agg(pl.col("step").min())
    per_step = dict(first.group_by("step").len().iter_rows())
    monthly = [(steps[i], int(per_step.get(i, 0))) for i in range(1, len(steps))]
    people = now_rows.join(persons, on="patient_id", how="left")
    breakdown: dict[str, dict[str, int]] = {}
    for name, expr in _DIMENSIONS.items():
        counts = people.group_by(expr.fill_null("unknown").alias("g")).len().sort("g")
        breakdown[name] = {str(g): int(n) for g, n in counts.iter_rows()}
    return Feasibility(
        study_id=study.id,
        title=study.title,
        target=study.target,
        at=at,
        eligible=now_rows.filter(pl.col("outcome") == "eligible").height,
        possible=now_rows.filter(pl.col("outcome") == "possible").height,
        monthly=monthly,
        breakdown=breakdown,
        closes=study.closes,
    )


@dataclass(frozen=True)
class DiffResult:
    """What a rule edit would change on the worklist at ``at``: patient ids per change (``sorted``)."""

    old_id: str
    new_id: str
    at: datetime
    added: list[str]
    removed: list[str]
    upgraded: list[str]
    downgraded: list[str]
    unchanged: int
    #: criterion name -> patients whose removal it decided (false inclusion or true exclusion under NEW)
    removed_by: dict[str, int] = field(default_factory=dict)

    def to_json(self, show_patients: bool = False) -> dict[str, object]:
        def part(ids: list[str]) -> object:
            return {"patients": len(ids), **({"ids": ids} if show_patients else {})}

        return {
            "old": self.old_id,
            "new": self.new_id,
            "at": self.at.isoformat().replace("+00:00", "Z"),
            "added": part(self.added),
            "removed": part(self.removed),
            "upgraded": part(self.upgraded),
            "downgraded": part(self.downgraded),
            "unchanged": self.unchanged,
            "removed_by": self.removed_by,
        }


def rules_diff(persons: pl.DataFrame, facts: pl.DataFrame, old: Study, new: Study, at: datetime) -> DiffResult:
    """Screen the history at ``at`` under ``old`` and ``new``; which patients the edit adds to and removes from
    the worklist (eligible or possible under one and not the other), and which move between possible and eligible.

    Patients on the do-not-contact register or who have died are left out, as the engine leaves them out.
    """
    if at.tzinfo is None:
        raise ValueError("rules_diff() needs a timezone-aware instant")
    at = at.astimezone(UTC)
    state = as_of(persons, facts, at)
    before = _outcomes(state, old, at).rename({"outcome": "old"})
    after = _outcomes(state, new, at).rename({"outcome": "new"})
    both = before.join(after, on="patient_id", how="full", coalesce=True)

    def ids(cond: pl.Expr) -> list[str]:
        return sorted(both.filter(cond).get_column("patient_id").to_list())

    removed = ids(pl.col("new").is_null())
    removed_by: dict[str, int] = {}
    if removed:
        sub = state.select_patients(removed)
        rows = screen(sub, [new], at, evidence="none", rows="all").explode("criteria").unnest("criteria")
        include = {c.name for c in new.include} | {"in_setting"}
        decisive = rows.filter(
            (pl.col("name").is_in(list(include)) & (pl.col("result") == False))  # noqa: E712 (null is not false)
            | (~pl.col("name").is_in(list(include)) & (pl.col("result") == True))  # noqa: E712
        )
        removed_by = {str(k): int(v) for k, v in decisive.group_by("name").len().sort("name").iter_rows()}
    return DiffResult(
        old_id=old.id,
        new_id=new.id,
        at=at,
        added=ids(pl.col("old").is_null()),
        removed=removed,
        upgraded=ids((pl.col("old") == "possible") & (pl.col("new") == "eligible")),
        downgraded=ids((pl.col("old") == "eligible") & (pl.col("new") == "possible")),
        unchanged=both.filter(pl.col("old") == pl.col("new")).height,
        removed_by=removed_by,
    )


def render_feasibility_markdown(result: Feasibility, conversion: float = 1.0) -> str:
    """The feasibility report as Markdown (disclosure-controlled)."""
    data = result.to_json(conversion)

    def fmt(n: object) -> str:
        return f"1-{SUPPRESSED_MAX}" if n is None else str(n)

    lines = [
        f"# Feasibility: {result.title} ({result.study_id})",
        "",
        f"History as known at {data['at']}. Counts of 1-{SUPPRESSED_MAX} are suppressed; the rest are rounded to 5.",
        "",
        f"- Eligible now: **{fmt(data['eligible'])}**; possible (to verify): **{fmt(data['possible'])}**",
        f"- Newly eligible in the last {len(result.monthly)} months: **{fmt(data['new_eligible_total'])}**",
    ]
    rate = result.rate_per_month()
    if rate is None:
        lines.append("- Accrual rate: too few newly eligible patients to estimate")
    else:
        months = result.months_to_target(conversion)
        when = f"{months:.1f} months" if months is not None else "never"
        lines.append(
            f"- Newly eligible per month: **{rate:.1f}**; target {result.target} reached in **{when}** "
            f"if {conversion:.0%} of them enrol"
            + (" (an upper bound: pass --conversion for a realistic share)" if conversion >= 1 else "")
        )
    left = result.months_left()
    if left is not None and result.closes is not None:
        months = result.months_to_target(conversion)
        verdict = "" if months is None else (" - on track" if months <= left else " - the target is out of reach")
        lines.append(f"- The study closes on {result.closes.isoformat()}, {left:.1f} months away{verdict}")
    lines += ["", "| period ending | newly eligible |", "|---|---|"]
    lines += [f"| {t.date().isoformat()} | {fmt(disclosed(n))} |" for t, n in result.monthly]
    for dim, groups in result.breakdown.items():
        lines += [
            "",
            f"**Eligible or possible now, by {dim.replace('_', ' ')}**",
            "",
            "| group | patients |",
            "|---|---|",
        ]
        lines += [f"| {g} | {fmt(disclosed(n))} |" for g, n in groups.items()]
    return "\n".join(lines) + "\n"


def render_diff_markdown(result: DiffResult, show_patients: bool = False) -> str:
    """The rule diff as Markdown: counts per change, the deciding criteria of removals, ids when asked."""
    lines = [
        f"# Rule diff: {result.old_id} -> {result.new_id} at {result.at.isoformat().replace('+00:00', 'Z')}",
        "",
        f"- Added to the worklist: **{len(result.added)}**",
        f"- Removed (no longer eligible or possible): **{len(result.removed)}**",
        f"- Possible -> eligible: **{len(result.upgraded)}**; eligible -> possible: **{len(result.downgraded)}**",
        f"- Unchanged: {result.unchanged}",
    ]
    if result.removed_by:
        lines += ["", "Removals by the criterion that rules them out:", ""]
        lines += [f"- `{name}`: {n}" for name, n in result.removed_by.items()]
    if show_patients:
        for title, ids in (("Added", result.added), ("Removed", result.removed), ("Upgraded", result.upgraded)):
            if ids:
                lines += ["", f"{title}: " + ", ".join(ids)]
    return "\n".join(lines) + "\n"
