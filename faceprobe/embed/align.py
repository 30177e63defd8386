"""Face alignment: 5-point similarity transform onto a backbone's template, or a margin crop.

Conventions: points are (x, y) in pixel-index coordinates (pixel centers at integers), as MTCNN,
the dataset landmark files, cv2.warpAffine and dlib use them; templates likewise.

Decisions:
- The similarity (rotation, uniform scale, translation) is the linear least-squares fit over the
  4 parameters (a, b, tx, ty) with ``numpy.linalg.lstsq``: the same optimum as Umeyama / skimage's
  ``SimilarityTransform`` and dlib's ``find_similarity_transform`` for this model, in a few µs.
- Warping is PIL's C ``Image.transform(AFFINE, BILINEAR)``, one call per face (~0.1 ms for a
  chip); the 0.5 px shift converts between index coordinates and PIL's pixel-area coordinates.
- ``crop`` is exactly facenet-pytorch's ``extract_face`` (box + margin in output pixels, integer
  box, PIL bilinear resize): FaceNet weights were trained on MTCNN box crops, not on a
  landmark-warped template, so this is FaceNet's default.
- ``dlib5`` (dlib.resnet's default): dlib's own 5-point shape predictor is run on the MTCNN box
  and ``dlib.get_face_chip(..., 150, padding=0.25)`` cuts the chip, exactly the alignment dlib's
  ResNet was trained with. Measured on 1,500 UTKFace chips (5-fold RBF SVM): warping MTCNN's
  points onto a fixed template gave gender 0.799 / race 0.753 / age MAE 10.8; dlib5 on the MTCNN
  box 0.840 / 0.799 / 9.6, on par with dlib's full HOG pipeline (0.844 / 0.809 / 9.4). dlib's
  embedding space is compressed (different people already score ~0.83 cosine), so small
  alignment drift costs real accuracy.
- ``DLIB_150_TEMPLATE`` (``alignment='similarity'`` for dlib) is where MTCNN's 5 points land, on
  average, in that chip; derived on LFW by ``python bench/embed.py dlib-template``. Kept for
  faces given only as 5 points (``--landmarks dataset``), where there is no box to run on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

# insightface's ArcFace template for 112x112 (arcface_torch / insightface.utils.face_align).
ARCFACE_TEMPLATE = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
], dtype=np.float64)

# MTCNN points in dlib's 150x150 / padding 0.25 face chip (see module docstring).
DLIB_150_TEMPLATE = np.array([
    [48.5374, 46.6052],
    [102.3875, 46.4509],
    [74.9182, 78.3026],
    [51.4294, 105.2717],
    [99.2111, 105.2503],
], dtype=np.float64)


def scaled_template(template: np.ndarray, from_size: int, to_size: int,
                    margin: float = 0.0) -> np.ndarray:
    """``template`` for a ``from_size`` square moved to a ``to_size`` square, leaving ``margin`` (a
    fraction of ``to_size``) around the ``from_size`` frame: e.g. ArcFace's template at 160 px."""
    inner = to_size * (1.0 - 2.0 * margin)
    return template * (inner / from_size) + to_size * margin


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity ``M`` minimising sum |M @ [src, 1] - dst|^2 (least squares)."""
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    n = len(src)
    a = np.zeros((2 * n, 4))
    a[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)])
    a[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)])
    (p, q, tx, ty), *_ = np.linalg.lstsq(a, dst.reshape(-1), rcond=None)
    return np.array([[p, -q, tx], [q, p, ty]])


def transform_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64).reshape(-1, 2)
    return points @ m[:, :2].T + m[:, 2]


def invert_affine(m: np.ndarray) -> np.ndarray:
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def warp_affine(image: np.ndarray | Image.Image, m: np.ndarray, size: int | tuple[int, int]
                ) -> np.ndarray:
    """Warp ``image`` by ``m`` (image -> output, index coordinates) into a ``size`` chip, bilinear,
    black outside the image."""
    w, h = (size, size) if isinstance(size, int) else size
    inv = invert_affine(m)
    # PIL samples output pixel (x, y) at inv @ (x + .5, y + .5) in area coordinates, i.e. at
    # that minus 0.5 in index coordinates
    a, b, c = inv[0]
    d, e, f = inv[1]
    c = c - 0.5 * (a + b) + 0.5
    f = f - 0.5 * (d + e) + 0.5
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    out = img.transform((w, h), Image.Transform.AFFINE, (a, b, c, d, e, f),
                        resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def align_similarity(image: np.ndarray, landmarks: np.ndarray, template: np.ndarray,
                     size: int) -> tuple[np.ndarray, np.ndarray]:
    """Chip of ``size`` with the 5 ``landmarks`` on ``template``; returns (chip, matrix)."""
    m = similarity_matrix(landmarks, template)
    return warp_affine(image, m, size), m


def crop_box(box: np.ndarray, image_shape: tuple, size: int, margin: float) -> list[int]:
    """facenet-pytorch ``extract_face``'s integer crop box: ``margin`` is in output pixels."""
    h, w = image_shape[:2]
    mx = margin * (box[2] - box[0]) / (size - margin)
    my = margin * (box[3] - box[1]) / (size - margin)
    return [
        int(max(box[0] - mx / 2, 0)), int(max(box[1] - my / 2, 0)),
        int(min(box[2] + mx / 2, w)), int(min(box[3] + my / 2, h)),
    ]


