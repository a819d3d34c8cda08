"""Old name of :mod:`screener.connector.common` (the connector SDK), kept for imports written before the rename."""

from screener.connector.common import *  # noqa: F403
from screener.connector.common import __all__ as __all__
