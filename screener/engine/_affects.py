"""Which studies a batch can affect: the code -> studies index of the batch thread (:class:`AffectsIndex`).

A study's result for a patient changes only when the facts it reads change (its :meth:`Study.fact_filter`: the
codes of the concept sets its criteria use, visits when a filter reads ``.encounter``, registrations for
``registered_days``: the very expression the state is pruned with), when the patient's person row changes
(demographics, setting, flags) or by the passage of time. The engine screens a touched patient only against the
open studies one of its added or removed facts can reach, and against every study when its person row changed
(or it is new, or was merged into): :func:`screener.state.apply_changes` tells which. Time-based changes are
the scheduled full re-screen's job, as before. The result is therefore the same as screening every study, at the
same instant (a property test holds the engine to it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import polars as pl

from screener.engine._cover import cover
from screener.rules.concepts import PREFIX_SYSTEMS, normalise_code, normalise_code_expr
from screener.state import PERSONS_SCHEMA, Changes, FactFilter, PatientState
from screener.vocab import FACT_KINDS

__all__ = ["AffectsIndex"]

#: The columns a compiled study's fact filter reads (codes, and kinds whatever the code); a filter reading any
#: other is evaluated as an expression instead.
_CODED_ROOTS = {"kind", "system", "code"}
_PAIR_SCHEMA = {"patient_id": pl.String, "study_id": pl.String}


class AffectsIndex:
    """Per rules version: fact key -> the studies whose fact filter keeps it.

    Keys are the columns the filters read (``kind, system, code`` for compiled studies). A study with concept
    sets (``used_concepts``) is judged by joins against a table of its codes, the way
    :meth:`ConceptSet.fact_expr` matches them (codes compared normalised; ICD-10, ATC and OPCS-4 codes as
    prefixes: one join per prefix length), plus the kinds it reads whatever the code (its filter evaluated once
    on code-less rows: visits for ``.encounter``, registrations for ``registered_days``). Any other study with a
    ``fact_filter`` has that expression evaluated on the new keys; one without (a test double) is taken to read
    every fact (:attr:`always`). Each distinct key is judged once and cached: evaluating the studies' filter
    expressions costs about half a second whatever the number of keys, a join a few milliseconds. Drive it from
    one thread.
    """

    def __init__(
        self,
        studies: Iterable[Any],
        source: object = None,
        screen: Callable[[PatientState, list[Any], datetime], pl.DataFrame] | None = None,
    ) -> None:
        self.studies = list(studies)
        #: What the index was built from (the engine compares it by identity to see a new rules version).
        self.source = source
        coded: list[Any] = []
        exprs: list[tuple[str, pl.Expr]] = []
        always: list[str] = []
        for s in self.studies:
            if getattr(s, "fact_filter", None) is None:
                always.append(s.id)
            elif hasattr(s, "used_concepts") and set(s.fact_filter().meta.root_names()) <= _CODED_ROOTS:
                coded.append(s)
            else:
                exprs.append((s.id, s.fact_filter()))
        #: Studies screened for every touched patient.
        self.always = frozenset(always)
        self._exprs = exprs
        roots: set[str] = {"kind", "system", "code"} if coded else set()
        for _, expr in exprs:
            roots |= set(expr.meta.root_names())
        self.keys: list[str] | None = (
            [c for c in FactFilter.KEY_COLUMNS if c in roots] if roots <= set(FactFilter.KEY_COLUMNS) else None
        )
        self._exact, self._prefix, self._kinds = _code_tables(coded)
        #: The keys judged so far, and their (key..., study_id) hits.
        self._seen: pl.DataFrame | None = None
        self._hits: pl.DataFrame | None = None
        #: person column -> the studies that read it (``None``: every study may).
        self.columns = _person_columns(self.studies)
        #: Studies that a patient holding none of the facts they read cannot match (:func:`blank_ineligible`).
        self.blank = blank_ineligible([s for s in coded], screen) if screen is not None else frozenset()
        self._every_column = [c for c, ids in self.columns.items() if ids is None]
        self._column_readers = pl.DataFrame(
            [(c, sid) for c, ids in self.columns.items() if ids for sid in sorted(ids)],
            schema={"column": pl.String, "study_id": pl.String},
            orient="row",
        )

    def _judge(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``(row columns..., study_id)``: one row per row of ``frame`` and study whose filter keeps it."""
        cols = frame.columns
        parts: list[pl.DataFrame] = []
        if self._kinds.height:
            parts.append(frame.join(self._kinds, on="kind", how="inner").select(*cols, "study_id"))
        if self._exact.height or self._prefix:
            norm = frame.with_columns(normalise_code_expr(pl.col("code")).alias("_code"))
            if self._exact.height:
                parts.append(norm.join(self._exact, on=["system", "_code"], how="inner").select(*cols, "study_id"))
            for n, table in self._prefix.items():
                cut = norm.with_columns(pl.col("_code").str.slice(0, n))
                parts.append(cut.join(table, on=["system", "_code"], how="inner").select(*cols, "study_id"))
        for sid, expr in self._exprs:
            parts.append(frame.filter(expr.fill_null(False)).with_columns(pl.lit(sid).alias("study_id")))
        if not parts:
            return frame.clear().with_columns(pl.lit(None, dtype=pl.String).alias("study_id"))
        return pl.concat(parts, how="vertical").unique()

    def learn(self, facts: pl.DataFrame) -> None:
        """Judge the key combinations in ``facts`` not seen before. ``facts`` needs only the key columns; the
        engine calls this once per batch."""
        if not self.keys or facts.height == 0:
            return
        distinct = facts.select(self.keys).unique()
        if self._seen is not None:
            distinct = distinct.join(self._seen, on=self.keys, how="anti", nulls_equal=True)
        if distinct.height:
            hits = self._judge(distinct)
            self._seen = distinct if self._seen is None else pl.concat([self._seen, distinct], how="vertical")
            self._hits = hits if self._hits is None else pl.concat([self._hits, hits], how="vertical")

    def keeps(self, keys: pl.DataFrame) -> pl.Series:
        """For each row of ``keys`` (the key columns): whether some study's filter keeps it. The fast judge of
        :class:`FactFilter` (the same answers as the OR of the studies' ``fact_filter`` expressions)."""
        rows = keys.with_row_index("_row")
        hit = self._judge(rows).select("_row").unique()
        return rows.select(pl.col("_row").is_in(hit["_row"].implode()).alias("_keep"))["_keep"]

    def pairs(self, facts: pl.DataFrame) -> pl.DataFrame:
        """``(patient_id, study_id)``, unique: the studies each changed fact row (``patient_id`` + the key
        columns, :attr:`Changes.facts`) can affect, besides :attr:`always`."""
        if facts.height == 0 or (
            not self._exprs and not self._exact.height and not self._prefix and not self._kinds.height
        ):
            return pl.DataFrame(schema=_PAIR_SCHEMA)
        if not self.keys:
            # A filter that reads other columns (or none): judge the rows themselves.
            judged = self._judge(facts)
        else:
            self.learn(facts)
            assert self._hits is not None
            judged = facts.select("patient_id", *self.keys).join(self._hits, on=self.keys, nulls_equal=True)
        return judged.select("patient_id", "study_id").unique()

    def plan(
        self,
        changes: Changes,
        open_ids: Iterable[str],
        facts_of: Callable[[pl.Series], pl.DataFrame] | None = None,
    ) -> list[tuple[pl.Series, frozenset[str] | None]]:
        """The screens a batch needs: ``(patients, studies)`` pairs, ``None`` meaning every open study.

        A touched patient needs a study when one of its added or removed facts reaches it, or when a person
        column the study reads changed (a new person row: every column; a merge into the patient: every study)
        unless the study is one of :attr:`blank` and the patient holds no fact it reads (``facts_of(ids)``: the
        patients' current facts, ``patient_id`` + key columns; without it nobody is assumed to hold none): then
        its result was and stays ineligible. A touched patient whose changes reach no open study is not
        screened. The needs are covered by a few screens (:func:`screener.engine._cover.cover`)."""
        open_list = list(open_ids)
        persons = changes.persons.filter(~pl.col("patient_id").is_in(changes.whole.implode()))
        every = persons.filter(pl.col("column").is_null() | pl.col("column").is_in(self._every_column))
        studies = pl.DataFrame({"study_id": open_list}, schema={"study_id": pl.String})
        by_column = pl.concat(
            [
                persons.join(self._column_readers, on="column", how="inner").select("patient_id", "study_id"),
                every.select("patient_id").unique().join(studies, how="cross"),
            ],
            how="vertical",
        ).unique()
        blank = [sid for sid in open_list if sid in self.blank]
        if blank and by_column.height and facts_of is not None:
            # A study that no patient without its facts can match: only the patients holding some fact it reads.
            unsure = by_column.filter(pl.col("study_id").is_in(blank))
            held = self.pairs(facts_of(unsure["patient_id"].unique())).join(unsure, on=["patient_id", "study_id"])
            by_column = pl.concat([by_column.filter(~pl.col("study_id").is_in(blank)), held], how="vertical")
        facts = changes.facts.filter(pl.col("patient_id").is_in(changes.touched.implode()))
        pairs = pl.concat([self.pairs(facts), by_column], how="vertical")
        always = sorted(self.always & frozenset(open_list))
        if always:
            pairs = pl.concat(
                [pairs, changes.touched.to_frame().join(pl.DataFrame({"study_id": always}), how="cross")],
                how="vertical",
            )
        pairs = pairs.filter(pl.col("study_id").is_in(open_list) & ~pl.col("patient_id").is_in(changes.whole.implode()))
        return cover(pairs.unique(), changes.whole.unique(), open_list)


