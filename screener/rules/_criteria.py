"""The ``include:`` and ``exclude:`` blocks of a rule file: named expressions and groups."""

from __future__ import annotations

from typing import Any

from screener.errors import RuleError, did_you_mean
from screener.rules._context import _NAME, GROUP_KINDS, IMPLICIT_SETTING, Context
from screener.rules._yaml import Map
from screener.rules.concepts import ConceptSet
from screener.rules.model import Criterion
from screener.rules.typecheck import Compiler

__all__ = ["CriteriaMixin"]


class CriteriaMixin(Context):
    def criteria(self, doc: Map, group: str, concepts: dict[str, ConceptSet]) -> tuple[Criterion, ...]:
        section = doc.get(group)
        if section is None:
            return ()
        if not isinstance(section, Map):
            self.err(f"'{group}' must be a mapping of criterion name -> expression", doc.value_marks[group])
            return ()
        return self.criteria_map(section, group, concepts)

    def criteria_map(self, section: Map, group: str, concepts: dict[str, ConceptSet]) -> tuple[Criterion, ...]:
        out = []
        for name, body in section.items():
            c = self.criterion(str(name), body, section, group, concepts)
            if c is not None:
                out.append(c)
        return tuple(out)

    def criterion(
        self, name: str, body: Any, parent: Map, group: str, concepts: dict[str, ConceptSet]
    ) -> Criterion | None:
        mark = parent.marks[name]
        vmark = parent.value_marks[name]
        if not _NAME.match(name):
            self.err(f"criterion name '{name}' must be letters, digits and '_'", mark)
            return None
        if name == IMPLICIT_SETTING:
            self.err(f"'{IMPLICIT_SETTING}' is reserved (it is added from study.settings)", mark)
            return None
        if name in self.names:
            self.err(f"duplicate criterion name '{name}' (first defined on line {self.names[name]})", mark)
            return None
        self.names[name] = mark[0]
        if isinstance(body, bool):
            body = "true" if body else "false"
        label = None
        if isinstance(body, Map) and "label" in body:
            label = body.get("label")
            if not isinstance(label, str) or not label.strip():
                self.err(f"the label of criterion '{name}' must be text", body.value_marks["label"])
                return None
            label = label.strip()
        if isinstance(body, Map) and "expr" in body:
            extra = [k for k in body if k not in ("expr", "label")]
            if extra:
                self.err(
                    f"unknown key '{extra[0]}' in criterion '{name}' (a criterion takes expr and label)",
                    body.marks[extra[0]],
                    did_you_mean(str(extra[0]), ("expr", "label")),
                )
                return None
            expr = body["expr"]
            if isinstance(expr, bool):
                expr = "true" if expr else "false"
            if not isinstance(expr, str):
                self.err(f"the expr of criterion '{name}' must be an expression", body.value_marks["expr"])
                return None
            return self.expression(name, group, expr, concepts, body, "expr", mark, label)
        if isinstance(body, str):
            return self.expression(name, group, body, concepts, parent, name, mark, None)
        if isinstance(body, Map):
            body = _without_label(body)
            kinds = [k for k in body if k in GROUP_KINDS]
            if len(kinds) != 1:
                self.err(
                    f"group '{name}' needs exactly one of any / all / at_least",
                    mark,
                    did_you_mean(str(next(iter(body), "")), GROUP_KINDS) if not kinds else None,
                )
                return None
            kind = kinds[0]
            n = 0
            if kind == "at_least":
                n = body["at_least"]
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    self.err(f"'at_least' of group '{name}' must be a whole number >= 1", body.value_marks[kind])
                    return None
                members = body.get("of")
                allowed: tuple[str, ...] = ("at_least", "of")
            else:
                members = body[kind]
                allowed = (kind,)
                if isinstance(members, Map) and list(members) == ["of"]:
                    members = members["of"]
                elif members is None and "of" in body:
                    members = body["of"]
                    allowed = (kind, "of")
            for k in body:
                if k not in allowed:
                    self.err(f"unknown key '{k}' in group '{name}'", body.marks[k], did_you_mean(str(k), allowed))
            if not isinstance(members, Map) or not members:
                self.err(
                    f"group '{name}' needs a mapping of named criteria ({kind}"
                    f"{': N, of' if kind == 'at_least' else ''}: ...)",
                    vmark,
                )
                return None
            children = self.criteria_map(members, group, concepts)
            if len(children) != len(members):
                return None
            if kind == "at_least" and n > len(children):
                self.err(f"group '{name}' needs at least {n} of only {len(children)} criteria", body.value_marks[kind])
                return None
            return Criterion(
                name, group, kind, at_least=n, children=children, line=mark[0], column=mark[1], label=label
            )
        self.err(f"criterion '{name}' must be an expression or a group (any / all / at_least)", vmark)
        return None

    def expression(
        self,
        name: str,
        group: str,
        text: str,
        concepts: dict[str, ConceptSet],
        parent: Map,
        key: str,
        mark: tuple[int, int],
        label: str | None,
    ) -> Criterion | None:
        """Compile one criterion's expression (``parent[key]`` is its text, for positions)."""
        vmark = parent.value_marks[key]
        try:
            ir, ast = Compiler(
                text,
                concepts,
                file=self.file,
                line=vmark[0],
                column=vmark[1],
                style=parent.value_styles.get(key),
                criterion=name,
                study_id=self.study_id,
            ).compile()
        except RuleError as exc:
            self.errors.append(exc)
            return None
        return Criterion(
            name, group, "expr", expression=text, ir=ir, ast=ast, line=mark[0], column=mark[1], label=label
        )


def _without_label(body: Map) -> Map:
    if "label" not in body:
        return body
    out = Map()
    out.mark = body.mark
    for k, v in body.items():
        if k != "label":
            out[k] = v
            out.marks[k] = body.marks[k]
            out.value_marks[k] = body.value_marks[k]
            out.value_styles[k] = body.value_styles.get(k)
    return out
