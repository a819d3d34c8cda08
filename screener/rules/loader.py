"""Load rule files: YAML with positions -> validated, compiled :class:`~screener.rules.model.Study`.

Every problem is a :class:`RuleError` formatted ``FILE:LINE:COL: error: MESSAGE (did you mean 'x'?)``.
Loading keeps going after an error so one run reports every problem in a file (:class:`RuleErrors`);
:func:`load_studies` never lets one bad file stop the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from screener.errors import RuleError
from screener.rules._cases import CasesMixin
from screener.rules._concepts import ConceptsMixin
from screener.rules._context import _TOP_KEYS, IMPLICIT_SETTING, OUTCOMES, SPONSORS
from screener.rules._criteria import CriteriaMixin
from screener.rules._limits import excerpt
from screener.rules._metadata import MetadataMixin
from screener.rules._yaml import Map, load_yaml
from screener.rules.criteria import compiled
from screener.rules.ir import collect_features
from screener.rules.model import Criterion, Study

__all__ = [
    "IMPLICIT_SETTING",
    "OUTCOMES",
    "SPONSORS",
    "LoadResult",
    "RuleErrors",
    "load_studies",
    "load_study",
    "loads_study",
]


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
        except Exception as exc:
            result.errors.append(unexpected(exc, f))
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


def unexpected(exc: BaseException, path: str | Path) -> RuleError:
    """A :class:`RuleError` for a failure no check caught (a bug, or an input beyond a limit)."""
    if isinstance(exc, RecursionError):
        what = "the file is nested too deeply"
    elif isinstance(exc, MemoryError):
        what = "the file is too large to load"
    else:
        what = f"cannot load the file ({type(exc).__name__}: {excerpt(str(exc), 120)})"
    return RuleError(what, file=str(path))


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
    return _build(path, raw, text)


def _build(path: Path, raw: bytes, text: str) -> Study:
    try:
        return _Builder(path, raw, load_yaml(text, str(path))).build()
    except RuleError:
        raise
    except Exception as exc:
        raise unexpected(exc, path) from exc


def loads_study(text: str, path: str | Path = "<string>") -> Study:
    """Load a study from YAML text; ``path`` names it in errors and locates ``concepts/`` for refs.

    :raises RuleError: as :func:`load_study`.
    """
    return _build(Path(path), text.encode("utf-8"), text)


class _Builder(MetadataMixin, ConceptsMixin, CriteriaMixin, CasesMixin):
    """Builds one :class:`Study` from a parsed YAML document (every part adds to ``errors``)."""

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
                Criterion(
                    IMPLICIT_SETTING,
                    "include",
                    "setting",
                    line=doc.marks.get("study", (1, 1))[0],
                    column=1,
                    label=f"seen in a {' or '.join(meta['settings'])} setting",
                ),
                *include,
            )
        tests = self.tests(doc, meta, {c.name for c in (*include, *exclude) for c in c.walk()})
        if self.errors:
            raise RuleErrors(self.errors) if len(self.errors) > 1 else self.errors[0]
        content_hash = hashlib.sha256(self.raw).hexdigest()
        rule_hash = (
            hashlib.sha256(self.raw + b"".join(self.extra_hash)).hexdigest() if self.extra_hash else content_hash
        )
        if meta.get("alert") is None:
            meta["alert"] = default_alert(include, exclude)
        study = Study(
            path=self.file,
            content_hash=content_hash,
            rule_hash=rule_hash,
            concepts=concepts,
            include=include,
            exclude=exclude,
            tests=tests,
            **meta,
        )
        # Lowered to Polars now, so a lowering problem is a load-time error, never a mid-batch one.
        compiled(study)
        return study


#: a study whose shortest window is this long or shorter alerts immediately by default
IMMEDIATE_WITHIN = timedelta(hours=24)


def default_alert(include: Sequence[Criterion], exclude: Sequence[Criterion]) -> str:
    """``"immediate"`` when the study's shortest window is 24 h or less, else ``"digest"``."""
    spans = [
        f.window.upper_bound
        for top in (*include, *exclude)
        for c in top.walk()
        if c.ir is not None
        for f in collect_features(c.ir)
        if f.window is not None
    ]
    return "immediate" if spans and min(spans) <= IMMEDIATE_WITHIN else "digest"
