"""screener: an event-driven engine that finds patients eligible for clinical studies.

The pipeline, and the modules that show it::

    connectors/ -> screener.events -> screener.bus -> screener.state -> screener.rules -> screener.engine
                                                                                     -> screener.alerts / web
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
