"""Load rule files: YAML with positions -> validated, compiled :class:`~screener.rules.model.Study`.

Every problem is a :class:`RuleError` formatted ``FILE:LINE:COL: error: MESSAGE (did you mean 'x'?)``.
Loading keeps going after an error so one run reports every problem in a file (:class:`RuleErrors`);
:func:`load_studies` never lets one bad file stop the others.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from screener.errors import RuleError, did_you_mean
from screener.events import CODE_SYSTEMS, SETTINGS, parse_event
from screener.rules._yaml import Map, Seq, load_yaml
from screener.rules.compiler import Compiler
from screener.rules.model import PREFIX_SYSTEMS, ConceptSet, Criterion, Study, TestCase
from screener.rules.units import ANALYTES, KNOWN_UNITS, is_known_unit

__all__ = ["LoadResult", "RuleErrors", "load_studies", "load_study", "loads_study"]

SPONSORS = ("commercial", "non-commercial")
OUTCOMES = ("eligible", "possible", "ineligible")
_SYSTEM_KEYS = {s.lower(): s for s in CODE_SYSTEMS}
_CONCEPT_KEYS = ("unit", "exclude", "ref", "analyte", "label")
_STUDY_KEYS = ("id", "title", "summary", "sponsor", "portfolio", "target", "opens", "closes", "settings", "team")
_TOP_KEYS = ("study", "concepts", "include", "exclude", "tests")
_ID = re.compile(r"^[A-Z0-9][A-Z0-9-]*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE_PATTERNS = {
    "ICD10": re.compile(r"^[A-Z]([0-9]([0-9](\.?[0-9A-Z]{1,4})?)?)?$"),
    "ATC": re.compile(r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?$"),
    "OPCS4": re.compile(r"^[A-Z]([0-9]{1,2}(\.?[0-9])?)?$"),
    "LOINC": re.compile(r"^[0-9]{1,7}-[0-9]$"),
    "SNOMED": re.compile(r"^[0-9]{6,18}$"),
    "DMD": re.compile(r"^[0-9]{6,20}$"),
}
GROUP_KINDS = ("any", "all", "at_least")
IMPLICIT_SETTING = "in_setting"


class RuleErrors(RuleError):
    """Several errors in one file; ``errors`` lists them, the message is the first."""

    def __init__(self, errors: Sequence[RuleError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(
            first.message,
            file=first.file,
            line=first.line,
            column=first.column,
            study_id=first.study_id,
            criterion=first.criterion,
            suggestion=first.suggestion,
        )

    def format(self) -> str:
        errors = getattr(self, "errors", None)
        if not errors:
            return super().format()
        return "\n".join(e.format() for e in errors)


@dataclass
class LoadResult:
    """The studies that loaded and the errors of those that did not."""

    studies: list[Study] = field(default_factory=list)
    errors: list[RuleError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _rule_files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(f for f in p.glob("*.yaml") if f.is_file()))
            out.extend(sorted(f for f in p.glob("*.yml") if f.is_file()))
        else:
            out.append(p)
    return out


def load_studies(paths: Iterable[str | Path]) -> LoadResult:
    """Load every rule file under ``paths`` (files, or directories: their ``*.yaml``, not ``concepts/``).

    Never raises for a bad rule file: its errors go to ``LoadResult.errors`` and the others still load.
    Two files with the same study id: the second is an error.
    """
    result = LoadResult()
    seen: dict[str, str] = {}
    for f in _rule_files(paths):
        try:
            study = load_study(f)
        except RuleErrors as exc:
            result.errors.extend(exc.errors)
            continue
        except RuleError as exc:
            result.errors.append(exc)
            continue
        if study.id in seen:
            result.errors.append(
                RuleError(
                    f"study id '{study.id}' is also used by {seen[study.id]}", file=str(f), line=None, study_id=study.id
                )
            )
            continue
        seen[study.id] = str(f)
        result.studies.append(study)
    return result


def load_study(path: str | Path) -> Study:
    """Load, validate and compile one rule file.

    :raises RuleError: the only problem; :class:`RuleErrors` (a subclass, ``.errors``) when there are several.
    """
    path = Path(path)
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RuleError(f"cannot read rule file: {exc.strerror or exc}", file=file) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuleError("rule file is not UTF-8 text", file=file) from exc
    doc = load_yaml(text, file)
    return _Builder(path, raw, doc).build()


def loads_study(text: str, path: str | Path = "<string>") -> Study:
    """Load a study from YAML text; ``path`` names it in errors and locates ``concepts/`` for refs.

    :raises RuleError: as :func:`load_study`.
    """
    return _Builder(Path(path), text.encode("utf-8"), load_yaml(text, str(path))).build()


def _datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0, 0), tzinfo=UTC)
    if isinstance(value, str):
        try:
            return _datetime(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


class _Builder:
    def __init__(self, path: Path, raw: bytes, doc: Any) -> None:
        self.path = path
        self.file = str(path)
        self.raw = raw
        self.doc = doc
        self.errors: list[RuleError] = []
        self.study_id: str | None = None
        self.names: dict[str, int] = {}
        self.extra_hash: list[bytes] = []

    # -- error helpers
    def err(
        self, message: str, mark: tuple[int, int] | None, suggestion: str | None = None, criterion: str | None = None
    ) -> None:
        line, col = mark if mark else (None, None)
        self.errors.append(
            RuleError(
                message,
                file=self.file,
                line=line,
                column=col,
                study_id=self.study_id,
                criterion=criterion,
                suggestion=suggestion,
            )
        )

    def unknown_keys(self, m: Map, allowed: Sequence[str], what: str) -> None:
        for k in m:
            if k not in allowed:
                self.err(f"unknown {what} key '{k}'", m.marks[k], did_you_mean(str(k), allowed))

    # -- build
    def build(self) -> Study:
        doc = self.doc
        if not isinstance(doc, Map):
            raise RuleError(
                "a rule file must be a mapping with 'study', 'concepts', 'include', ...",
                file=self.file,
                line=1,
                column=1,
            )
        self.unknown_keys(doc, _TOP_KEYS, "top-level")
        meta = self.metadata(doc)
        concepts = self.concepts(doc)
        include = self.criteria(doc, "include", concepts)
        exclude = self.criteria(doc, "exclude", concepts)
        if not include and not exclude and not self.errors:
            self.err("a study needs at least one criterion under 'include' or 'exclude'", doc.mark)
        if meta.get("settings"):
            include = (
                Criterion(IMPLICIT_SETTING, "include", "setting", line=doc.marks.get("study", (1, 1))[0], column=1),
                *include,
            )
        tests = self.tests(doc, meta, {c.name for c in (*include, *exclude) for c in c.walk()})
        if self.errors:
            raise RuleErrors(self.errors) if len(self.errors) > 1 else self.errors[0]
        content_hash = hashlib.sha256(self.raw).hexdigest()
        rule_hash = (
            hashlib.sha256(self.raw + b"".join(self.extra_hash)).hexdigest() if self.extra_hash else content_hash
        )
        return Study(
            path=self.file,
            content_hash=content_hash,
            rule_hash=rule_hash,
            concepts=concepts,
            include=include,
            exclude=exclude,
            tests=tests,
            **meta,
        )

    def metadata(self, doc: Map) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "id": "INVALID",
            "title": "",
            "summary": "",
            "sponsor": "non-commercial",
            "portfolio": False,
            "target": 0,
            "opens": date(1970, 1, 1),
            "closes": date(1970, 1, 1),
            "settings": (),
            "team": "",
        }
        s = doc.get("study")
        if not isinstance(s, Map):
            self.err(
                "missing 'study:' mapping (id, title, sponsor, opens, closes, team, ...)",
                doc.marks.get("study", doc.mark),
            )
            return defaults
        self.unknown_keys(s, _STUDY_KEYS, "study")
        out = dict(defaults)

        def need(key: str) -> Any:
            if key not in s or s[key] is None:
                self.err(f"study '{key}' is required", s.mark)
                return None
            return s[key]

        sid = need("id")
        if sid is not None:
            if not isinstance(sid, str) or not _ID.match(sid):
                self.err(
                    f"study id {sid!r} must be capitals, digits and '-' (e.g. CKD-SGLT2-COMM)", s.value_marks["id"]
                )
            else:
                out["id"] = sid
                self.study_id = sid
        for key in ("title", "team"):
            v = need(key)
            if v is not None:
                if not isinstance(v, str) or not v.strip():
                    self.err(f"study '{key}' must be text", s.value_marks[key])
                else:
                    out[key] = v.strip()
        if "summary" in s:
            if not isinstance(s["summary"], str):
                self.err("study 'summary' must be text", s.value_marks["summary"])
            else:
                out["summary"] = s["summary"].strip()
        sponsor = need("sponsor")
        if sponsor is not None:
            if sponsor not in SPONSORS:
                self.err(
                    f"unknown sponsor '{sponsor}' (one of {', '.join(SPONSORS)})",
                    s.value_marks["sponsor"],
                    did_you_mean(str(sponsor), SPONSORS),
                )
            else:
                out["sponsor"] = sponsor
        if "portfolio" in s:
            if not isinstance(s["portfolio"], bool):
                self.err("study 'portfolio' must be true or false", s.value_marks["portfolio"])
            else:
                out["portfolio"] = s["portfolio"]
        target = need("target")
        if target is not None:
            if isinstance(target, bool) or not isinstance(target, int) or target < 1:
                self.err(
                    f"study 'target' must be a whole number of participants, got {target!r}", s.value_marks["target"]
                )
            else:
                out["target"] = target
        for key in ("opens", "closes"):
            v = need(key)
            if v is None:
                continue
            if isinstance(v, datetime):
                v = v.date()
            if not isinstance(v, date):
                self.err(f"study '{key}' must be a date like 2026-01-05, got {v!r}", s.value_marks[key])
            else:
                out[key] = v
        if isinstance(s.get("opens"), date) and isinstance(s.get("closes"), date) and out["closes"] < out["opens"]:
            self.err(f"study closes ({out['closes']}) before it opens ({out['opens']})", s.value_marks["closes"])
        if "settings" in s:
            settings = s["settings"]
            if isinstance(settings, str):
                settings = Seq()
                settings.append(s["settings"])
                settings.marks.append(s.value_marks["settings"])
            if not isinstance(settings, Seq):
                self.err("study 'settings' must be a list, e.g. [hospital, community]", s.value_marks["settings"])
            else:
                good = []
                for i, v in enumerate(settings):
                    if v not in SETTINGS:
                        self.err(
                            f"unknown setting '{v}' (one of {', '.join(SETTINGS)})",
                            settings.marks[i],
                            did_you_mean(str(v), SETTINGS),
                        )
                    else:
                        good.append(v)
                out["settings"] = tuple(good)
        return out

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
            from screener.rules.compiler import ATTRIBUTES

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
        return ConceptSet(name, tuple(codes), tuple(excludes), unit, analyte, label, mark[0], mark[1])

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

    def tests(self, doc: Map, meta: dict[str, Any], names: set[str]) -> tuple[TestCase, ...]:
        section = doc.get("tests")
        if section is None:
            return ()
        if not isinstance(section, Seq):
            self.err("'tests' must be a list of test cases", doc.value_marks["tests"])
            return ()
        out = []
        allowed = ("name", "now", "person", "events", "expect", "criteria")
        for i, case in enumerate(section):
            cmark = section.marks[i]
            if not isinstance(case, Map):
                self.err("a test case must be a mapping (name, person, events, expect)", cmark)
                continue
            self.unknown_keys(case, allowed, "test case")
            tname = str(case.get("name") or f"test {i + 1}")
            now = datetime.combine(meta["opens"], time(12, 0), tzinfo=UTC)
            if "now" in case:
                parsed = _datetime(case["now"])
                if parsed is None:
                    self.err(
                        f"test '{tname}': 'now' must be a timestamp like 2026-06-01T09:00:00Z", case.value_marks["now"]
                    )
                else:
                    now = parsed
            expect = case.get("expect")
            if expect not in OUTCOMES:
                self.err(
                    f"test '{tname}': 'expect' must be one of {', '.join(OUTCOMES)}",
                    case.value_marks.get("expect", cmark),
                    did_you_mean(str(expect), OUTCOMES),
                )
            person = case.get("person") or Map()
            if not isinstance(person, Map):
                self.err(f"test '{tname}': 'person' must be a mapping", case.value_marks["person"])
                person = Map()
            events = self.test_events(tname, person, case.get("events"), case, now)
            crit: dict[str, bool | None] = {}
            expected = case.get("criteria") or Map()
            if not isinstance(expected, Map):
                self.err(
                    f"test '{tname}': 'criteria' must be a mapping name -> true/false/unknown",
                    case.value_marks["criteria"],
                )
                expected = Map()
            for cname, v in expected.items():
                if cname not in names:
                    self.err(
                        f"test '{tname}': unknown criterion '{cname}'",
                        expected.marks[cname],
                        did_you_mean(str(cname), names),
                    )
                elif v is None or v == "unknown":
                    crit[str(cname)] = None
                elif isinstance(v, bool):
                    crit[str(cname)] = v
                else:
                    self.err(
                        f"test '{tname}': expected value of '{cname}' must be true, false or unknown",
                        expected.value_marks[cname],
                    )
            out.append(TestCase(tname, now, dict(person), tuple(events), str(expect), crit, cmark[0], cmark[1]))
        return tuple(out)

    def test_events(self, tname: str, person: Map, events: Any, case: Map, now: datetime) -> list[Any]:
        from screener.errors import EventError

        pid = "TEST"
        out = []
        pfields = {k: v for k, v in person.items() if k not in ("setting", "site")}
        for k, v in list(pfields.items()):
            if isinstance(v, date):
                pfields[k] = v.isoformat()
        pevent: dict[str, Any] = {
            "event_id": "person",
            "source": "rules-test",
            "kind": "person",
            "patient_id": pid,
            "occurred_at": datetime(1900, 1, 1, tzinfo=UTC).isoformat(),
            "person": pfields,
        }
        for k in ("setting", "site"):
            if person.get(k) is not None:
                pevent[k] = person[k]
        try:
            out.append(parse_event(pevent))
        except EventError as exc:
            self.err(f"test '{tname}': person: {exc}", case.value_marks.get("person", case.mark))
        if events is None:
            return out
        if not isinstance(events, Seq):
            self.err(f"test '{tname}': 'events' must be a list", case.value_marks["events"])
            return out
        for j, ev in enumerate(events):
            if not isinstance(ev, Map):
                self.err(f"test '{tname}': an event must be a mapping", events.marks[j])
                continue
            d: dict[str, Any] = {"event_id": f"e{j + 1}", "source": "rules-test", "patient_id": pid}
            for k, v in ev.items():
                if k in ("occurred_at", "recorded_at"):
                    ts = _datetime(v)
                    d[k] = ts.isoformat() if ts else v
                elif isinstance(v, Map):
                    d[k] = {kk: (str(vv) if kk == "value" else vv) for kk, vv in v.items()}
                else:
                    d[k] = v
            try:
                out.append(parse_event(d))
            except EventError as exc:
                self.err(f"test '{tname}': event {j + 1}: {exc}", events.marks[j])
        return out