#: attribute -> the person column it is computed from (``registered_days`` comes from facts)
_ATTRIBUTE_COLUMNS = {
    "age": "birth_date",
    "age_days": "birth_date",
    "age_months": "birth_date",
    "sex": "sex",
    "ethnic_group": "ethnic_group",
    "imd_decile": "imd_decile",
    "imd_quintile": "imd_decile",
    "setting": "setting",
    "site": "site",
}
#: person columns every study reads: the birth date (``age_at_first`` reads it too) and the flags that suppress
#: a match
_EVERY_STUDY = ("birth_date", "do_not_contact", "deceased")


def _person_columns(studies: list[Any]) -> dict[str, frozenset[str] | None]:
    """person column -> the studies reading it; ``None`` for a column every study may read (the birth date, the
    flags, and any column when some study cannot say which attributes it reads)."""
    readers: dict[str, set[str]] = {}
    unknown = False
    for s in studies:
        attrs = getattr(s, "attributes", None)
        if attrs is None:
            unknown = True
            continue
        cols = {_ATTRIBUTE_COLUMNS[a] for a in attrs() if a in _ATTRIBUTE_COLUMNS}
        if getattr(s, "settings", ()):
            cols.add("setting")  # the implicit in_setting criterion
        for c in cols:
            readers.setdefault(c, set()).add(s.id)
    out: dict[str, frozenset[str] | None] = {}
    for c in PERSONS_SCHEMA:
        if c == "patient_id":
            continue
        if unknown or c in _EVERY_STUDY:
            out[c] = None
        else:
            out[c] = frozenset(readers.get(c, ()))
    return out


