"""JSON-ready values from structures that hold numpy arrays and scalars (bundle.json, a report's
metrics.json).

Decisions:
- One numpy -> Python conversion, two ways to apply it: ``jsonable`` walks a structure and
  leaves anything else as it is, so ``json.dumps`` refuses it (a bundle must not record a
  ``repr`` in place of a value); ``json_default`` is a ``json.dumps(default=...)`` hook that
  writes anything else as its ``str`` (a report is read, not loaded back).
- numpy is imported on first conversion, not with this module: ``import faceprobe.report.html``
  does not load numpy, and this module is imported there.
- Imports nothing from faceprobe, so any stage can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _numpy_to_python(obj: Any) -> Any:
    """An array as nested lists, a numpy scalar as the Python number; anything else as is."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def jsonable(obj: Any) -> Any:
    """``obj`` with mappings (keys as ``str``), lists and tuples walked and numpy values made
    Python ones."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return _numpy_to_python(obj)


def json_default(obj: Any) -> Any:
    """``json.dumps(default=json_default)``: numpy values as Python ones, anything else as its
    ``str``."""
    value = _numpy_to_python(obj)
    return str(obj) if value is obj else value
