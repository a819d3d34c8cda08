"""Peer engines for the full-screen comparison, and the automatic translation of criteria into their languages.

Every peer evaluates, patient by patient, the same criteria as screener, over the pre-aggregated features of
:mod:`bench._features` (one dict per patient and study, built outside the timed region). The per-study
combination (groups ``any``/``all``/``at_least``, then the eligible/possible/ineligible outcome) is the same
small Python code for every peer, and is timed with it.

Three-valued logic. Screener's criteria are Kleene: an unknown operand makes a comparison unknown, and
``&&``/``||``/``!`` follow Kleene's tables. The peers cannot express that natively, so:

* **pyjexl** (the interpreted baseline) evaluates each criterion's own AST with pyjexl's ``Evaluator``, given
  Kleene operators (comparisons and arithmetic return ``None`` on a ``None`` operand; lazy ``&&``/``||``;
  ``!None`` is ``None``; a ternary with an unknown test is unknown). The expression is parsed once, not per
  patient (``JEXL.evaluate`` would re-parse every call; that would flatter us).
* **rule-engine, simpleeval, zen-engine** get a *dual-rail* translation: each boolean node becomes two
  expressions, "definitely true" and "definitely false" (``T(a && b) = T(a) and T(b)``,
  ``F(a && b) = F(a) or F(b)``, ``T(!a) = F(a)``; a comparison is true when both operands are known and it
  holds). Unknown numeric or string attributes are encoded in the features as a neutral value (``0``/``""``)
  plus a ``<column>__k`` boolean "known" flag, which the translated expressions test. A criterion is true when
  ``T`` holds, false when ``F`` holds, unknown otherwise; ``F`` is only evaluated when ``T`` is false.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
from pyjexl import JEXL
from pyjexl.evaluator import Evaluator
from pyjexl.operators import Operator
from pyjexl.parser import (
    ArrayLiteral,
    BinaryExpression,
    ConditionalExpression,
    Node,
    UnaryExpression,
)

from bench._features import PERSON_ATTRIBUTES, Feature, FeatureRef, Group, Leaf, StudyPlan
from screener.rules.windows import parse_window

__all__ = ["PEERS", "Peer", "contexts", "pyjexl_raw", "raw_contexts", "run_peer"]

Outcome = str  # "eligible" | "possible" | "ineligible"
Truth = bool | None
Check = Callable[[dict[str, Any]], Truth]

_COMPARE = frozenset({"==", "!=", "<", "<=", ">", ">=", "in"})
_ARITH = frozenset({"+", "-", "*", "/", "//", "%", "^"})


# --- per-patient contexts ---------------------------------------------------------------------------------

_EMPTY: tuple[list[Any], list[Any]] = ([], [])


def raw_contexts(
    attributes: pl.DataFrame, lists: dict[str, dict[str, tuple[list[Any], list[Any]]]], plan: StudyPlan
) -> list[dict[str, Any]]:
    """One dict per patient: person attributes and, per concept name of the study, its (times, values)."""
    out = []
    names = list(plan.concepts.items())
    for row in attributes.to_dicts():
        mine = lists.get(row["patient_id"], {})
        row.update({name: mine.get(key, _EMPTY) for name, key in names})
        out.append(row)
    return out


def contexts(
    frame: pl.DataFrame, plan: StudyPlan, features: dict[str, Feature], *, encoded: bool
) -> list[dict[str, Any]]:
    """One dict per patient with the columns ``plan`` reads. ``encoded``: neutral values + ``__k`` flags."""
    cols = sorted(plan.columns)
    if not encoded:
        return frame.select(cols).to_dicts()
    exprs: list[pl.Expr] = []
    for c in cols:
        nullable, numeric = _column_kind(c, features)
        if not nullable:
            exprs.append(pl.col(c))
            continue
        exprs.append(pl.col(c).is_not_null().alias(f"{c}__k"))
        exprs.append(pl.col(c).fill_null(0 if numeric else ""))
    return frame.select(exprs).to_dicts()


def _column_kind(column: str, features: dict[str, Feature]) -> tuple[bool, bool]:
    """(nullable, numeric) for a context column."""
    if column in PERSON_ATTRIBUTES:
        return True, PERSON_ATTRIBUTES[column]
    f = features[column]
    return f.nullable, not f.boolean


# --- outcome combination (shared by every peer) -----------------------------------------------------------


def _group(kind: str, n: int, checks: Sequence[Check]) -> Check:
    if kind == "all":

        def all_(ctx: dict[str, Any]) -> Truth:
            unknown = False
            for c in checks:
                r = c(ctx)
                if r is False:
                    return False
                if r is None:
                    unknown = True
            return None if unknown else True

        return all_
    if kind == "any":

        def any_(ctx: dict[str, Any]) -> Truth:
            unknown = False
            for c in checks:
                r = c(ctx)
                if r is True:
                    return True
                if r is None:
                    unknown = True
            return None if unknown else False

        return any_

    def at_least(ctx: dict[str, Any]) -> Truth:
        results = [c(ctx) for c in checks]
        true = results.count(True)
        if true >= n:
            return True
        return False if true + results.count(None) < n else None

    return at_least


def _kleene_all(results: Sequence[Truth]) -> Truth:
    return False if False in results else (None if None in results else True)


def _kleene_any(results: Sequence[Truth]) -> Truth:
    return True if True in results else (None if None in results else False)


def _group_full(kind: str, n: int, checks: Sequence[Check]) -> Check:
    """Like :func:`_group`, but every member is evaluated (its value is part of the output)."""

    def group(ctx: dict[str, Any]) -> Truth:
        results = [c(ctx) for c in checks]
        if kind == "all":
            return _kleene_all(results)
        if kind == "any":
            return _kleene_any(results)
        true = results.count(True)
        return True if true >= n else (False if true + results.count(None) < n else None)

    return group


def _outcome_full(include: Sequence[Check], exclude: Sequence[Check]) -> Callable[[dict[str, Any]], Outcome]:
    """Every criterion evaluated (as screener's ``screen()`` reports each one), then the outcome."""

    def outcome(ctx: dict[str, Any]) -> Outcome:
        inc = [c(ctx) for c in include]
        exc = [c(ctx) for c in exclude]
        if False in inc or True in exc:
            return "ineligible"
        return "possible" if None in inc or None in exc else "eligible"

    return outcome


def _outcome(include: Sequence[Check], exclude: Sequence[Check]) -> Callable[[dict[str, Any]], Outcome]:
    def outcome(ctx: dict[str, Any]) -> Outcome:
        unknown = False
        for c in include:
            r = c(ctx)
            if r is False:
                return "ineligible"
            if r is None:
                unknown = True
        for c in exclude:
            r = c(ctx)
            if r is True:
                return "ineligible"
            if r is None:
                unknown = True
        return "possible" if unknown else "eligible"

    return outcome


# --- peers ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """``compile_leaf(leaf, features) -> Check``; ``context``: ``features`` (pre-aggregated, nulls as
    ``None``), ``encoded`` (dual-rail: neutral values and ``__k`` flags) or ``facts`` (per-concept fact lists)."""

    name: str
    package: str
    compile_leaf: Callable[[Leaf, dict[str, Feature]], Check]
    context: str
    note: str


def compile_study(
    peer: Peer, plan: StudyPlan, features: dict[str, Feature], *, every: bool = False
) -> Callable[[dict[str, Any]], Outcome]:
    """The per-patient outcome function. ``every``: evaluate every criterion (no early exit)."""
    group, outcome = (_group_full, _outcome_full) if every else (_group, _outcome)

    def node(n: Leaf | Group) -> Check:
        if isinstance(n, Leaf):
            return peer.compile_leaf(n, features)
        return group(n.kind, n.n, [node(c) for c in n.children])

    return outcome([node(n) for n in plan.include], [node(n) for n in plan.exclude])


def run_peer(
    peer: Peer,
    plans: Sequence[StudyPlan],
    ctxs: Sequence[Sequence[dict[str, Any]]],
    features: dict[str, Feature],
    *,
    every: bool = False,
) -> list[list[Outcome]]:
    """Outcomes per study (in ``plans`` order), per patient (in context order). The timed loop.

    By default a study stops at the first inclusion that is false or exclusion that is true (the outcome is
    then known); ``every`` evaluates every criterion, as screener's ``screen()`` does to report each one.
    """
    compiled = [compile_study(peer, p, features, every=every) for p in plans]
    return [[fn(ctx) for ctx in study_ctxs] for fn, study_ctxs in zip(compiled, ctxs, strict=True)]


# pyjexl, Kleene operators ---------------------------------------------------------------------------------


def _strict(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def op(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        return fn(a, b)

    return op


def _nonzero(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def op(a: Any, b: Any) -> Any:
        return None if b == 0 else fn(a, b)

    return op


def _kleene_and(a: Callable[[], Any], b: Callable[[], Any]) -> Truth:
    x = a()
    if x is False:
        return False
    y = b()
    if y is False:
        return False
    return None if x is None or y is None else True


def _kleene_or(a: Callable[[], Any], b: Callable[[], Any]) -> Truth:
    x = a()
    if x is True:
        return True
    y = b()
    if y is True:
        return True
    return None if x is None or y is None else False


class _KleeneEvaluator(Evaluator):  # type: ignore[misc]  # pyjexl ships no types: Evaluator is Any to mypy
    def visit_ConditionalExpression(self, conditional: ConditionalExpression, context: Any) -> Any:
        test = self.evaluate(conditional.test, context)
        if test is None:
            return None
        return self.evaluate(conditional.consequent if test else conditional.alternate, context)


def _kleene_jexl() -> JEXL:
    jexl = JEXL()
    ops = jexl.config.binary_operators
    for sym, fn in {
        "+": operator.add,
        "-": operator.sub,
        "*": operator.mul,
        "//": _nonzero(operator.floordiv),
        "/": _nonzero(operator.truediv),
        "%": _nonzero(operator.mod),
        "^": operator.pow,
        "==": operator.eq,
        "!=": operator.ne,
        ">=": operator.ge,
        ">": operator.gt,
        "<=": operator.le,
        "<": operator.lt,
        "in": lambda a, b: a in b,
    }.items():
        ops[sym] = Operator(sym, ops[sym].precedence, _strict(fn))
    ops["&&"] = Operator("&&", ops["&&"].precedence, _kleene_and, evaluate_lazy=True)
    ops["||"] = Operator("||", ops["||"].precedence, _kleene_or, evaluate_lazy=True)
    jexl.config.unary_operators["!"] = Operator("!", 1000, lambda a: None if a is None else not a)
    return jexl


_JEXL = _kleene_jexl()


def _rebind(node: Node) -> Node:
    """The same AST with operators from the Kleene config (the parser binds operator objects)."""
    if isinstance(node, BinaryExpression):
        op = _JEXL.config.binary_operators[node.operator.symbol]
        return BinaryExpression(operator=op, left=_rebind(node.left), right=_rebind(node.right))
    if isinstance(node, UnaryExpression):
        return UnaryExpression(operator=_JEXL.config.unary_operators[node.operator.symbol], right=_rebind(node.right))
    if isinstance(node, ConditionalExpression):
        return ConditionalExpression(
            test=_rebind(node.test), consequent=_rebind(node.consequent), alternate=_rebind(node.alternate)
        )
    if isinstance(node, ArrayLiteral):
        return ArrayLiteral(value=[_rebind(v) for v in node.value])
    return node


def _pyjexl_leaf(leaf: Leaf, features: dict[str, Feature]) -> Check:
    evaluator = _KleeneEvaluator(_JEXL.config)
    ast = _rebind(leaf.ast)

    def check(ctx: dict[str, Any]) -> Truth:
        r = evaluator.evaluate(ast, ctx)
        return None if r is None else bool(r)

    return check


def _window_starts(now: datetime) -> Callable[[str | None], datetime | None]:
    cache: dict[str | None, datetime | None] = {None: None}

    def start(w: str | None) -> datetime | None:
        if w not in cache:
            cache[w] = parse_window(w).start(now)
        return cache[w]

    return start


def _raw_transforms(now: datetime) -> dict[str, Callable[..., Any]]:
    """pyjexl transforms over one concept's (times, values) lists, sorted by time: the rules' semantics."""
    start = _window_starts(now)

    def inside(facts: tuple[list[Any], list[Any]], w: str | None) -> tuple[list[Any], list[Any]]:
        s = start(w)
        if s is None:
            return facts
        times, values = facts
        keep = [i for i, t in enumerate(times) if t >= s]
        return [times[i] for i in keep], [values[i] for i in keep]

    def numbers(facts: tuple[list[Any], list[Any]], w: str | None) -> list[float]:
        return [v for v in inside(facts, w)[1] if v is not None]

    def ever(facts: Any) -> bool:
        return bool(facts[0])

    def within(facts: Any, w: str) -> bool:
        return bool(inside(facts, w)[0])

    def count(facts: Any, w: str | None = None) -> float:
        return float(len(inside(facts, w)[0]))

    def latest(facts: Any, w: str | None = None) -> float | None:
        vs = numbers(facts, w)
        return vs[-1] if vs else None

    def earliest(facts: Any, w: str | None = None) -> float | None:
        vs = numbers(facts, w)
        return vs[0] if vs else None

    def min_(facts: Any, w: str | None = None) -> float | None:
        vs = numbers(facts, w)
        return min(vs) if vs else None

    def max_(facts: Any, w: str | None = None) -> float | None:
        vs = numbers(facts, w)
        return max(vs) if vs else None

    def mean(facts: Any, w: str | None = None) -> float | None:
        vs = numbers(facts, w)
        return sum(vs) / len(vs) if vs else None

    def days_since(facts: Any) -> float | None:
        return float((now - facts[0][-1]).days) if facts[0] else None

    return {
        "ever": ever,
        "within": within,
        "count": count,
        "latest": latest,
        "earliest": earliest,
        "min": min_,
        "max": max_,
        "mean": mean,
        "days_since": days_since,
    }


def pyjexl_raw(now: datetime) -> Peer:
    """pyjexl over each criterion's own AST, transforms implemented in Python over per-patient fact lists."""
    jexl = _kleene_jexl()
    for name, fn in _raw_transforms(now).items():
        jexl.add_transform(name, fn)

    def compile_leaf(leaf: Leaf, features: dict[str, Feature]) -> Check:
        evaluator = _KleeneEvaluator(jexl.config)
        ast = _rebind(leaf.raw_ast)

        def check(ctx: dict[str, Any]) -> Truth:
            r = evaluator.evaluate(ast, ctx)
            return None if r is None else bool(r)

        return check

    return Peer(
        "pyjexl-raw",
        "pyjexl",
        compile_leaf,
        "facts",
        "pyjexl's own Evaluator over each criterion's own AST, transforms (ever, within, latest, ...) "
        "in Python over the patient's facts",
    )