def _code_tables(studies: list[Any]) -> tuple[pl.DataFrame, dict[int, pl.DataFrame], pl.DataFrame]:
    """The codes of ``studies``' concept sets as join tables: exact ``(system, _code, study_id)``, prefix ones by
    length, and ``(kind, study_id)`` for the kinds a study reads whatever the code."""
    rows: list[tuple[str, str, str, bool]] = []
    for s in studies:
        for c in s.used_concepts():
            for system, code in c.codes:
                rows.append((system, normalise_code(code), s.id, system in PREFIX_SYSTEMS))
    table = pl.DataFrame(
        rows,
        schema={"system": pl.String, "_code": pl.String, "study_id": pl.String, "_prefix": pl.Boolean},
        orient="row",
    ).unique()
    exact = table.filter(~pl.col("_prefix")).select("system", "_code", "study_id")
    prefix = table.filter(pl.col("_prefix")).with_columns(pl.col("_code").str.len_chars().alias("_len"))
    by_len = {
        int(n): prefix.filter(pl.col("_len") == n).select("system", "_code", "study_id")
        for n in sorted(prefix["_len"].unique().to_list())
    }
    kinds = pl.DataFrame({"kind": list(FACT_KINDS)}).with_columns(
        pl.lit(None, dtype=pl.String).alias("system"), pl.lit(None, dtype=pl.String).alias("code")
    )
    found = [
        kinds.filter(s.fact_filter().fill_null(False)).select("kind", pl.lit(s.id).alias("study_id")) for s in studies
    ]
    kind_table = pl.concat(found) if found else pl.DataFrame(schema={"kind": pl.String, "study_id": pl.String})
    return exact, by_len, kind_table


def blank_ineligible(
    studies: list[Any], screen: Callable[[PatientState, list[Any], datetime], pl.DataFrame]
) -> frozenset[str]:
    """The studies ``screen`` finds ineligible for a patient with no facts and every person attribute unknown.

    Such a study is ineligible for any patient holding none of the facts it reads, whatever the person's
    attributes: the criteria are three-valued (Kleene), so an include that is false (or an exclude that is true)
    while the attributes are unknown stays so once they are known, and with no fact every feature has its
    no-record value. The engine need not screen such a patient against it when only the person row changed."""
    if not studies:
        return frozenset()
    person = {c: [None] for c in PERSONS_SCHEMA} | {"patient_id": ["blank"], "do_not_contact": [False]}
    persons = pl.DataFrame(person | {"deceased": [False]}, schema=PERSONS_SCHEMA)
    result = screen(PatientState(persons=persons), studies, datetime.now(UTC))
    ruled_out = result.filter(pl.col("outcome") == "ineligible")["study_id"].to_list()
    # A study missing from the result (a screen that returns only matches) was not eligible or possible.
    returned = set(result["study_id"].to_list())
    return frozenset(ruled_out) | frozenset(s.id for s in studies if s.id not in returned)
