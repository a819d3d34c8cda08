"""Batch ingest fast path: Kafka payloads to the state update frames without one pydantic model per event.

:func:`decode_batch` turns a list of raw payloads into the same ``(person updates, fact rows, control rows)``
frames that :func:`screener.state.events_to_frames` builds from parsed :class:`~screener.events.Event` objects,
plus the list of rejected payloads with the exact :class:`~screener.errors.EventError` that
:func:`screener.events.parse_event` raises for them.

How (Rust calls, then Polars):

0. the whole batch is read by Polars' JSON reader with the GIL let go (:func:`screener._json_event.decode_json`);
   it vouches only for payloads that are byte for byte the canonical JSON of what it read (the form
   :func:`screener.events.dump_event` writes) and that keep the lean schema's rules below; everything else (and
   :func:`decode_batch_lean` sends every payload) goes on to step 1;
1. every payload left is parsed and type-checked by one pydantic-core call over the whole list, against a *lean*
   schema (:data:`screener._lean_event.LEAN`): the canonical event's fields, types, enums, lengths, patterns and
   unknown-field rule, but with no Python callback, no whitespace stripping and the timestamps left as strings.
   The JSON parser and the type coercions are pydantic's own, so a value accepted here has the value
   ``parse_event`` would give;
2. the accepted rows become columns, and the rest of the contract is checked vectorised: no leading or trailing
   whitespace in any string (``parse_event`` strips it), timestamps in a strict ISO-8601 form with an offset
   (parsed and converted to UTC by Polars) or a calendar date (``date_only``), ISO birth dates in the plausible
   range, finite numbers, ``ended_at`` not before ``occurred_at``, an ordered reference range, no v2 field on a v1
   event, and the kind rules (a person event carries ``person``, a clinical event a ``code``, nothing else
   ``person``) (:func:`screener._lean_event.check`);
3. every payload the lean schema rejects or a vectorised check flags, or that the fast path cannot judge with
   certainty, goes through :func:`screener.events.parse_event` one by one: a rejection there is the same error as
   on the per-event path, and an event it accepts (e.g. one with whitespace to strip) joins the frames in order.

The fast path therefore only ever *accepts* what ``parse_event`` accepts, with the same values; every decision
to reject is ``parse_event``'s own. ``tests/unit/test_ingest.py`` checks both paths agree (hypothesis).
"""

from __future__ import annotations

import bisect
import functools
import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from screener._json_event import decode_json, decode_json_lazy
from screener._lean_event import LEAN, PERSON_FIELDS, check, check_lazy, columns
from screener.errors import EventError
from screener.events import Event, parse_event
from screener.state import DO_NOT_CONTACT_CODE, FACTS_SCHEMA, PERSONS_SCHEMA, events_to_frames
from screener.vocab import FACT_KINDS

__all__ = ["DECODE_CHUNK", "KEY_SCHEMA", "DecodedBatch", "decode_batch", "decode_batch_lean"]

#: Columns of :attr:`DecodedBatch.keys`: one row per accepted event, in payload order.
KEY_SCHEMA: dict[str, pl.DataType] = {
    "index": pl.Int64(),
    "patient_id": pl.String(),
    "source": pl.String(),
    "kind": pl.String(),
    "system": pl.String(),
    "code": pl.String(),
    "unit": pl.String(),
    "status": pl.String(),
    "setting": pl.String(),
}
_UPD_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(),
    **{k: v for k, v in PERSONS_SCHEMA.items() if k not in ("do_not_contact", "deceased")},
}
_FACT_SCHEMA: dict[str, pl.DataType] = {"seq": pl.Int64(), **FACTS_SCHEMA}
_CONTROL_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(),
    "patient_id": pl.String(),
    "op": pl.String(),
    "arg": pl.String(),
}