# dual-rail translation -------------------------------------------------------------------------------------


class _Syntax:
    """How one peer spells things. Strings in, strings out; TRUE/FALSE are folded away."""

    true = "true"
    false = "false"
    pow_op = "^"

    def and_(self, a: str, b: str) -> str:
        if a == self.false or b == self.false:
            return self.false
        if a == self.true:
            return b
        if b == self.true:
            return a
        return f"({a} and {b})"

    def or_(self, a: str, b: str) -> str:
        if a == self.true or b == self.true:
            return self.true
        if a == self.false:
            return b
        if b == self.false:
            return a
        return f"({a} or {b})"

    def not_(self, a: str) -> str:
        if a == self.true:
            return self.false
        if a == self.false:
            return self.true
        return f"(not {a})"

    def binary(self, op: str, a: str, b: str) -> str:
        if op == "^":
            op = self.pow_op
        return f"({a} {op} {b})"

    def ternary(self, c: str, a: str, b: str) -> str:
        return f"({c} ? {a} : {b})"

    def literal(self, value: Any) -> str:
        if isinstance(value, bool):
            return self.true if value else self.false
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(value, float) and math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return repr(float(value))
        return repr(value)

    def array(self, items: list[str]) -> str:
        return "[" + ", ".join(items) + "]"


