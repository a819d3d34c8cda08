"""One root exception, split by phase.

Every error keeps its context as attributes and says it in its message, so a log line, a CLI message and a
dead-letter record all carry the same facts. Build the message, then ``raise ... from exc``.

    ScreenerError
    ├── RuleError        a rule file is wrong (syntax, unknown name, type, window, unit)
    ├── EventError       an event (or a message a connector received) is invalid
    ├── ConnectorError   a connector cannot do its job (bad option, unreachable source)
    ├── DeliveryError    an outbound side effect failed (broker, webhook, SMTP, database)
    └── ConfigError      settings are invalid
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "ConnectorError",
    "DeliveryError",
    "EventError",
    "RuleError",
    "ScreenerError",
    "did_you_mean",
]


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate closest to ``name``, or ``None`` when nothing is close enough."""
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return matches[0] if matches else None


class ScreenerError(Exception):
    """Root of every error screener raises on purpose."""


class RuleError(ScreenerError):
    """A rule file is wrong. Formats as ``FILE:LINE:COL: error: MESSAGE``.

    ``line`` and ``column`` are 1-based; either may be ``None`` when the position is not known.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        study_id: str | None = None,
        criterion: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.study_id = study_id
        self.criterion = criterion
        self.suggestion = suggestion
        super().__init__(self.format())

    def format(self) -> str:
        where = self.file or "<rules>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: error: {self.message}"
        if self.suggestion:
            text += f" (did you mean '{self.suggestion}'?)"
        return text


class EventError(ScreenerError):
    """An event is invalid. ``field`` is the dotted path of the offending field (``code.system``)."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        expected: str | None = None,
        received: object = None,
        source: str | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.message = message
        self.field = field
        self.expected = expected
        self.received = received
        self.source = source
        self.topic = topic
        self.partition = partition
        self.offset = offset
        super().__init__(self.format())

    def format(self) -> str:
        parts = []
        if self.topic is not None:
            parts.append(f"{self.topic}[{self.partition}]@{self.offset}")
        if self.field:
            parts.append(f"field '{self.field}'")
        text = ": ".join([*parts, self.message]) if parts else self.message
        if self.expected is not None:
            text += f"; expected {self.expected}"
        if self.received is not None:
            shown = repr(self.received)
            text += f", got {shown[:80]}{'...' if len(shown) > 80 else ''}"
        return text


class ConnectorError(ScreenerError):
    """A connector cannot run: a bad option, a source it cannot read, a position it cannot parse."""

    def __init__(self, message: str, *, connector: str | None = None, position: str | None = None) -> None:
        self.message = message
        self.connector = connector
        self.position = position
        prefix = f"{connector}: " if connector else ""
        suffix = f" (at {position})" if position else ""
        super().__init__(f"{prefix}{message}{suffix}")


class DeliveryError(ScreenerError):
    """An outbound side effect failed: publishing, writing a match, a webhook or an email."""

    def __init__(self, message: str, *, channel: str | None = None, attempt: int | None = None) -> None:
        self.message = message
        self.channel = channel
        self.attempt = attempt
        prefix = f"{channel}: " if channel else ""
        suffix = f" (attempt {attempt})" if attempt else ""
        super().__init__(f"{prefix}{message}{suffix}")


class ConfigError(ScreenerError):
    """A setting is invalid; names the setting and its environment variable."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        self.message = message
        self.setting = setting
        env = f" (SCREENER_{setting.upper()})" if setting else ""
        super().__init__(f"{setting or 'settings'}{env}: {message}")
