"""``faceprobe serve``: a local web app to score photos and browse a store (FastAPI, optional).

Only ``create_app`` is public. It is imported lazily so that ``import faceprobe.serve`` works
without the ``serve`` extra (fastapi, uvicorn, python-multipart) installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from faceprobe.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
