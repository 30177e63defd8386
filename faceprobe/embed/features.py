"""Feature groups computed beside the backbone's: landmark geometry and HOG of the aligned face.

Identity embeddings are trained to ignore expression; these cheap descriptors keep it.

- ``geometry68`` (136-d): dlib's 68-point shape predictor (``shape_predictor_68_face_landmarks
  .dat``, shipped offline in face-recognition-models) run on the box it was trained on: the box of
  dlib's frontal HOG detector that best overlaps the face (see :func:`shape68_box`); the points
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
- The 68-point predictor was trained on dlib's HOG-detector boxes, which sit lower and tighter
  than MTCNN's/SCRFD's (on MTCNN boxes its error on AFLW faces doubles: NME 0.19 vs 0.083). So the
  HOG detector is run on a crop around the face's detector box, rescaled so the face is about
  HOG_FACE_PX pixels wide (the cost per face is fixed whatever the image size, and faces smaller
  than the detector's 80-px window are still found without upsampling); the HOG box that best
  overlaps the detector box mapped to HOG geometry (IoU >= MATCH_IOU) is used, else that mapped
  box itself (BOX_MAP, fitted on CelebA, see its comment), so every row keeps its 68 points.
  Stores made before (``input: detector box`` in their provenance) hold other geometry68 values.
"""

from __future__ import annotations

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

# The 68-point predictor's box (see the module's decisions).
SHAPE68_INPUT = "dlib HOG detector box"  # "detector box" before: stores made then differ
HOG_UPSAMPLE = 0        # dlib detector upsampling, on the rescaled crop
HOG_FACE_PX = 100.0     # the crop is rescaled so the detector box's longer side is this many px
HOG_CROP_MARGIN = 0.5   # crop = detector box grown by this many box sides on every side
MATCH_IOU = 0.3         # a HOG box counts as the same face from this IoU with the mapped box
# The detector box (x1 y1 x2 y2, centre cx cy, width w, height h) mapped to HOG-box geometry:
# centre (cx + dx*w, cy + dy*h), square of side scale*sqrt(w*h). Fitted (medians) on the CelebA
# faces where MTCNN's box and the HOG detector's overlap (`bench/feature_groups.py --fit-box`:
# 2,875 of 2,938 faces, raw IoU median 0.713; IQR dx [-0.064, 0.042], dy [0.046, 0.067], scale
# [0.86, 1.006], the HOG box's side being quantised by its pyramid). On those faces the crop
# finds the face as often as the whole image at upsample 0 (2,875 vs 2,888) or 1 (2,874), and
# the heads score the same within a test face or two (bench/feature_groups.py --refresh).
BOX_MAP = {"dx": -0.01, "dy": 0.063, "scale": 0.984}

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


