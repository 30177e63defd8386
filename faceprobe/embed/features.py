"""Feature groups computed beside the backbone's: landmark geometry and HOG of the aligned face.

Identity embeddings are trained to ignore expression; these cheap descriptors keep it.

- ``geometry68`` (136-d): dlib's 68-point shape predictor (``shape_predictor_68_face_landmarks
  .dat``, shipped offline in face-recognition-models) run on the face's detector box; the points
  normalised so the eye centres' midpoint is the origin, the eye line is horizontal and the
  inter-ocular distance is 1; flattened x0 y0 x1 y1 ...
- ``geometry5`` (10-d): the 5 points the face was aligned with (MTCNN's, or the dataset's for
  ``dataset_landmarks`` rows), normalised the same way.
- ``hog`` (576-d): ``skimage.feature.hog`` of the backbone's aligned chip, converted to grayscale
  and resized to 64x64: 8x8-pixel cells, 9 orientations, one-cell blocks (L2-Hys).

Decisions:
- Every group is a function of what the store keeps (image path, box, landmarks) cast to
  float32 as the store holds them, so ``faceprobe embed --add-features`` on an existing store
  computes exactly what the embed pass would have (the chip is re-cut from the stored values
  whenever those differ from the ones the embed pass aligned with).
- A usable row never gets NaN: a face without 5 points (the whole-image fallback) or with
  coincident eyes gets zeros for that geometry group, so heads can use every usable row.
- The dlib predictor is loaded once per process (the worker processes build their own).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from faceprobe.errors import ConfigError, WeightsError

SHAPE68_FILE = "shape_predictor_68_face_landmarks.dat"
HOG_SIZE = 64
HOG_PARAMS = {"orientations": 9, "pixels_per_cell": (8, 8), "cells_per_block": (1, 1),
              "block_norm": "L2-Hys"}
NORMALISATION = "eye-centre origin, eye line horizontal, inter-ocular distance 1"

# Groups this module computes (the backbone computes 'embedding' and 'pooled').
EXTRA_DIMS: dict[str, int] = {
    "geometry68": 136,
    "geometry5": 10,
    "hog": (HOG_SIZE // 8) ** 2 * 9,
}
EXTRA_GROUPS = tuple(EXTRA_DIMS)


def split_groups(groups: Sequence[str], backbone_groups: Sequence[str]
                 ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(backbone groups, extra groups) of ``groups``; an unknown name is a ConfigError."""
    unknown = [g for g in groups if g not in backbone_groups and g not in EXTRA_DIMS]
    if unknown:
        raise ConfigError(f"unknown feature group(s) {', '.join(unknown)}; choose from "
                          f"{', '.join([*backbone_groups, *EXTRA_GROUPS])}")
    return (tuple(g for g in groups if g not in EXTRA_DIMS),
            tuple(g for g in groups if g in EXTRA_DIMS))


def _package_models_dirs() -> list[Path]:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) / "models" for p in spec.submodule_search_locations]


def shape68_path() -> Path:
    """The 68-point model: $FACEPROBE_HOME/weights, else face-recognition-models' folder (found
    without importing that package, whose __init__ needs pkg_resources)."""
    from faceprobe.embed.backbones.base import resolve_weights

    return resolve_weights(SHAPE68_FILE, None, None, extra_dirs=_package_models_dirs(),
                           what="dlib 68-point shape predictor")


_PREDICTOR = None


def _predictor():
    global _PREDICTOR
    if _PREDICTOR is None:
        try:
            import dlib
        except ImportError:
            raise ConfigError("feature group geometry68 needs dlib: pip install 'faceprobe[dlib]'") \
                from None
        path = shape68_path()
        try:
            _PREDICTOR = dlib.shape_predictor(str(path))
        except RuntimeError as exc:
            raise WeightsError(f"{path} is not a dlib shape predictor ({exc}); get it with "
                               "`pip install face-recognition-models`") from None
    return _PREDICTOR


def check_available(groups: Sequence[str]) -> None:
    """Fail before any image is read when a group's dependency is missing."""
    if "geometry68" in groups:
        _predictor()
    if "hog" in groups:
        try:
            import skimage.feature  # noqa: F401
        except ImportError:
            raise ConfigError("feature group hog needs scikit-image: pip install scikit-image") \
                from None


