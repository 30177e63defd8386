"""How the engine's answers leave it: JSON-safe numbers, JPEG bytes, and the errors ``app.py`` maps
to HTTP 404 / 403 / 400.

Decisions:
- Numbers go out as JSON: NaN (no box, missing label) becomes null.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image


class NotFound(Exception):
    """A row, file or store page that does not exist (HTTP 404)."""


class Forbidden(Exception):
    """A path outside the dataset root (HTTP 403)."""


class BadRequest(Exception):
    """A filter value the API does not accept (HTTP 400)."""


def num(x: Any, digits: int = 4) -> float | None:
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def points(a: np.ndarray, digits: int = 2) -> list | None:
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        return None
    return np.round(a, digits).tolist()


def jpeg(img: np.ndarray, side: int, quality: int = 85) -> bytes:
    im = Image.fromarray(img)
    im.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
