"""The ``screener`` command line: a thin shell over the package. Each verb lives in ``screener/commands/``.

screener demo                     everything on embedded defaults, on localhost
screener run                      the screening service
screener rules check|test|explain|render|diff
screener feasibility RULE_FILE   how many patients a study could recruit, from the history
screener screen RULES...          batch screen of a population (--engine polars|duckdb|spark)
screener connect NAME | --list    run a connector
screener backfill omop PATH       load an OMOP CDM extract
screener web                      the worklist web app
screener dnc import FILE          do-not-contact register
screener report                   recruitment and equity report
"""

from __future__ import annotations

import os
import sys

from screener import _allocator

# Before any command module imports Polars: jemalloc reads its options once, when the library loads.
_allocator.apply(sys.argv[1:], os.environ)

import click  # noqa: E402

from screener import __version__  # noqa: E402
from screener.commands import connect, feasibility, report, rules, screen, service, web  # noqa: E402

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="screener")
def main() -> None:
    """Find patients eligible for clinical studies while they are being cared for."""


for module in (service, rules, feasibility, screen, connect, web, report):
    for command in module.COMMANDS:
        main.add_command(command)
