"""docs/events.md runs: every JSON example validates, and every field and vocabulary value is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from screener.events import Event, Person, parse_event
from screener.vocab import CODE_SYSTEMS, KINDS, ROUTES, STATUSES

DOC = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
EXAMPLES = re.findall(r"```json\n(.*?)```", DOC, flags=re.S)


def test_the_reference_has_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_json_example_is_a_valid_event(example: str) -> None:
    event = parse_event(example)
    assert event.schema_ == "screener.event/v2"


def _rows(field: str) -> list[str]:
    """Table rows whose first cell names ``field``."""
    return [line for line in DOC.splitlines() if line.startswith("| ") and f"`{field}`" in line.split("|")[1]]


def _listed(field: str) -> set[str]:
    rows = _rows(field)
    assert rows, f"no table row for {field}"
    return {word for span in re.findall(r"`([^`]*)`", rows[0]) for word in span.split()}


@pytest.mark.parametrize("name", [f.alias or n for n, f in Event.model_fields.items()] + list(Person.model_fields))
def test_every_field_has_a_row(name: str) -> None:
    assert _rows(name), f"docs/events.md has no row for {name}"


@pytest.mark.parametrize(
    ("field", "values"), [("kind", KINDS), ("code", CODE_SYSTEMS), ("status", STATUSES), ("route", ROUTES)]
)
def test_every_vocabulary_value_is_listed(field: str, values: tuple[str, ...]) -> None:
    assert sorted(set(values) - _listed(field)) == []
