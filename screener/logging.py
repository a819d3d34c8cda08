"""structlog configuration: JSON lines, with a processor that keeps patient identifiers out of every log line.

Call :func:`configure_logging` once at process start. Tests use ``structlog.testing.capture_logs()``.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

__all__ = ["REDACTED", "configure_logging", "get_logger", "redact_identifiers"]

REDACTED = "[redacted]"
#: Event-dict keys whose values identify a patient. They are replaced, never logged.
IDENTIFIER_KEYS = frozenset(
    {
        "patient_id",
        "patient",
        "patient_ids",
        "nhs_number",
        "mrn",
        "name",
        "given",
        "family",
        "birth_date",
        "dob",
        "postcode",
        "postcode_district",
        "address",
        "phone",
        "email_address",
        "lsoa",
        "merged_from",
    }
)
#: A 10-digit run (an NHS number) inside free text is masked too.
_NHS_NUMBER = re.compile(r"(?<!\d)\d{3}[ -]?\d{3}[ -]?\d{4}(?!\d)")


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return _NHS_NUMBER.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: (REDACTED if k in IDENTIFIER_KEYS else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_identifiers(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace identifier-valued keys and mask NHS-number-like digit runs."""
    for key in list(event_dict):
        if key in IDENTIFIER_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure structlog (and the stdlib root logger) to write one line per event to stderr."""
    renderer: Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_identifiers,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def get_logger(name: str) -> FilteringBoundLogger:
    """A lazy logger: it picks up the configuration in force when it first logs, not when it was created.

    (Calling ``.bind()`` here would freeze the configuration at import time, before ``configure_logging`` has
    installed the redaction processor.)
    """
    logger: FilteringBoundLogger = structlog.get_logger(name, component=name)  # a lazy proxy with its methods
    return logger