@dataclass(frozen=True)
class DecodedBatch:
    """The result of :func:`decode_batch`.

    ``persons``, ``facts`` and ``control`` equal ``events_to_frames(accepted events)`` (``seq`` is the position
    among the accepted events); ``keys`` has one row per accepted event (``index`` is its payload position);
    ``rejects`` pairs each rejected payload position with the error ``parse_event`` raises for it.
    """

    persons: pl.DataFrame
    facts: pl.DataFrame
    control: pl.DataFrame
    keys: pl.DataFrame
    rejects: list[tuple[int, EventError]] = field(default_factory=list)
    #: How many payloads went through parse_event one by one (a measure, not a contract).
    slow: int = 0

    @property
    def accepted(self) -> int:
        return self.keys.height

    @property
    def frames(self) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        return self.persons, self.facts, self.control

    def split(self, starts: Sequence[int]) -> list[DecodedBatch]:
        """This batch cut back into the payload lists it was decoded from (one decode for several lists costs
        less than one each): ``starts[k]`` is the payload index where list ``k`` begins (ascending, the first
        0). In each part ``index`` and the reject positions count from the part's own start; ``seq`` is kept
        (positions in the whole batch: still the events' order, which is all :func:`apply_frames` reads)."""
        n = len(starts)
        rejects: list[list[tuple[int, EventError]]] = [[] for _ in range(n)]
        for i, exc in self.rejects:
            k = bisect.bisect_right(starts, i) - 1
            rejects[k].append((i - starts[k], exc))
        if self.accepted == 0:
            return [DecodedBatch(*self.frames, self.keys, rejects[k]) for k in range(n)]
        bounds = pl.Series("b", list(starts[1:]), dtype=pl.Int64)
        group = self.keys.select(pl.lit(bounds).search_sorted(pl.col("index"), side="right").cast(pl.Int64).alias("_g"))
        by_seq = pl.lit(group["_g"]).gather(pl.col("seq")).alias("_g")

        def cut(frame: pl.DataFrame, key: pl.Expr) -> list[pl.DataFrame]:
            parts = frame.with_columns(key).partition_by("_g", as_dict=True, include_key=False)
            empty = frame.clear().drop("_g", strict=False)
            return [parts.get((k,), empty) for k in range(n)]

        persons, facts, control = (cut(f, by_seq) for f in self.frames)
        offset = pl.lit(pl.Series(list(starts), dtype=pl.Int64)).gather(pl.col("_g"))
        keys = cut(
            self.keys.with_columns(group["_g"]).with_columns((pl.col("index") - offset).alias("index")), pl.col("_g")
        )
        return [DecodedBatch(persons[k], facts[k], control[k], keys[k], rejects[k]) for k in range(n)]


def decode_batch(payloads: Sequence[bytes | None]) -> DecodedBatch:
    """Validate and decode a batch of raw event payloads (``None`` is treated as an empty payload).

    Accepts and rejects exactly what :func:`screener.events.parse_event` does, one payload at a time, and builds
    the frames :func:`screener.state.events_to_frames` builds from the accepted events, in payload order.
    """
    return _decode(payloads, rust=True)


def decode_batch_lean(payloads: Sequence[bytes | None]) -> DecodedBatch:
    """:func:`decode_batch` without the Rust read (step 1 of the module docstring): every payload through the lean
    pydantic schema. The same result; kept to compare against (tests, benchmarks)."""
    return _decode(payloads, rust=False)


