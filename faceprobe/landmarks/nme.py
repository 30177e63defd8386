"""Normalised mean error (NME) of 5-point landmarks, in original image coordinates.

Normalisers (``norm``):
- ``interocular``: distance between the two ground-truth eye points (the 5-point datasets give eye
  centres, so for them this equals the inter-pupil distance; both names are accepted).
- ``box``: diagonal of the face box (the detector's box when the row has one, otherwise the
  bounding box of the ground-truth points).
A face's NME is the mean over its 5 points of ||pred - true|| / d; failure = NME > 0.10.
"""

from __future__ import annotations

import numpy as np

from faceprobe.data.records import LANDMARK_NAMES
from faceprobe.errors import ConfigError

NORMS = ("interocular", "interpupil", "box")
FAILURE_THRESHOLD = 0.10


def normaliser(true: np.ndarray, norm: str, boxes: np.ndarray | None = None) -> np.ndarray:
    """Per-face normalising distance, shape (n,)."""
    if norm in ("interocular", "interpupil"):
        return np.linalg.norm(true[:, 0] - true[:, 1], axis=1)
    if norm == "box":
        lo, hi = true.min(axis=1), true.max(axis=1)
        d = np.linalg.norm(hi - lo, axis=1)
        if boxes is not None:
            bd = np.hypot(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            d = np.where(np.isfinite(bd), bd, d)
        return d
    raise ConfigError(f"unknown NME normaliser {norm!r}; choose one of {', '.join(NORMS)}")


def nme(pred: np.ndarray, true: np.ndarray, norm: str = "interocular",
        boxes: np.ndarray | None = None) -> dict:
    """NME summary for (n, 5, 2) predictions against (n, 5, 2) ground truth.

    Rows with no ground truth are ignored; rows with ground truth but no prediction are counted
    as ``missing`` (not folded into the mean, so a detector cannot look better by failing).
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    has_true = np.isfinite(true).all(axis=(1, 2))
    has_pred = np.isfinite(pred).all(axis=(1, 2))
    use = has_true & has_pred
    d = normaliser(true[use], norm, None if boxes is None else np.asarray(boxes)[use])
    ok = d > 0
    idx = np.flatnonzero(use)[ok]
    point_err = np.linalg.norm(pred[idx] - true[idx], axis=2) / d[ok][:, None]  # (m, 5)
    face_err = point_err.mean(axis=1) if len(idx) else np.zeros(0)
    return {
        "norm": norm,
        "nme": float(face_err.mean()) if len(idx) else float("nan"),
        "median": float(np.median(face_err)) if len(idx) else float("nan"),
        "per_point": [float(v) for v in point_err.mean(axis=0)] if len(idx) else [float("nan")] * 5,
        "point_names": list(LANDMARK_NAMES),
        "failure_rate": float((face_err > FAILURE_THRESHOLD).mean()) if len(idx) else float("nan"),
        "evaluated": int(len(idx)),
        "missing": int((has_true & ~has_pred).sum()),
        "face_errors": face_err,
        "rows": idx,
    }
