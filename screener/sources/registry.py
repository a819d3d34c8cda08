"""Old name of :mod:`screener.connector.registry` (the connector SDK), kept for imports written before the rename."""

from screener.connector.registry import *  # noqa: F403
from screener.connector.registry import __all__ as __all__
