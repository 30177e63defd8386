"""KeypointRCNN training data: samples from a store's ground-truth landmarks, the held-out rows,
flips.

Decisions:
- Classes: ``face`` = background + face; ``gender`` = background + woman + man, so one model
  detects, localises the 5 points and predicts gender. In gender mode rows without a gender label
  are left out of training (a box with an unknown class cannot be a target).
- Training rows: every row with finite ``landmarks_dataset`` whose image can be read (failed
  detections included: the ground truth does not depend on the detector). Target box: the row's
  detected box when it contains all 5 points, else a box around the points (``box_from_points``),
  because a detector box that misses the points belongs to another face or is a fallback.
- Held-out images (``holdout``, default 0.2): an image is held out when a hash of (seed, its
  path) falls under the fraction, so the choice depends on neither row order nor store (the same
  image is held out of a re-embedded store too) and all faces of one image fall on one side. The
  model keeps the paths it trained on; ``landmarks predict`` marks those rows and ``landmarks
  evaluate --source rcnn`` leaves them out, so its NME is on images the model never saw.
- Pixel convention: continuous coordinates, pixel ``i`` covers ``[i, i+1)``, so an image of width
  W spans ``[0, W]`` and a horizontal flip maps ``x -> W - x`` (torchvision's references do the
  same); boxes become ``(W - x2, y1, W - x1, y2)``. A flip also swaps the left/right names
  (``FLIP_PERM``), since LANDMARK_NAMES are image-left first: after a flip ``left_eye`` is again
  the eye on the image's left.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from faceprobe.embed.store import Store
from faceprobe.errors import ConfigError, ImageError, StoreError
from faceprobe.landmarks.rcnn_model import CLASSES, NUM_KEYPOINTS

# class index -> store gender vocabulary name
GENDER_OF_CLASS = {1: "female", 2: "male"}
FLIP_PERM = (1, 0, 2, 4, 3)  # left_eye<->right_eye, nose, mouth_left<->mouth_right
_UNREADABLE = ("missing", "unreadable")


def box_from_points(points: np.ndarray) -> np.ndarray:
    """A face box around 5 points: ~2.5x the points' extent wide and tall, more room above the
    eyes than below the mouth (where the points sit in a detector's box)."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    s = max(float((hi - lo).max()), 1.0)
    cx = (lo[0] + hi[0]) / 2
    return np.array([cx - 1.25 * s, lo[1] - 1.0 * s, cx + 1.25 * s, hi[1] + 0.5 * s],
                    dtype=np.float32)


def hflip_targets(boxes: np.ndarray, points: np.ndarray, width: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mirror (k,4) boxes and (k,5,2) points of an image ``width`` pixels wide (x -> W - x) and
    swap the left/right point names."""
    boxes = np.asarray(boxes, dtype=np.float32)
    points = np.asarray(points, dtype=np.float32)
    fb = boxes.copy()
    fb[:, 0] = width - boxes[:, 2]
    fb[:, 2] = width - boxes[:, 0]
    fp = points[:, list(FLIP_PERM)].copy()
    fp[..., 0] = width - fp[..., 0]
    return fb, fp


def hflip(image: np.ndarray, boxes: np.ndarray, points: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip an (H, W, C) image with its boxes and points (see ``hflip_targets``)."""
    fb, fp = hflip_targets(boxes, points, image.shape[1])
    return np.ascontiguousarray(image[:, ::-1]), fb, fp



def held_out(paths: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the images held out of training (see the module docstring)."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"--holdout {fraction}; give a fraction in [0, 1)")
    out = np.zeros(len(paths), dtype=bool)
    if fraction == 0:
        return out
    for i, p in enumerate(paths):
        digest = hashlib.sha256(f"{int(seed)}:{p}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0 ** 64 < fraction
    return out
@dataclass(frozen=True)
class Sample:
    path: str
    box: np.ndarray  # (4,) x1 y1 x2 y2, image pixels (clipped to the image when loaded)
    points: np.ndarray  # (5, 2)
    label: int  # class index into CLASSES[classes]


def samples_from_store(store: Store, classes: str, splits: Sequence[str] | None = None,
                       holdout: float = 0.0, seed: int = 0) -> tuple[list[Sample], dict]:
    """Training samples of a store and the counts of rows left out, by reason (``held_out``:
    the images :func:`held_out` keeps for evaluation)."""
    if classes not in CLASSES:
        raise ConfigError(f"unknown --classes {classes!r}; choose {' or '.join(CLASSES)}")
    tasks: list[str] = []
    if classes == "gender":
        vocab = store.vocabularies.get("gender")
        if not vocab or not {"male", "female"} <= set(vocab):
            raise StoreError(f"store {store.path} has no male/female gender labels; "
                             "use --classes face")
        tasks = ["gender"]
    d = store.load(features=(), tasks=tasks, splits=splits, usable_only=False)
    has_pts = np.isfinite(d.landmarks_dataset).all(axis=(1, 2))
    unreadable = np.isin(d.status, _UNREADABLE)
    held = held_out([str(p) for p in d.path], holdout, seed)
    skipped = {"no_landmarks": int((~has_pts).sum()),
               "unreadable": int((has_pts & unreadable).sum()), "no_gender": 0,
               "held_out": int((has_pts & ~unreadable & held).sum())}
    out = []
    for i in np.flatnonzero(has_pts & ~unreadable & ~held):
        pts = d.landmarks_dataset[i].astype(np.float32)
        label = 1
        if classes == "gender":
            code = int(d.y["gender"][i])
            if code < 0:
                skipped["no_gender"] += 1
                continue
            name = store.vocabularies["gender"][code]
            label = {v: k for k, v in GENDER_OF_CLASS.items()}.get(name, -1)
            if label < 0:
                skipped["no_gender"] += 1
                continue
        box = d.box[i]
        inside = (np.isfinite(box).all() and box[2] > box[0] and box[3] > box[1]
                  and (pts[:, 0] >= box[0]).all() and (pts[:, 0] <= box[2]).all()
                  and (pts[:, 1] >= box[1]).all() and (pts[:, 1] <= box[3]).all())
        out.append(Sample(str(d.path[i]), box.astype(np.float32) if inside
                          else box_from_points(pts), pts, label))
    if not out:
        raise StoreError(f"store {store.path} has no rows with ground-truth landmarks to train on "
                         f"({skipped}); embed MTFL or CelebA with its landmark file")
    return out, skipped


class LandmarkDataset(torch.utils.data.Dataset):
    """Images as float CHW [0,1] with KeypointRCNN targets; random horizontal flip when
    ``train``. The flip is drawn from (seed, epoch, index), so a resumed run sees the same one."""

    def __init__(self, samples: Sequence[Sample], train: bool = True, seed: int = 0):
        self.samples = list(samples)
        self.train = train
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from faceprobe.embed.images import load_image

        s = self.samples[i]
        try:
            img = load_image(s.path)
        except ImageError:
            return None  # dropped by collate: one bad file must not stop a long run
        h, w = img.shape[:2]
        box = s.box.copy()
        box[[0, 2]] = np.clip(box[[0, 2]], 0, w)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, h)
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            return None
        boxes, points = box[None], s.points[None]
        if self.train and np.random.default_rng([self.seed, self.epoch, i]).random() < 0.5:
            img, boxes, points = hflip(img, boxes, points)
        kps = np.concatenate([points, np.ones((1, NUM_KEYPOINTS, 1), np.float32)], axis=2)
        image = to_tensor(img)
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.tensor([s.label]),
                  "keypoints": torch.from_numpy(kps)}
        return image, target


def to_tensor(img: np.ndarray) -> torch.Tensor:
    if not img.flags.writeable:  # torch warns on read-only numpy memory
        img = img.copy()
    return torch.from_numpy(img).permute(2, 0, 1).float().div_(255)


def collate(batch):
    batch = [b for b in batch if b is not None]
    return [b[0] for b in batch], [b[1] for b in batch]

