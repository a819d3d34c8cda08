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
        if isinstance(body, str):
            try:
                ir, ast = Compiler(
                    body,
                    concepts,
                    file=self.file,
                    line=vmark[0],
                    column=vmark[1],
                    style=parent.value_styles.get(name),
                    criterion=name,
                    study_id=self.study_id,
                ).compile()
            except RuleError as exc:
                self.errors.append(exc)
                return None
            return Criterion(name, group, "expr", expression=body, ir=ir, ast=ast, line=mark[0], column=mark[1])
        if isinstance(body, Map):
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
            return Criterion(name, group, kind, at_least=n, children=children, line=mark[0], column=mark[1])
        self.err(f"criterion '{name}' must be an expression or a group (any / all / at_least)", vmark)
        return None
