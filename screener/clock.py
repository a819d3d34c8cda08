"""Clocks. The engine asks a :class:`Clock` for "now" so tests can move time exactly.

``now()`` is the calendar time that screening, study dates and the re-screen schedule use; ``monotonic()`` is the
seconds counter that intervals use (rule polling, snapshots, the matches sweep). ``SystemClock`` is wall time (UTC)
and :func:`time.monotonic`. ``FixedClock`` stays where it is put until :meth:`FixedClock.set` or
:meth:`FixedClock.advance` moves it (``advance`` moves both readings, so a test steps time instead of sleeping);
it is thread-safe, so a test can move time while an engine thread runs.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FixedClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back (for intervals, not for dates)."""
        ...


class SystemClock:
    """Wall-clock time in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class FixedClock:
    """A clock that only moves when told to. ``at`` must be timezone-aware (it is converted to UTC)."""

    def __init__(self, at: datetime) -> None:
        self._lock = threading.Lock()
        self._now = _aware(at)
        self._mono = 0.0

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        """Starts at 0.0; only :meth:`advance` moves it (``set`` jumps the calendar, not the interval timer)."""
        with self._lock:
            return self._mono

    def set(self, at: datetime) -> None:
        with self._lock:
            self._now = _aware(at)

    def advance(self, delta: timedelta | float) -> datetime:
        """Move forward by ``delta`` (a timedelta or seconds); returns the new time."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise ValueError("FixedClock.advance needs a non-negative step (the monotonic reading never goes back)")
        with self._lock:
            self._now = self._now + step
            self._mono += step.total_seconds()
            return self._now


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.tzinfo.utcoffset(at) is None:
        raise ValueError("FixedClock needs a timezone-aware datetime")
    return at.astimezone(UTC)
