"""The one record type every dataset reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Order of the 5 landmark points everywhere in faceprobe (dataset files, MTCNN output, the store):
# the eye and mouth corner on the *image's* left come first, as in MTFL, CelebA and MTCNN.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True, slots=True)
class FaceRecord:
    """One image of a dataset.

    path:      absolute path of the image file (it may not exist; readers report that).
    dataset:   reader name, e.g. ``utkface``.
    labels:    task -> mapped value: a class name (str) for categorical tasks, a float for ``age``.
               A task the row has no label for is absent (never None or a sentinel).
    raw:       the dataset's own field -> original value (as text), so nothing is silently recoded.
    landmarks: (5, 2) float32 x,y in original image pixels, in LANDMARK_NAMES order, or None.
    identity:  person id as text, or None.
    split:     ``train``/``val``/``test`` or ``fold1``.. as the dataset defines it, or None.
    """

    path: str
    dataset: str
    labels: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)
    landmarks: np.ndarray | None = None
    identity: str | None = None
    split: str | None = None