class _PythonSyntax(_Syntax):
    true = "True"
    false = "False"
    pow_op = "**"

    def ternary(self, c: str, a: str, b: str) -> str:
        return f"({a} if {c} else {b})"

    def literal(self, value: Any) -> str:
        return repr(value)


class _ZenSyntax(_Syntax):
    def not_(self, a: str) -> str:
        if a in (self.true, self.false):
            return super().not_(a)
        return f"not({a})"

    def binary(self, op: str, a: str, b: str) -> str:
        if op == "//":
            return f"floor({a} / {b})"
        return super().binary(op, a, b)


class _RuleEngineSyntax(_Syntax):
    pow_op = "**"


@dataclass(frozen=True)
class _DualRail:
    """Translate a criterion's IR (the compiler's typed tree, features as :class:`FeatureRef`) into
    (T, F) expression strings in one peer's syntax."""

    syntax: _Syntax

    def boolean(self, node: Any) -> tuple[str, str]:
        from screener.rules.compiler import Bin, Cond, Lit, Not

        s = self.syntax
        if isinstance(node, Lit) and node.type == "bool":
            return (s.true, s.false) if node.value else (s.false, s.true)
        if isinstance(node, FeatureRef) and node.boolean:
            return node.column, s.not_(node.column)
        if isinstance(node, Not):
            t, f_ = self.boolean(node.operand)
            return f_, t
        if isinstance(node, Bin):
            if node.op in ("&&", "||"):
                (t1, f1), (t2, f2) = self.boolean(node.left), self.boolean(node.right)
                if node.op == "&&":
                    return s.and_(t1, t2), s.or_(f1, f2)
                return s.or_(t1, t2), s.and_(f1, f2)
            if node.op in _COMPARE:
                (v1, k1), (v2, k2) = self.value(node.left), self.value(node.right)
                known = s.and_(k1, k2)
                holds = s.binary(node.op, v1, v2)
                return s.and_(known, holds), s.and_(known, s.not_(holds))
        if isinstance(node, Cond):
            (tc, fc), (ta, fa), (tb, fb) = self.boolean(node.test), self.boolean(node.then), self.boolean(node.other)
            return s.or_(s.and_(tc, ta), s.and_(fc, tb)), s.or_(s.and_(tc, fa), s.and_(fc, fb))
        raise ValueError(f"cannot use {node!r} as a condition")

    def value(self, node: Any) -> tuple[str, str]:
        """(value expression, known expression)."""
        from screener.rules.compiler import Arr, Attr, Bin, Cond, Lit

        s = self.syntax
        if isinstance(node, Lit):
            return s.literal(node.value), s.true
        if isinstance(node, Arr):
            return s.array([s.literal(v) for v in node.values]), s.true
        if isinstance(node, Attr):
            return node.name, f"{node.name}__k"
        if isinstance(node, FeatureRef) and not node.boolean:
            return node.column, (f"{node.column}__k" if node.nullable else s.true)
        if isinstance(node, Bin) and node.op in _ARITH:
            (v1, k1), (v2, k2) = self.value(node.left), self.value(node.right)
            known = s.and_(k1, k2)
            if node.op in ("/", "//", "%"):  # division by zero is unknown, as in screener
                known = s.and_(known, s.binary("!=", v2, s.literal(0.0)))
            return s.binary(node.op, v1, v2), known
        if isinstance(node, Cond) and node.type != "bool":
            tc, fc = self.boolean(node.test)
            (va, ka), (vb, kb) = self.value(node.then), self.value(node.other)
            return s.ternary(tc, va, vb), s.or_(s.and_(tc, ka), s.and_(fc, kb))
        # A boolean used as a value (``x|ever == true``).
        t, f_ = self.boolean(node)
        return t, s.or_(t, f_)