def _decode(payloads: Sequence[bytes | None], *, rust: bool) -> DecodedBatch:
    raw = [p if p is not None else b"" for p in payloads]
    goods: list[pl.DataFrame] = []
    suspect: list[int] = []
    left = list(range(len(raw)))
    if rust and raw:
        try:
            series = pl.Series("raw", raw, dtype=pl.Binary)
        except (TypeError, ValueError, pl.exceptions.PolarsError):  # e.g. a payload that is not bytes
            series = None
        if series is not None and _worth_reading(series):
            good, suspect, left = _rust_read(series)
            goods.append(good)
    lean_rejects: list[int] = []
    parts: list[pl.DataFrame] = []
    for start in range(0, len(left), DECODE_CHUNK):
        where = left[start : start + DECODE_CHUNK]
        part, rejected_here = _lean_chunk([raw[i] for i in where], where)
        parts.append(part)
        lean_rejects += rejected_here
    if parts or not goods:
        good, lean_suspect = check(pl.concat(parts, how="vertical") if parts else columns([], []))
        goods.append(good)
        suspect += lean_suspect
    goods = [g for g in goods if g.height] or goods[-1:]
    fast = goods[0] if len(goods) == 1 else pl.concat(goods, how="vertical").sort("index")
    slow_idx = sorted(lean_rejects + suspect)
    slow_events: list[tuple[int, Event]] = []
    rejects: list[tuple[int, EventError]] = []
    for i in slow_idx:
        payload = raw[i]
        try:
            slow_events.append((i, parse_event(payload)))
        except EventError as exc:
            rejects.append((i, exc))
    rejected = {i for i, _ in rejects}
    accepted = [i for i in range(len(raw)) if i not in rejected] if rejects else list(range(len(raw)))
    rank = pl.DataFrame({"index": accepted, "seq": range(len(accepted))}, schema={"index": pl.Int64, "seq": pl.Int64})
    ranked = fast.lazy().join(rank.lazy(), on="index", how="left", maintain_order="left")
    persons, facts, control, keys = pl.collect_all([*_frames_lazy(ranked), ranked.select(list(KEY_SCHEMA))])
    if slow_events:
        s_persons, s_facts, s_control = events_to_frames(ev for _, ev in slow_events)
        seqs = rank.filter(pl.col("index").is_in([i for i, _ in slow_events]))["seq"]
        remap = [pl.lit(seqs).gather(pl.col("seq")).alias("seq")]
        persons = pl.concat([persons, s_persons.with_columns(remap)]).sort("seq", maintain_order=True)
        facts = pl.concat([facts, s_facts.with_columns(remap)]).sort("seq", maintain_order=True)
        control = pl.concat([control, s_control.with_columns(remap)]).sort("seq", maintain_order=True)
        keys = pl.concat([keys, _event_keys(slow_events)]).sort("index")
    return DecodedBatch(persons, facts, control, keys, rejects, slow=len(slow_idx))


#: Payloads per lean validation call. Each call holds the GIL throughout (pydantic-core, then Polars reading the
#: dicts): over a whole 13,000-event batch that is ~0.2 s in which the engine's batch thread, which decodes
#: nothing but needs the GIL between its Polars calls, stands still; in pieces the two threads interleave.
DECODE_CHUNK = 2_000


def _lean_chunk(raw: list[bytes], where: list[int]) -> tuple[pl.DataFrame, list[int]]:
    """The lean-validated columns of ``raw`` (``where``: their payload positions) and the positions the lean
    schema rejected."""
    # The lean dicts are short-lived and acyclic (freed by reference counting): pausing the cycle collector
    # while they exist saves the collections their allocation would trigger over the engine's large heap.
    paused = gc.isenabled()
    gc.disable()
    try:
        try:
            items: list[Any] = LEAN.validate_python(raw)
        except Exception:  # e.g. a payload that is not bytes: judge every one on the per-event path
            items = list(raw)
        fast_idx = [i for i, it in enumerate(items) if it.__class__ is dict]
        rejected = [where[i] for i, it in enumerate(items) if it.__class__ is not dict]
        return columns([items[i] for i in fast_idx], [where[i] for i in fast_idx]), rejected
    finally:
        if paused:
            gc.enable()


#: Payloads the Rust read tries first in a batch larger than this (spread over the batch): if fewer than half are
#: vouched for (a producer that writes its fields in another order, or explicit nulls), the batch goes straight to
#: the lean path, which would otherwise pay for both reads (OMOP's events, e.g.: 26 CPU-us an event, not 17).
RUST_SAMPLE = 32


