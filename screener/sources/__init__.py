"""Old name of :mod:`screener.connector`, the connector SDK (renamed for what it is); new code imports that.

The submodules (``base``, ``common``, ``kafka``, ``registry``) re-export the same objects (one class
whichever name imported it); patch attributes on the ``screener.connector`` modules, not on these aliases.
"""

from screener.connector import *  # noqa: F403
from screener.connector import __all__ as __all__