def provenance(groups: Sequence[str]) -> dict[str, dict]:
    """What each extra group was computed with, for the manifest."""
    from faceprobe.files import file_sha256

    out: dict[str, dict] = {}
    for g in groups:
        if g == "geometry68":
            path = shape68_path()
            out[g] = {"dim": EXTRA_DIMS[g], "model": SHAPE68_FILE, "sha256": file_sha256(path),
                      "input": "detector box", "normalised": NORMALISATION}
        elif g == "geometry5":
            out[g] = {"dim": EXTRA_DIMS[g], "input": "the 5 alignment points (detected, or the "
                      "dataset's)", "normalised": NORMALISATION, "missing": "zeros"}
        elif g == "hog":
            import skimage
            out[g] = {"dim": EXTRA_DIMS[g], "input": f"aligned chip, grayscale, {HOG_SIZE}x{HOG_SIZE}",
                      "skimage": skimage.__version__,
                      "params": {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in HOG_PARAMS.items()}}
    return out


def normalise_points(points: np.ndarray, eye_a: np.ndarray, eye_b: np.ndarray) -> np.ndarray:
    """``points`` (n, 2) with the eye midpoint at 0, eye_a -> eye_b along +x, distance 1;
    flattened to (2n,) float32. Zeros when the eyes coincide."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    a, b = np.asarray(eye_a, np.float64), np.asarray(eye_b, np.float64)
    d = b - a
    dist = float(np.hypot(d[0], d[1]))
    if not np.isfinite(dist) or dist < 1e-6 or not np.isfinite(p).all():
        return np.zeros(p.size, np.float32)
    c, s = d / dist
    q = p - (a + b) / 2.0
    x = (c * q[:, 0] + s * q[:, 1]) / dist
    y = (-s * q[:, 0] + c * q[:, 1]) / dist
    return np.column_stack([x, y]).reshape(-1).astype(np.float32)


def geometry5(landmarks: np.ndarray | None) -> np.ndarray:
    if landmarks is None:
        return np.zeros(EXTRA_DIMS["geometry5"], np.float32)
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    return normalise_points(lm, lm[0], lm[1])


def shape68(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The 68 raw points (68, 2) of dlib's predictor on ``box`` (x1 y1 x2 y2)."""
    import dlib

    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    rect = dlib.rectangle(x1, y1, max(x2, x1 + 1), max(y2, y1 + 1))
    shape = _predictor()(np.ascontiguousarray(image, dtype=np.uint8), rect)
    return np.array([(p.x, p.y) for p in shape.parts()], np.float64)


def geometry68(image: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    if box is None:
        box = np.array([0, 0, image.shape[1], image.shape[0]], np.float32)
    pts = shape68(image, box)
    return normalise_points(pts, pts[36:42].mean(axis=0), pts[42:48].mean(axis=0))


def hog(chip: np.ndarray) -> np.ndarray:
    from skimage.feature import hog as sk_hog

    gray = Image.fromarray(np.asarray(chip, np.uint8)).convert("L")
    gray = gray.resize((HOG_SIZE, HOG_SIZE), Image.Resampling.BILINEAR)
    return sk_hog(np.asarray(gray, np.float64), feature_vector=True,
                  **HOG_PARAMS).astype(np.float32)


def _f32(a) -> np.ndarray | None:
    if a is None:
        return None
    a = np.asarray(a, np.float32)
    return None if np.isnan(a).all() else a


def face_inputs(row: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(box, 5 alignment points) of a row as the store keeps them (float32, None if absent)."""
    lm = _f32(row.get("landmarks_detected"))
    if lm is None and row.get("status") == "dataset_landmarks":
        lm = _f32(row.get("landmarks_dataset"))
    return _f32(row.get("box")), (None if lm is None else lm.reshape(5, 2))


def _same(used, stored) -> bool:
    if used is None or stored is None:
        return used is None and stored is None
    return np.array_equal(np.asarray(used, np.float64).reshape(-1),
                          np.asarray(stored, np.float64).reshape(-1))


def compute(groups: Sequence[str], image: np.ndarray, row: dict, config, *,
            chip: np.ndarray | None = None, used_box=None, used_landmarks=None
            ) -> dict[str, np.ndarray]:
    """The extra ``groups`` of one face. ``config`` is the store's BackboneConfig (for the chip);
    ``chip`` is reused when it was cut from exactly the stored box and points."""
    from faceprobe.embed.align import align_face

    box, lm = face_inputs(row)
    out: dict[str, np.ndarray] = {}
    for g in groups:
        if g == "geometry5":
            out[g] = geometry5(lm)
        elif g == "geometry68":
            out[g] = geometry68(image, box)
        elif g == "hog":
            c = chip
            if c is None or not (_same(used_box, box) and _same(used_landmarks, lm)):
                c = align_face(image, config, lm, box)
            out[g] = hog(c)
        else:
            raise ConfigError(f"feature group {g!r} is not computed here (faceprobe bug)")
    return out