def _worth_reading(series: pl.Series) -> bool:
    """Whether the Rust read vouches for at least half of a sample of ``series`` (always, for a small batch)."""
    if series.len() <= RUST_SAMPLE:
        return True
    sample = series.gather_every(series.len() // RUST_SAMPLE)
    try:
        vouched = decode_json_lazy(sample)[0].select(pl.len()).collect().item()
    except pl.exceptions.PolarsError:
        return True  # one payload the reader fails on: the whole read finds it (and judges the rest)
    return bool(2 * vouched >= sample.len())


def _rust_read(series: pl.Series) -> tuple[pl.DataFrame, list[int], list[int]]:
    """Step 0 (then the checks of step 2) in one Polars call: (the rows accepted, the positions to judge on the
    per-event path, the positions left for the lean path)."""
    try:
        cols, left = decode_json_lazy(series)
        good, suspect = check_lazy(cols)
        good_df, suspect_df, left_df = pl.collect_all([good, suspect, left])
        return good_df, suspect_df["index"].to_list(), left_df["index"].to_list()
    except pl.exceptions.PolarsError:  # one payload failed the whole read: find it (decode_json halves the batch)
        eager, rest = decode_json(series)
        good_df, suspect_idx = check(eager)
        return good_df, suspect_idx, rest.to_list()


def _frames(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """events_to_frames, vectorised, over the checked fast rows (``seq`` already assigned)."""
    persons, facts, control = pl.collect_all(_frames_lazy(df.lazy()))
    return persons, facts, control


def _frames_lazy(df: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.LazyFrame]:
    """:func:`_frames` as queries."""
    e = _frame_exprs()
    person_ev = df.filter(e["is_person"]).select(e["person_ev"])
    setting_ev = df.filter(e["has_setting"]).select(e["setting_ev"])
    persons = (
        pl.concat([person_ev, setting_ev], how="diagonal_relaxed")
        .select(e["upd_cast"])
        .sort("seq", maintain_order=True)
    )
    facts = df.filter(e["is_fact"]).select(e["fact_cast"])
    first = df.filter(e["corrects"]).select(e["first"])
    second = df.select(e["second"]).filter(pl.col("op").is_not_null())
    control = pl.concat([first, second]).sort("seq", "_k").drop("_k").select(e["control_cast"])
    return persons, facts, control


@functools.cache
def _frame_exprs() -> dict[str, Any]:
    """The expressions of :func:`_frames_lazy`, built once (building them holds the GIL)."""
    kind, status = pl.col("kind"), pl.col("status")
    is_fact = kind.is_in(list(FACT_KINDS)) & (status != "entered-in-error")
    has_setting = pl.col("setting").is_not_null()
    visit_location = pl.when(kind == "visit").then(pl.col("location"))
    dnc = (pl.col("system") == DO_NOT_CONTACT_CODE[0]) & (pl.col("code") == DO_NOT_CONTACT_CODE[1])
    op = (
        pl.when((kind == "person") & pl.col("merged_from").is_not_null())
        .then(pl.lit("merge"))
        .when((kind == "consent") & dnc)
        .then(pl.when(status == "active").then(pl.lit("dnc_on")).otherwise(pl.lit("dnc_off")))
        .when((kind == "death") & (status != "entered-in-error"))
        .then(pl.lit("death"))
        .when(kind.is_in(list(FACT_KINDS)) & (status == "entered-in-error"))
        .then(pl.lit("retract"))
    )
    arg = (
        pl.when(kind == "person")
        .then(pl.col("merged_from"))
        .when(kind.is_in(list(FACT_KINDS)))
        .then(pl.col("event_id"))
    )
    return {
        "is_person": kind == "person",
        "person_ev": [
            "seq",
            "patient_id",
            *PERSON_FIELDS[:7],
            "setting",
            "site",
            pl.col("occurred_at").alias("updated_at"),
        ],
        "has_setting": is_fact & (has_setting | visit_location.is_not_null()),
        "setting_ev": [
            "seq",
            "patient_id",
            "setting",
            pl.when(has_setting).then(pl.col("site")).alias("site"),
            visit_location,
        ],
        "upd_cast": [pl.col(c).cast(t) for c, t in _UPD_SCHEMA.items()],
        "is_fact": is_fact,
        "fact_cast": [pl.col(c).cast(t) for c, t in _FACT_SCHEMA.items()],
        "corrects": pl.col("corrects").is_not_null(),
        "first": [
            "seq",
            "patient_id",
            pl.lit("retract").alias("op"),
            pl.col("corrects").alias("arg"),
            pl.lit(0).alias("_k"),
        ],
        "second": ["seq", "patient_id", op.alias("op"), arg.alias("arg"), pl.lit(1).alias("_k")],
        "control_cast": [pl.col(c).cast(t) for c, t in _CONTROL_SCHEMA.items()],
    }


def _event_keys(events: list[tuple[int, Event]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            (
                i,
                e.patient_id,
                e.source,
                e.kind,
                e.code.system if e.code else None,
                e.code.value if e.code else None,
                e.unit,
                e.status,
                e.setting,
            )
            for i, e in events
        ],
        schema=KEY_SCHEMA,
        orient="row",
    )
