"""Discover connectors through the ``screener.connectors`` entry-point group.

A hospital adds its own connector by shipping a package with an entry point in that group whose object is a
:class:`~screener.connector.base.Connector` (or a zero-argument callable returning one).
"""

from __future__ import annotations

from importlib.metadata import entry_points

from screener.connector.base import Connector, Feed
from screener.errors import ConnectorError, did_you_mean

__all__ = ["GROUP", "available", "load_connector", "load_feed"]

GROUP = "screener.connectors"


def available() -> dict[str, str]:
    """Installed connector names mapped to their entry-point target (``module:attr``), sorted by name."""
    return {ep.name: ep.value for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name)}


def load_connector(name: str) -> Connector:
    """Import and return the connector registered as ``name``.

    :raises ConnectorError: when no such connector is installed (with the closest name) or it fails to import.
    """
    eps = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name not in eps:
        hint = did_you_mean(name, eps)
        extra = f" (did you mean '{hint}'?)" if hint else f"; installed: {', '.join(sorted(eps)) or 'none'}"
        raise ConnectorError(f"no connector named '{name}'{extra}", connector=name)
    try:
        obj = eps[name].load()
    except Exception as exc:
        raise ConnectorError(f"cannot import {eps[name].value}: {exc}", connector=name) from exc
    if not isinstance(obj, Connector) and callable(obj):
        obj = obj()
    if not isinstance(obj, Connector):
        raise ConnectorError(f"{eps[name].value} is not a Connector", connector=name)
    return obj


def load_feed(name: str) -> Feed:
    """The in-process event feed of the connector registered as ``name`` (its ``feed`` attribute).

    How ``screener demo`` finds the synthetic population without importing ``connectors``.

    :raises ConnectorError: when no such connector is installed, or it has no feed.
    """
    feed: Feed | None = getattr(load_connector(name), "feed", None)
    if feed is None or not callable(feed):
        raise ConnectorError(f"connector '{name}' has no in-process feed (a 'feed' attribute)", connector=name)
    return feed
