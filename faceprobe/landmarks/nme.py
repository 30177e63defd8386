"""Normalised mean error (NME) of 5-point landmarks, in original image coordinates.

Normalisers (``norm``):
- ``interocular``: distance between the two ground-truth eye points (the 5-point datasets give eye
  centres, so for them this equals the inter-pupil distance; both names are accepted).
- ``box``: diagonal of the face box (the detector's box when the row has one, otherwise the
  bounding box of the ground-truth points).
- ``box_size``: sqrt(width * height) of the face box given in ``boxes`` (``evaluate`` passes the
  box derived from the annotated points, the same for every model), otherwise of the ground-truth
  points' bounding box. Unlike the eye distance it does not collapse on profile faces.
A face's NME is the mean over its 5 points of ||pred - true|| / d; failure = NME > 0.10.

CED: the fraction of faces with NME <= t for t = 0, 0.001, ..., 0.10; AUC@0.10 is the area under
it (trapezoids on that grid, ``sklearn.metrics.auc``) divided by 0.10, so 1.0 means every face
is exact. The CED at 0.10 is 1 - failure rate: one definition of failure.
"""

from __future__ import annotations

import numpy as np

from faceprobe.data.records import LANDMARK_NAMES
from faceprobe.errors import ConfigError

NORMS = ("interocular", "interpupil", "box", "box_size")
FAILURE_THRESHOLD = 0.10
CED_LIMIT = 0.10
CED_STEP = 0.001


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
    if norm == "box_size":
        lo, hi = true.min(axis=1), true.max(axis=1)
        d = np.sqrt(np.prod(hi - lo, axis=1))
        if boxes is not None:
            b = np.asarray(boxes, dtype=np.float64)
            bd = np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))
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
        "auc": auc(face_err),
        "face_errors": face_err,
        "rows": idx,
    }


def ced(face_errors: np.ndarray, limit: float = CED_LIMIT, step: float = CED_STEP
        ) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, fraction of faces with NME <= threshold), thresholds 0..limit by step."""
    thresholds = np.linspace(0.0, limit, int(round(limit / step)) + 1)
    e = np.sort(np.asarray(face_errors, dtype=np.float64))
    if not len(e):
        return thresholds, np.full(len(thresholds), np.nan)
    return thresholds, np.searchsorted(e, thresholds, side="right") / len(e)


def auc(face_errors: np.ndarray, limit: float = CED_LIMIT, step: float = CED_STEP) -> float:
    """Area under the CED up to ``limit``, divided by ``limit`` (NaN when there are no faces)."""
    from sklearn.metrics import auc as area

    t, frac = ced(face_errors, limit, step)
    return float(area(t, frac) / limit) if len(face_errors) else float("nan")
