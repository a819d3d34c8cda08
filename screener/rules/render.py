"""Plain-English Markdown of a study's criteria, for ethics submissions and the open-studies page."""

from __future__ import annotations

from screener.rules._leaves import unit_text
from screener.rules.concepts import ConceptSet
from screener.rules.ir import IR, Arr, Attr, Bin, Cond, Feat, Field, Lit, Not, QualIn
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
    "age_months": "age (months)",
    "registered_days": "days registered with the practice",
}
_FIELD_WORDS = {
    "value": "value",
    "ref_low": "lower limit of its reference range",
    "ref_high": "upper limit of its reference range",
    "dose": "dose",
    "dose_unit": "dose unit",
    "route": "route",
    "status": "status",
    "setting": "care setting",
    "location": "location",
    "kind": "kind of record",
    "code": "code",
    "value_code": "coded result",
    "duration_days": "duration (days)",
    "encounter": "visit",
    "qualifiers": "qualifiers",
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


def _source(concept: ConceptSet, pred: IR | None) -> str:
    label = concept.display
    return f"{label} ({describe(pred, False)})" if pred is not None else label


def _feat(f: Feat) -> str:
    label = _source(f.concept, f.filter)
    w = f.window.describe() if f.window else ""
    when = f" in the last {w}" if f.window else ""
    unit = f" ({unit_text(f.concept.unit)})" if f.concept.unit else ""
    gap = f.gap.describe() if f.gap else ""
    other = _source(f.other.concept, f.other.filter) if f.other else ""
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
        "days_since_first": f"days since the first record of {label}",
        "age_at_first": f"age at the first record of {label}",
        "count_days": f"the number of days with a record of {label}{when}",
        "episodes": f"the number of episodes of {label}{when} (a new episode after {gap} without one)",
        "change": f"the change in {label}{unit}{when} (latest minus earliest)",
        "pct_change": f"the change in {label}{when} in per cent of the earliest value",
        "exposure_days": f"the number of days on {label}{when}",
        "on_now": f"is currently on {label}",
        "continuous": f"has been on {label} without a break of more than {gap} for the last {w}",
        "after": f"has a record of {label} within {w} after {other}",
        "before": f"has a record of {label} within {w} before {other}",
        "latest_code": f"the most recent coded {label}",
        "upcoming": f"has {label} planned in the next {w}",
    }[f.transform]


def describe(ir: IR, top: bool = True) -> str:
    """Plain-English text of one compiled expression."""
    if isinstance(ir, Lit):
        return _lit(ir.value)
    if isinstance(ir, Attr):
        return _ATTR_WORDS[ir.name]
    if isinstance(ir, Field):
        return f"its {_FIELD_WORDS[ir.name]}"
    if isinstance(ir, QualIn):
        return f"qualified as {ir.concept.display}"
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
        return [f"{pad}- Seen in a {' or '.join(study.settings)} setting"]
    if c.kind == "expr":
        assert c.ir is not None
        if c.label:
            return [f"{pad}- **{c.label[:1].upper() + c.label[1:]}** ({describe(c.ir)})"]
        return [f"{pad}- **{c.display}**: {describe(c.ir)}"]
    head = {"any": "any of", "all": "all of", "at_least": f"at least {c.at_least} of"}[c.kind]
    lines = [f"{pad}- **{c.display}**: {head}:"]
    for child in c.children:
        lines.extend(_criterion(child, study, depth + 1))
    return lines


def render_markdown(study: Study, *, public: bool = False) -> str:
    """Markdown: title, summary, key facts, who can take part, who cannot, and the code lists used.

    ``public``: for patients: the lay summary (else the summary), no study id and no code lists."""
    lines = [f"# {study.title}", ""]
    if not public:
        lines += [f"`{study.id}`", ""]
    if study.lay_summary:
        lines += [study.lay_summary, ""]
    if study.summary and not (public and study.lay_summary):
        lines += [study.summary, ""]
    lines += [
        f"- Sponsor: {study.sponsor}{' (NIHR portfolio)' if study.portfolio else ''}",
        f"- Recruiting: {study.opens.isoformat()} to {study.closes.isoformat()}; target {study.target} participants",
    ]
    if study.settings:
        lines.append(f"- Where: {', '.join(study.settings)}")
    if study.sites:
        lines.append(f"- Sites: {', '.join(study.sites)}")
    for title, url in (("Protocol", study.protocol_url), ("Participant information sheet", study.pis_url)):
        if url:
            lines.append(f"- {title}: <{url}>")
    lines.append(f"- Research team: {study.team}")
    for contact in study.contacts:
        parts = [contact.name, contact.role, contact.email, contact.phone]
        lines.append("- Contact: " + ", ".join(p for p in parts if p))
    lines += ["", "## Who can take part", ""]
    lines += [line for c in study.include for line in _criterion(c, study, 0)] or ["- anyone"]
    lines += ["", "## Who cannot take part", ""]
    lines += [line for c in study.exclude for line in _criterion(c, study, 0)] or ["- no exclusions"]
    used = [] if public else study.used_concepts()
    if used:
        lines += ["", "## Code lists", "", "| Name | Codes | Except | Unit |", "|---|---|---|---|"]
        for c in used:
            codes = ", ".join(f"{s} {v}" for s, v in c.codes)
            excl = ", ".join(f"{s} {v}" for s, v in c.exclude) or "-"
            lines.append(f"| {c.display} | {codes} | {excl} | {unit_text(c.unit) or '-'} |")
        lines += ["", "ICD-10, ATC and OPCS-4 codes include every code below them (E11 includes E11.9)."]
    lines += ["", "Patients are never contacted directly from a match: a research nurse checks every match first."]
    return "\n".join(lines) + "\n"
