"""The ``concepts:`` block of a rule file and the shared ``concepts/*.yaml`` files."""

from __future__ import annotations

from typing import Any

from screener.errors import RuleError, did_you_mean
from screener.rules._context import _CODE_PATTERNS, _CONCEPT_KEYS, _NAME, _SYSTEM_KEYS, Context
from screener.rules._yaml import Map, Seq, load_yaml
from screener.rules.concepts import PREFIX_SYSTEMS, ConceptSet
from screener.rules.ir import ATTRIBUTES
from screener.rules.units import ANALYTES, KNOWN_UNITS, is_known_unit, loinc_table, loinc_units, normalise_unit

__all__ = ["ConceptsMixin"]


class ConceptsMixin(Context):
    def concepts(self, doc: Map) -> dict[str, ConceptSet]:
        out: dict[str, ConceptSet] = {}
        section = doc.get("concepts")
        if section is None:
            return out
        if not isinstance(section, Map):
            self.err("'concepts' must be a mapping of name -> codes", doc.value_marks["concepts"])
            return out
        for name, body in section.items():
            mark = section.marks[name]
            if not isinstance(name, str) or not _NAME.match(name):
                self.err(f"concept name {name!r} must be letters, digits and '_'", mark)
                continue
            if name in ATTRIBUTES:
                self.err(f"concept name '{name}' clashes with the person attribute of that name", mark)
                continue
            c = self.concept(name, body, mark, section.value_marks[name])
            if c is not None:
                out[name] = c
        return out

    def concept(
        self, name: str, body: Any, mark: tuple[int, int], vmark: tuple[int, int], shared: bool = False
    ) -> ConceptSet | None:
        if not isinstance(body, Map):
            self.err(f"concept '{name}' must be a mapping such as {{icd10: [E11]}}", vmark)
            return None
        if "ref" in body and not shared:
            return self.concept_ref(name, body)
        allowed = [*_SYSTEM_KEYS, *(k for k in _CONCEPT_KEYS if k != "ref" or not shared)]
        errors_before = len(self.errors)
        codes: list[tuple[str, str]] = []
        excludes: list[tuple[str, str]] = []
        unit = analyte = label = None
        for key, value in body.items():
            kmark, valmark = body.marks[key], body.value_marks[key]
            lk = str(key).lower()
            if lk in _SYSTEM_KEYS:
                codes.extend(self.codes(_SYSTEM_KEYS[lk], value, valmark, name))
            elif key == "exclude":
                if not isinstance(value, Map):
                    self.err(f"'exclude' of concept '{name}' must be a mapping such as {{atc: [A10AE56]}}", valmark)
                    continue
                for sk, sv in value.items():
                    if str(sk).lower() not in _SYSTEM_KEYS:
                        self.err(
                            f"unknown code system '{sk}' in concept '{name}'",
                            value.marks[sk],
                            did_you_mean(str(sk).lower(), _SYSTEM_KEYS),
                        )
                    else:
                        excludes.extend(self.codes(_SYSTEM_KEYS[str(sk).lower()], sv, value.value_marks[sk], name))
            elif key == "unit":
                if not isinstance(value, str) or not is_known_unit(value):
                    self.err(
                        f"unknown unit {value!r} in concept '{name}'",
                        valmark,
                        did_you_mean(str(value).lower(), KNOWN_UNITS),
                    )
                else:
                    unit = value
            elif key == "analyte":
                if value not in ANALYTES:
                    self.err(
                        f"unknown analyte {value!r} in concept '{name}' (one of {', '.join(ANALYTES)})",
                        valmark,
                        did_you_mean(str(value), ANALYTES),
                    )
                else:
                    analyte = value
            elif key == "label":
                label = str(value)
            else:
                self.err(f"unknown code system or key '{key}' in concept '{name}'", kmark, did_you_mean(lk, allowed))
        if not codes and len(self.errors) == errors_before:
            self.err(f"concept '{name}' lists no codes", mark)
        if unit is not None:
            self.check_loinc_unit(name, unit, codes, body.value_marks.get("unit", mark))
        return ConceptSet(name, tuple(codes), tuple(excludes), unit, analyte, label, mark[0], mark[1])

    def check_loinc_unit(self, name: str, unit: str, codes: list[tuple[str, str]], mark: tuple[int, int]) -> None:
        """A unit no value of one of the set's LOINC codes can be in (``mmol/L`` on eGFR) is an error."""
        for system, code in codes:
            allowed = loinc_units(code) if system == "LOINC" else None
            if allowed is None or normalise_unit(unit) in allowed:
                continue
            row = loinc_table()[code.strip()]
            written = ", ".join(dict.fromkeys([row.unit, *row.others]))
            self.err(
                f"unit '{unit}' of concept '{name}' is impossible for LOINC {code} ({row.name}): its values are in "
                f"{written} or a unit that converts to it",
                mark,
            )
            return

    def codes(self, system: str, value: Any, mark: tuple[int, int], name: str) -> list[tuple[str, str]]:
        if isinstance(value, str | int):
            items, marks = [value], [mark]
        elif isinstance(value, Seq):
            items, marks = list(value), value.marks
        else:
            self.err(f"codes of concept '{name}' must be a list such as [E11, E13]", mark)
            return []
        out = []
        for item, m in zip(items, marks, strict=True):
            if isinstance(item, bool) or not isinstance(item, str | int):
                self.err(f"code {item!r} in concept '{name}' must be text", m)
                continue
            code = str(item).strip()
            pattern = _CODE_PATTERNS.get(system)
            check = code.upper() if system in PREFIX_SYSTEMS else code
            if pattern is not None and not pattern.match(check):
                self.err(f"'{code}' is not a valid {system} code (concept '{name}')", m)
                continue
            out.append((system, code))
        return out

    def concept_ref(self, name: str, body: Map) -> ConceptSet | None:
        ref = body["ref"]
        vmark = body.value_marks["ref"]
        extra = [k for k in body if k != "ref"]
        if extra:
            self.err(f"concept '{name}' with 'ref' cannot also have '{extra[0]}'", body.marks[extra[0]])
        shared = self.shared_concepts()
        if not isinstance(ref, str) or ref not in shared:
            self.err(
                f"unknown shared concept set '{ref}' (looked in {self.path.parent / 'concepts'})",
                vmark,
                did_you_mean(str(ref), shared),
            )
            return None
        c = shared[ref]
        return ConceptSet(name, c.codes, c.exclude, c.unit, c.analyte, c.label, body.mark[0], body.mark[1])

    _shared_cache: dict[str, ConceptSet] | None = None

    def shared_concepts(self) -> dict[str, ConceptSet]:
        """Concept sets from ``concepts/*.yaml`` beside the rule file (errors reported at their own file)."""
        if self._shared_cache is not None:
            return self._shared_cache
        out: dict[str, ConceptSet] = {}
        folder = self.path.parent / "concepts"
        for f in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]) if folder.is_dir() else []:
            raw = f.read_bytes()
            self.extra_hash.append(raw)
            saved = self.file
            self.file = str(f)
            try:
                doc = load_yaml(raw.decode("utf-8"), str(f))
            except RuleError as exc:
                self.errors.append(exc)
                self.file = saved
                continue
            section = doc.get("concepts", doc) if isinstance(doc, Map) else None
            if not isinstance(section, Map):
                self.err("a shared concepts file must be a mapping of name -> codes", (1, 1))
            else:
                for cname, body in section.items():
                    c = self.concept(str(cname), body, section.marks[cname], section.value_marks[cname], True)
                    if c is not None:
                        out[str(cname)] = c
            self.file = saved
        self._shared_cache = out
        return out
