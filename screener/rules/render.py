"""Plain-English Markdown of a study's criteria, for ethics submissions and the open-studies page."""

from __future__ import annotations

from screener.rules.ir import IR, Arr, Attr, Bin, Cond, Feat, Lit, Not
from screener.rules.model import Criterion, Study

__all__ = ["describe", "render_markdown"]

_ATTR_WORDS = {
    "age": "age (years)",
    "age_days": "age (days)",
    "sex": "sex",
    "ethnic_group": "ethnic group",
    "imd_decile": "IMD decile (1 = most deprived)",
    "imd_quintile": "IMD quintile (1 = most deprived)",
    "setting": "care setting",
    "site": "site",
}
_CMP = {">=": "is at least", ">": "is more than", "<=": "is at most", "<": "is less than", "==": "is", "!=": "is not"}
_ARITH = {
    "+": "plus",
    "-": "minus",
    "*": "times",
    "/": "divided by",
    "//": "divided by (whole)",
    "%": "modulo",
    "^": "to the power",
}


def _lit(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _feat(f: Feat) -> str:
    label = f.concept.label or f.concept.name.replace("_", " ")
    when = f" in the last {f.window.describe()}" if f.window else ""
    unit = f" ({f.concept.unit.strip('{}')})" if f.concept.unit else ""
    return {
        "ever": f"has ever had a record of {label}",
        "within": f"has a record of {label}{when}",
        "count": f"the number of {label} records{when}",
        "latest": f"the most recent {label}{unit}{when}",
        "earliest": f"the earliest {label}{unit}{when}",
        "min": f"the lowest {label}{unit}{when}",
        "max": f"the highest {label}{unit}{when}",
        "mean": f"the average {label}{unit}{when}",
        "days_since": f"days since the last record of {label}",
    }[f.transform]


def describe(ir: IR, top: bool = True) -> str:
    """Plain-English text of one compiled expression."""
    if isinstance(ir, Lit):
        return _lit(ir.value)
    if isinstance(ir, Attr):
        return _ATTR_WORDS[ir.name]
    if isinstance(ir, Feat):
        return _feat(ir)
    if isinstance(ir, Arr):
        return ", ".join(_lit(v) for v in ir.values)
    if isinstance(ir, Not):
        inner = describe(ir.operand, False)
        if isinstance(ir.operand, Feat) and ir.operand.type == "bool":
            return "not: " + inner
        return f"not ({inner})"
    if isinstance(ir, Cond):
        return f"if {describe(ir.test, False)} then {describe(ir.then, False)}, otherwise {describe(ir.other, False)}"
    if isinstance(ir, Bin):
        left, right = describe(ir.left, False), describe(ir.right, False)
        if (
            ir.op in ("&&", "||")
            and isinstance(ir.left, Bin)
            and isinstance(ir.right, Bin)
            and ir.left.op in _CMP
            and ir.right.op in _CMP
            and ir.left.left == ir.right.left
        ):
            # a range: "X is at least 25 and less than 60"
            subject = describe(ir.left.left, False)
            a, b = describe(ir.left.right, False), describe(ir.right.right, False)
            word = "and" if ir.op == "&&" else "or"
            text = f"{subject} {_CMP[ir.left.op]} {a} {word} {_CMP[ir.right.op].removeprefix('is ')} {b}"
            return text if top else f"({text})"
        if ir.op in ("&&", "||"):
            text = f"{left} {'and' if ir.op == '&&' else 'or'} {right}"
            return text if top else f"({text})"
        if ir.op == "in":
            return f"{left} is one of: {right}"
        if ir.op in _CMP:
            return f"{left} {_CMP[ir.op]} {right}"
        return f"({left} {_ARITH[ir.op]} {right})"
    raise TypeError(f"cannot describe {ir!r}")


def _criterion(c: Criterion, study: Study, depth: int) -> list[str]:
    pad = "  " * depth
    if c.kind == "setting":
        return [f"{pad}- **{c.name}**: seen in a {' or '.join(study.settings)} setting"]
    if c.kind == "expr":
        assert c.ir is not None
        return [f"{pad}- **{c.name}**: {describe(c.ir)}"]
    head = {"any": "any of", "all": "all of", "at_least": f"at least {c.at_least} of"}[c.kind]
    lines = [f"{pad}- **{c.name}**: {head}:"]
    for child in c.children:
        lines.extend(_criterion(child, study, depth + 1))
    return lines


def render_markdown(study: Study) -> str:
    """Markdown: title, summary, key facts, who can take part, who cannot, and the code lists used."""
    lines = [f"# {study.title}", "", f"`{study.id}`", ""]
    if study.summary:
        lines += [study.summary, ""]
    lines += [
        f"- Sponsor: {study.sponsor}{' (NIHR portfolio)' if study.portfolio else ''}",
        f"- Recruiting: {study.opens.isoformat()} to {study.closes.isoformat()}; target {study.target} participants",
    ]
    if study.settings:
        lines.append(f"- Where: {', '.join(study.settings)}")
    lines += [f"- Research team: {study.team}", "", "## Who can take part", ""]
    lines += [line for c in study.include for line in _criterion(c, study, 0)] or ["- anyone"]
    lines += ["", "## Who cannot take part", ""]
    lines += [line for c in study.exclude for line in _criterion(c, study, 0)] or ["- no exclusions"]
    used = study.used_concepts()
    if used:
        lines += ["", "## Code lists", "", "| Name | Codes | Except | Unit |", "|---|---|---|---|"]
        for c in used:
            codes = ", ".join(f"{s} {v}" for s, v in c.codes)
            excl = ", ".join(f"{s} {v}" for s, v in c.exclude) or "-"
            lines.append(f"| {c.label or c.name.replace('_', ' ')} | {codes} | {excl} | {c.unit or '-'} |")
        lines += ["", "ICD-10, ATC and OPCS-4 codes include every code below them (E11 includes E11.9)."]
    lines += ["", "Patients are never contacted directly from a match: a research nurse checks every match first."]
    return "\n".join(lines) + "\n"
