"""What the web app computes, in one import for ``app.py``: scoring uploaded photos
(``serve.scoring``), a store's rows with predictions (``serve.store_table``), the identity gallery
(``serve.gallery``), per-task JSON of the bundle's outputs (``serve.predictor``) and the errors the
API maps to HTTP codes (``serve.responses``).

Decisions:
- Everything heavy is built once, in ``create_app``: the bundle, its backbones and the recipe's
  detector (the Scorer), the store table and the gallery; requests only read them.
"""

from __future__ import annotations

from faceprobe.serve.gallery import Gallery
from faceprobe.serve.predictor import Predictor
from faceprobe.serve.responses import BadRequest, Forbidden, NotFound
from faceprobe.serve.scoring import Scorer, make_backbones
from faceprobe.serve.store_table import SPLITS, StoreTable

__all__ = ["SPLITS", "BadRequest", "Forbidden", "Gallery", "NotFound", "Predictor", "Scorer",
           "StoreTable", "make_backbones"]
