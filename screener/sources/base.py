"""Old name of :mod:`screener.connector.base` (the connector SDK), kept for imports written before the rename."""

from screener.connector.base import *  # noqa: F403
from screener.connector.base import __all__ as __all__
