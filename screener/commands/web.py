"""CLI verbs for this area (placeholder until the area lands)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