def shape68_path() -> Path:
    """The 68-point model: $FACEPROBE_HOME/weights, else face-recognition-models' folder (found
    without importing that package, whose __init__ needs pkg_resources)."""
    from faceprobe.embed.align import dlib_models_dirs
    from faceprobe.embed.backbones.base import resolve_weights

    return resolve_weights(SHAPE68_FILE, None, None, extra_dirs=dlib_models_dirs(),
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
            import dlib
            out[g] = {"dim": EXTRA_DIMS[g], "model": SHAPE68_FILE, "sha256": file_sha256(path),
                      "input": SHAPE68_INPUT, "normalised": NORMALISATION,
                      "box": {"detector": "dlib.get_frontal_face_detector", "dlib": dlib.__version__,
                              "upsample": HOG_UPSAMPLE, "face_px": HOG_FACE_PX,
                              "crop_margin": HOG_CROP_MARGIN, "match_iou": MATCH_IOU,
                              "fallback": {"map": dict(BOX_MAP),
                                           "rule": "detector box mapped to HOG geometry when no "
                                                   "HOG box overlaps; the largest HOG box (else "
                                                   "the whole image) when there is no detector "
                                                   "box"}}}
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


_DETECTOR = None


def _hog_detector():
    global _DETECTOR
    if _DETECTOR is None:
        import dlib
        _DETECTOR = dlib.get_frontal_face_detector()
    return _DETECTOR


def iou(a, b) -> float:
    """Intersection over union of two boxes x1 y1 x2 y2 (0 when either is empty)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def map_box(box, box_map: dict | None = None) -> np.ndarray:
    """A detector box mapped to dlib HOG-box geometry (``BOX_MAP``): float64 x1 y1 x2 y2."""
    m = BOX_MAP if box_map is None else box_map
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    cx, cy = (x1 + x2) / 2 + m["dx"] * w, (y1 + y2) / 2 + m["dy"] * h
    half = m["scale"] * np.sqrt(w * h) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half], np.float64)


def hog_boxes(image: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """dlib's frontal HOG detections (k, 4) x1 y1 x2 y2 in image pixels: around ``box`` on a crop
    rescaled so the face is about HOG_FACE_PX wide, or on the whole image when ``box`` is None."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    H, W = img.shape[:2]
    if box is None:
        x0, y0, fx, fy, crop = 0, 0, 1.0, 1.0, img
    else:
        x1, y1, x2, y2 = (float(v) for v in box)
        side = max(x2 - x1, y2 - y1, 1.0)
        pad = HOG_CROP_MARGIN * side
        x0, y0 = max(int(np.floor(x1 - pad)), 0), max(int(np.floor(y1 - pad)), 0)
        xe, ye = min(int(np.ceil(x2 + pad)), W), min(int(np.ceil(y2 + pad)), H)
        if xe - x0 < 2 or ye - y0 < 2:
            return np.zeros((0, 4), np.float64)
        f = HOG_FACE_PX / side
        crop = img[y0:ye, x0:xe]
        size = (max(int(round((xe - x0) * f)), 1), max(int(round((ye - y0) * f)), 1))
        if size != (xe - x0, ye - y0):
            crop = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR))
        fx, fy = size[0] / (xe - x0), size[1] / (ye - y0)
    dets = _hog_detector()(np.ascontiguousarray(crop), HOG_UPSAMPLE)
    return np.array([[d.left() / fx + x0, d.top() / fy + y0,
                      d.right() / fx + x0, d.bottom() / fy + y0] for d in dets],
                    np.float64).reshape(-1, 4)


def shape68_box(image: np.ndarray, box: np.ndarray | None) -> tuple[np.ndarray, str]:
    """(box x1 y1 x2 y2, source) the 68-point predictor runs on: the HOG detection that best
    overlaps ``box`` mapped to HOG geometry (source ``hog``), else that mapped box (``mapped``);
    without a detector box the largest HOG detection (``hog``), else the whole image
    (``image``)."""
    dets = hog_boxes(image, box)
    if box is None:
        if len(dets):
            area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
            return dets[int(np.argmax(area))], "hog"
        return np.array([0, 0, image.shape[1], image.shape[0]], np.float64), "image"
    target = map_box(box)
    if len(dets):
        ious = [iou(d, target) for d in dets]
        k = int(np.argmax(ious))
        if ious[k] >= MATCH_IOU:
            return dets[k], "hog"
    return target, "mapped"


def dlib68_five(image: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """Five alignment points (5, 2) float32 in LANDMARK_NAMES order from dlib's 68-point
    predictor on its own HOG box (``shape68_box``): the mean of each eye's six points, the nose
    tip (30) and the mouth corners (48, 54), as measured in issue 18 (AFLW NME 0.083)."""
    pts = shape68(image, shape68_box(image, box)[0])
    eyes = [pts[36:42].mean(axis=0), pts[42:48].mean(axis=0)]  # image-left eye first
    return np.array([*eyes, pts[30], pts[48], pts[54]], np.float32)


def geometry68(image: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    pts = shape68(image, shape68_box(image, box)[0])
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
