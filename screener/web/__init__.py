"""The worklist web app: :func:`create_app` (FastAPI) and :func:`serve` (uvicorn on a background thread)."""

from screener.web.app import PUBLIC_PATHS, create_app
from screener.web.server import WebHandle, serve

__all__ = ["PUBLIC_PATHS", "WebHandle", "create_app", "serve"]