def _dual_rail_leaf(
    syntax: _Syntax, compile_text: Callable[[str], Callable[[dict[str, Any]], Any]]
) -> Callable[[Leaf, dict[str, Feature]], Check]:
    def compile_leaf(leaf: Leaf, features: dict[str, Feature]) -> Check:
        t_text, f_text = _DualRail(syntax).boolean(leaf.ir)
        t_fn, f_fn = compile_text(t_text), compile_text(f_text)

        def check(ctx: dict[str, Any]) -> Truth:
            if t_fn(ctx):
                return True
            return False if f_fn(ctx) else None

        return check

    return compile_leaf


def _rule_engine_compile(text: str) -> Callable[[dict[str, Any]], Any]:
    import rule_engine

    rule = rule_engine.Rule(text)
    evaluate: Callable[[dict[str, Any]], Any] = rule.evaluate  # rule-engine ships no types
    return evaluate


def _simpleeval_compile(text: str) -> Callable[[dict[str, Any]], Any]:
    from simpleeval import EvalWithCompoundTypes, SimpleEval

    s = EvalWithCompoundTypes() if "[" in text else SimpleEval()
    parsed = s.parse(text)

    def evaluate(ctx: dict[str, Any]) -> Any:
        s.names = ctx
        return s.eval(text, previously_parsed=parsed)

    return evaluate


def _zen_compile(text: str) -> Callable[[dict[str, Any]], Any]:
    import zen

    return zen.compile_expression(text).evaluate


PEERS: dict[str, Peer] = {
    "pyjexl": Peer(
        "pyjexl",
        "pyjexl",
        _pyjexl_leaf,
        "features",
        "pyjexl's own Evaluator over each criterion's AST (parsed once), Kleene operators",
    ),
    "rule-engine": Peer(
        "rule-engine",
        "rule-engine",
        _dual_rail_leaf(_RuleEngineSyntax(), _rule_engine_compile),
        "encoded",
        "rule_engine.Rule per expression (parsed once), dual-rail Kleene",
    ),
    "simpleeval": Peer(
        "simpleeval",
        "simpleeval",
        _dual_rail_leaf(_PythonSyntax(), _simpleeval_compile),
        "encoded",
        "SimpleEval with previously_parsed ASTs, dual-rail Kleene",
    ),
    "zen-engine": Peer(
        "zen-engine",
        "zen-engine",
        _dual_rail_leaf(_ZenSyntax(), _zen_compile),
        "encoded",
        "zen.compile_expression (Rust VM) per expression, dual-rail Kleene",
    ),
}
