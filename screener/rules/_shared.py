"""Stage expressions shared between studies: the same expression over the same columns is computed once.

A screen's queries cost about the same per expression whatever the rows (a micro-batch of a few hundred
patients pays almost only for the expressions), and studies repeat one another's expressions: the same age or
setting test, the same "latest eGFR ... on ..." evidence text, whole criteria shared by the versions of a study.
Each expression a study's stages produce gets a structural key, its serialised form with every column it reads
from another stage replaced by that column's key (so two studies' expressions are equal when they compute the
same thing from the same inputs, whatever the columns are called). Per screen, one expression per key is
evaluated (the first, in study order) and the other names are aliases of its column, made only for the names
something still reads. Exact: an alias holds the very values its own expression would compute.

Keys are computed once per compiled study (:class:`screener.rules.criteria.Compiled`) and kept while it lives.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import polars as pl

from screener.rules.criteria import Compiled

__all__ = ["SharedStages", "shared_stages"]

_COLUMN = re.compile(r'\{"Column":("(?:[^"\\]|\\.)*")\}')

#: output column name -> its structural key (every name a compiled study's stages or outcome produce)
_KEYS: dict[str, str] = {}
#: expression -> (the expression, kept alive so its id is not reused; its key; the columns it reads)
_EXPRS: dict[int, tuple[pl.Expr, str, frozenset[str]]] = {}
#: compiled studies already keyed (id -> the object, kept alive for the same reason)
_DONE: dict[int, Compiled] = {}
_LOCK = threading.Lock()
#: beyond this many keyed studies the tables start again (rule reloads make new compiled studies)
_MAX_STUDIES = 2000


def _key(expr: pl.Expr) -> tuple[str, frozenset[str]]:
    """The structural key of ``expr`` (over the names keyed so far) and the columns it reads."""
    text = expr.meta.undo_aliases().meta.serialize(format="json")
    reads = frozenset(expr.meta.root_names())

    def sub(m: re.Match[str]) -> str:
        name = json.loads(m.group(1))
        key = _KEYS.get(name)
        return m.group(0) if key is None else '{"Stage":' + json.dumps(key) + "}"

    return _COLUMN.sub(sub, text), reads


def _learn(comps: Sequence[Compiled]) -> None:
    """Key every expression of ``comps`` not keyed yet (value stages, outcome, evidence stages: in the order
    they read one another)."""
    with _LOCK:
        if len(_DONE) > _MAX_STUDIES:
            _KEYS.clear()
            _EXPRS.clear()
            _DONE.clear()
        for comp in comps:
            if id(comp) in _DONE:
                continue
            for expr in [
                *(e for st in comp.values for e in st),
                comp.outcome,
                *(e for st in comp.evidence for e in st),
            ]:
                try:
                    key, reads = _key(expr)
                except Exception:  # not serialisable (e.g. a Python function): never shared
                    key, reads = f"#{id(expr)}", frozenset(expr.meta.root_names())
                _EXPRS[id(expr)] = (expr, key, reads)
                _KEYS[expr.meta.output_name()] = key
            _DONE[id(comp)] = comp


@dataclass(frozen=True)
class SharedStages:
    """``stages`` (one ``with_columns`` each) compute every asked name: each distinct expression once, the
    other names as aliases of its column, in the stage after it (or in a last stage of their own)."""

    stages: list[list[pl.Expr]]
    #: the columns the stages read that they do not make (from the input frame)
    reads: frozenset[str]
    #: a name the stages do not compute -> the computed column holding its values
    sources: dict[str, str]


def shared_stages(
    comps: Sequence[Compiled],
    stage_lists: Sequence[Sequence[Sequence[pl.Expr]]],
    keep: Collection[str],
    share: bool = True,
) -> SharedStages:
    """The stages of ``stage_lists`` (one list of levels per study of ``comps``, e.g. their ``values`` or
    ``evidence``; the last level may be the outcomes), shared: after them every name in ``keep`` that the
    stages produce exists, and every column the kept expressions read."""
    _learn(comps)
    depth = max((len(st) for st in stage_lists), default=0)
    first: dict[str, str] = {}  # key -> the name computed for it in this call
    computed: dict[str, int] = {}  # computed name -> its level
    alias_of: dict[str, str] = {}  # a name not computed -> the computed name holding its values
    emitted: list[list[pl.Expr]] = []
    reads: set[str] = set()
    for level in range(depth):
        out: list[pl.Expr] = []
        for st in stage_lists:
            if level >= len(st):
                continue
            for expr in st[level]:
                name = expr.meta.output_name()
                if name in computed or name in alias_of:
                    continue  # the same column in two lists (shared leaf evidence)
                _e, key, root = _EXPRS[id(expr)]
                have = first.get(key) if share else None
                if have is not None:
                    alias_of[name] = have
                    continue
                first[key] = name
                computed[name] = level
                out.append(expr)
                reads.update(root)
        emitted.append(out)
    # Aliases, for the names read by a computed expression or kept: in a stage of their own right after their
    # source's (a reader is always in a later level than the name it reads, and the source no later than it).
    wanted = (reads | set(keep)) & set(alias_of)
    after: list[list[pl.Expr]] = [[] for _ in emitted]
    for name in sorted(wanted):
        src = alias_of[name]
        after[computed[src]].append(pl.col(src).alias(name))
    stages = [st for pair in zip(emitted, after, strict=True) for st in pair if st]
    return SharedStages(stages, frozenset(reads - set(computed) - set(alias_of)), alias_of)
