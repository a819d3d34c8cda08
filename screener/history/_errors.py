"""The history store's error (its own module, so the store and its readers share it without a cycle)."""

from __future__ import annotations

from screener.errors import ScreenerError

__all__ = ["StoreError"]


class StoreError(ScreenerError):
    """The history store cannot be read or written. ``url`` and ``partition`` say where."""

    def __init__(self, message: str, *, url: str, partition: int | None = None) -> None:
        self.url = url
        self.partition = partition
        where = url if partition is None else f"{url} partition {partition}"
        super().__init__(f"{where}: {message}")
