"""Old name of :mod:`screener.connector.kafka` (the connector SDK), kept for imports written before the rename."""

from screener.connector.kafka import *  # noqa: F403
from screener.connector.kafka import __all__ as __all__