def align_crop(image: np.ndarray | Image.Image, box: np.ndarray, size: int, margin: float
               ) -> np.ndarray:
    """facenet-pytorch's margin crop of ``box`` resized to ``size`` (PIL bilinear)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    x1, y1, x2, y2 = crop_box(np.asarray(box, np.float64), (img.size[1], img.size[0]), size, margin)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty crop box {[x1, y1, x2, y2]}")
    out = img.crop((x1, y1, x2, y2)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


_DLIB_SHAPE5 = None


def dlib_models_dirs() -> list[Path]:
    """face_recognition_models' model folder (dlib's predictors and ResNet), found without
    importing that package: its ``__init__`` imports pkg_resources, which current setuptools no
    longer ships. Here because both this module and the dlib.resnet backbone load from it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) / "models" for p in spec.submodule_search_locations]


def _dlib_shape5():
    """dlib's 5-point shape predictor, loaded once per process (worker)."""
    global _DLIB_SHAPE5
    if _DLIB_SHAPE5 is None:
        import dlib

        from faceprobe.embed.backbones.base import resolve_weights

        path = resolve_weights("shape_predictor_5_face_landmarks.dat", None, None,
                               extra_dirs=dlib_models_dirs(), what="dlib 5-point predictor")
        _DLIB_SHAPE5 = dlib.shape_predictor(str(path))
    return _DLIB_SHAPE5


def align_dlib5(image: np.ndarray, box: np.ndarray, size: int = 150, padding: float = 0.25
                ) -> np.ndarray:
    """dlib's own chip: its 5-point predictor on ``box``, then ``get_face_chip``."""
    import dlib

    img = np.ascontiguousarray(image, dtype=np.uint8)
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    shape = _dlib_shape5()(img, dlib.rectangle(x1, y1, x2, y2))
    return np.asarray(dlib.get_face_chip(img, shape, size=size, padding=padding), np.uint8)


def align_face(image: np.ndarray, config, landmarks: np.ndarray | None, box: np.ndarray | None
               ) -> np.ndarray:
    """The chip ``config`` (a BackboneConfig) asks for. Faces without landmarks (the whole-image
    fallback) are box crops whatever the alignment: there is nothing to put on a template."""
    size = config.input_size
    if config.alignment == "dlib5" and box is not None and np.isfinite(box).all():
        return align_dlib5(image, box, size)
    if config.alignment in ("similarity", "dlib5") and landmarks is not None:
        return align_similarity(image, landmarks, np.asarray(config.template), size)[0]
    if box is None:
        box = np.array([0, 0, image.shape[1], image.shape[0]], np.float32)
    margin = config.margin if landmarks is not None or config.alignment == "crop" else 0
    return align_crop(image, box, size, margin)


# The MTCNN box of an average face expressed in the ArcFace 112x112 template frame (x1, y1, x2,
# y2): measured on 395 LFW faces (MTCNN box mapped through each face's landmark->template
# similarity, then averaged). Mapping it back through a record's own landmarks gives the box a
# detector would have drawn, so crop-aligned backbones see the same framing either way.
TEMPLATE_FACE_BOX = np.array([16.1, 11.74, 93.52, 116.8], dtype=np.float32)


def box_from_landmarks(points: np.ndarray) -> np.ndarray:
    """The detector-style box of a face from its 5 points (see TEMPLATE_FACE_BOX)."""
    m = similarity_matrix(ARCFACE_TEMPLATE, np.asarray(points, np.float64))  # template -> image
    x1, y1, x2, y2 = TEMPLATE_FACE_BOX.astype(np.float64)
    corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    mapped = corners @ m[:, :2].T + m[:, 2]
    return np.array([*mapped.min(0), *mapped.max(0)], dtype=np.float32)
