"""Face detection (MTCNN) and the per-image face policy.

MTCNN's P/R/O-nets and weights come from facenet-pytorch (the weights ship inside the package, so
detection works offline). The cascade is facenet-pytorch's ``detect_face`` with three changes
that make it ~3x faster on a CPU and do not change what it computes beyond float rounding:
- the nets run channels-last: PyTorch's NCHW ``max_pool2d`` with ``ceil_mode`` is ~10x slower on
  a CPU than its channels-last kernel, and it dominated the detector's time;
- the pyramid starts at a minimum face size sized to the image (``min_face_size=None``: a fifth
  of the short side, at least 20 px): face datasets are crops where the face fills much of the
  frame, and the finest pyramid levels cost the most. When that finds nothing the image is
  retried once at 20 px, so small faces are still found, only slower;
- images of the same size go through the cascade as one batch.

Policies, recorded per row as ``status`` + ``policy``:
- several faces: ``largest`` (box area), ``central`` (facenet-pytorch's center-weighted size:
  area - 2 * squared offset of the box center from the image center; what LFW-style crops want)
  or ``all`` (one row per face);
- no face: ``skip`` (row ``no_face``) or ``whole_image`` (the frame's centered square is the
  face, status ``no_face_fallback``; for pre-cropped datasets such as UTKFace chips or CelebA
  aligned);
- faces smaller than ``min_face_size`` (or 20 px when automatic) are ``face_too_small``;
- ``landmarks='dataset'``: a record's own 5 points replace detection (status
  ``dataset_landmarks``), with a box derived from the points (:func:`box_from_landmarks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from faceprobe.embed.align import TEMPLATE_FACE_BOX, box_from_landmarks  # noqa: F401 (re-export)

MULTI_FACE_POLICIES = ("largest", "central", "all")
NO_FACE_POLICIES = ("skip", "whole_image")
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
AUTO_MIN_FACE_FRACTION = 0.2
MIN_FACE_FLOOR = 20


def check_policies(multi_face: str, no_face: str) -> None:
    """The face policies every detector takes, checked with one message each."""
    from faceprobe.errors import ConfigError

    if multi_face not in MULTI_FACE_POLICIES:
        raise ConfigError(f"multi_face={multi_face!r}; choose one of {', '.join(MULTI_FACE_POLICIES)}")
    if no_face not in NO_FACE_POLICIES:
        raise ConfigError(f"no_face={no_face!r}; choose one of {', '.join(NO_FACE_POLICIES)}")


@dataclass(frozen=True)
class Detection:
    """One face: box (4,) x1 y1 x2 y2, score in [0, 1] (None when not detected), landmarks (5, 2)
    in LANDMARK_NAMES order (image-left eye first) or None."""

    box: np.ndarray
    score: float | None
    landmarks: np.ndarray | None

    @property
    def size(self) -> float:
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


@dataclass
class FaceResult:
    """The policy's outcome for one image: the faces to embed (empty for a failed row)."""

    status: str
    policy: str
    faces: list[Detection] = field(default_factory=list)
    error: str = ""
    found: int = 0  # faces the detector found before the policy chose


def _mtcnn_nets(device: torch.device):
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    nets = []
    for cls in (PNet, RNet, ONet):
        net = cls(pretrained=True).eval().to(device)
        net = net.to(memory_format=torch.channels_last)
        for p in net.parameters():
            p.requires_grad_(False)
        nets.append(net)
    return nets


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _crop_resample(imgs, boxes, image_inds, size):
    from facenet_pytorch.models.utils.detect_face import imresample, pad

    h, w = imgs.shape[2:4]
    y, ey, x, ex = pad(boxes, w, h)
    crops = []
    for k in range(len(y)):
        if ey[k] > (y[k] - 1) and ex[k] > (x[k] - 1):
            img_k = imgs[image_inds[k], :, (y[k] - 1):ey[k], (x[k] - 1):ex[k]].unsqueeze(0)
            crops.append(imresample(img_k, (size, size)))
    data = torch.cat(crops, dim=0)
    return _cl((data - 127.5) * 0.0078125)


@torch.no_grad()
def detect_batch(imgs: torch.Tensor, minsize: float, nets, thresholds, factor: float = 0.709):
    """facenet-pytorch's ``detect_face`` cascade on a uint8 NHWC batch of same-size images.

    Returns per image (boxes (n, 5) with score, points (n, 5, 2)).
    """
    from facenet_pytorch.models.utils.detect_face import (
        batched_nms,
        batched_nms_numpy,
        bbreg,
        generateBoundingBox,
        imresample,
        rerec,
    )

    pnet, rnet, onet = nets
    device = imgs.device
    imgs = imgs.permute(0, 3, 1, 2).float()
    batch_size = len(imgs)
    h, w = imgs.shape[2:4]
    m = 12.0 / minsize
    minl = min(h, w) * m
    scales = []
    scale_i = m
    while minl >= 12:
        scales.append(scale_i)
        scale_i *= factor
        minl *= factor

    boxes, image_inds, scale_picks = [], [], []
    offset = 0
    for scale in scales:
        im_data = imresample(imgs, (int(h * scale + 1), int(w * scale + 1)))
        reg, probs = pnet(_cl((im_data - 127.5) * 0.0078125))
        boxes_scale, inds_scale = generateBoundingBox(reg, probs[:, 1], scale, thresholds[0])
        boxes.append(boxes_scale)
        image_inds.append(inds_scale)
        pick = batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], inds_scale, 0.5)
        scale_picks.append(pick + offset)
        offset += boxes_scale.shape[0]
    if not scales:
        return [(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))] * batch_size
    boxes = torch.cat(boxes, dim=0)
    image_inds = torch.cat(image_inds, dim=0)
    scale_picks = torch.cat(scale_picks, dim=0)
    boxes, image_inds = boxes[scale_picks], image_inds[scale_picks]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]

    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([
        boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
        boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4],
    ]).permute(1, 0)
    boxes = rerec(boxes)

    if len(boxes) > 0:
        out0, out1 = (t.permute(1, 0) for t in rnet(_crop_resample(imgs, boxes, image_inds, 24)))
        score = out1[1, :]
        ipass = score > thresholds[1]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds = image_inds[ipass]
        mv = out0[:, ipass].permute(1, 0)
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
        boxes = rerec(bbreg(boxes, mv))

    points = torch.zeros(0, 5, 2, device=device)
    if len(boxes) > 0:
        out = onet(_crop_resample(imgs, boxes, image_inds, 48))
        out0, out1, out2 = (t.permute(1, 0) for t in out)
        score = out2[1, :]
        ipass = score > thresholds[2]
        points = out1[:, ipass]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds = image_inds[ipass]
        mv = out0[:, ipass].permute(1, 0)
        w_i = boxes[:, 2] - boxes[:, 0] + 1
        h_i = boxes[:, 3] - boxes[:, 1] + 1
        px = w_i.repeat(5, 1) * points[:5, :] + boxes[:, 0].repeat(5, 1) - 1
        py = h_i.repeat(5, 1) * points[5:10, :] + boxes[:, 1].repeat(5, 1) - 1
        points = torch.stack((px, py)).permute(2, 1, 0)
        boxes = bbreg(boxes, mv)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        boxes, image_inds, points = boxes[pick], image_inds[pick], points[pick]

    boxes = boxes.cpu().numpy().astype(np.float32)
    points = points.cpu().numpy().astype(np.float32)
    image_inds = image_inds.cpu().numpy()
    return [(boxes[image_inds == b], points[image_inds == b]) for b in range(batch_size)]


def auto_min_face_size(height: int, width: int) -> float:
    return max(float(MIN_FACE_FLOOR), AUTO_MIN_FACE_FRACTION * min(height, width))


class FaceDetector:
    """MTCNN plus the face policy. ``locate(images)`` -> one :class:`FaceResult` per image."""

    def __init__(self, device: str | torch.device = "cpu", min_face_size: float | None = None,
                 thresholds: Sequence[float] = DEFAULT_THRESHOLDS, multi_face: str = "central",
                 no_face: str = "skip", factor: float = 0.709):
        from faceprobe.errors import ConfigError

        check_policies(multi_face, no_face)
        if min_face_size is not None and min_face_size < 12:
            raise ConfigError(f"min_face_size={min_face_size}; MTCNN needs at least 12 pixels")
        if len(thresholds) != 3 or not all(0 < t < 1 for t in thresholds):
            raise ConfigError(f"thresholds={list(thresholds)}; give three values in (0, 1)")
        self.device = torch.device(device)
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.multi_face = multi_face
        self.no_face = no_face
        self.factor = factor
        self._nets = None

    @property
    def nets(self):
        if self._nets is None:
            self._nets = _mtcnn_nets(self.device)
        return self._nets

    def detect(self, images: Sequence[np.ndarray], min_face_size: float | None = None
               ) -> list[list[Detection]]:
        """All faces of each RGB uint8 image, best score first. Same-size images share a call."""
        out: list[list[Detection] | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape, []).append(i)
        for shape, idx in groups.items():
            ms = min_face_size or self.min_face_size or auto_min_face_size(shape[0], shape[1])
            batch = torch.from_numpy(np.stack([images[i] for i in idx])).to(self.device)
            for i, (boxes, points) in zip(idx, detect_batch(batch, ms, self.nets, self.thresholds,
                                                             self.factor), strict=True):
                order = np.argsort(-boxes[:, 4], kind="stable")
                out[i] = [Detection(boxes[k, :4].copy(), float(boxes[k, 4]), points[k].copy())
                          for k in order]
        return out  # type: ignore[return-value]

    def locate(self, images: Sequence[np.ndarray],
               landmarks: Sequence[np.ndarray | None] | None = None) -> list[FaceResult]:
        """Apply detection (or the given dataset landmarks) and the policies to each image."""
        results: list[FaceResult | None] = [None] * len(images)
        todo = []
        for i in range(len(images)):
            pts = None if landmarks is None else landmarks[i]
            if pts is not None and np.all(np.isfinite(pts)):
                pts = np.asarray(pts, np.float32).reshape(5, 2)
                results[i] = FaceResult("dataset_landmarks", "dataset",
                                        [Detection(box_from_landmarks(pts), None, pts)], found=1)
            else:
                todo.append(i)
        if todo:
            found = self.detect([images[i] for i in todo])
            for k, faces in enumerate(found):
                if not faces:
                    found[k] = self._second_look(images[todo[k]])
            for k, i in enumerate(todo):
                results[i] = self.choose(images[i].shape, found[k])
        return results  # type: ignore[return-value]

    def _second_look(self, img: np.ndarray) -> list[Detection]:
        """Faces of an image the first pass found none in. MTCNN: a face smaller than the
        pyramid's start, so look again from the floor (slower); a small face is then found, or
        reported as face_too_small under an explicit minimum."""
        floor = max(float(MIN_FACE_FLOOR), min(img.shape[:2]) / 80.0)
        first = self.min_face_size or auto_min_face_size(*img.shape[:2])
        return self.detect([img], min_face_size=floor)[0] if first > floor else []

    def choose(self, shape: tuple, faces: list[Detection]) -> FaceResult:
        h, w = shape[:2]
        floor = self.min_face_size or MIN_FACE_FLOOR
        big = [f for f in faces if f.size >= floor * 0.8]  # MTCNN boxes jitter around minsize
        if not big:
            if faces:
                sizes = ", ".join(f"{f.size:.0f}" for f in faces[:3])
                return FaceResult("face_too_small", self.multi_face, error=(
                    f"faces found are smaller than min_face_size={floor:g} px (sizes {sizes})"),
                    found=len(faces))
            if self.no_face == "whole_image":
                # the centered square of the short side: a square chip without stretching
                side = min(h, w)
                x0, y0 = (w - side) / 2, (h - side) / 2
                box = np.array([x0, y0, x0 + side, y0 + side], dtype=np.float32)
                return FaceResult("no_face_fallback", "whole_image", [Detection(box, None, None)])
            return FaceResult("no_face", self.multi_face, error="no face detected")
        if self.multi_face == "all":
            return FaceResult("ok", "all", big, found=len(faces))
        if len(big) == 1:
            return FaceResult("ok", self.multi_face, big, found=len(faces))
        boxes = np.stack([f.box for f in big]).astype(np.float64)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        if self.multi_face == "largest":
            key = area
        else:
            cx = (boxes[:, 0] + boxes[:, 2]) / 2 - w / 2
            cy = (boxes[:, 1] + boxes[:, 3]) / 2 - h / 2
            key = area - 2.0 * (cx ** 2 + cy ** 2)
        best = int(np.argmax(key))
        return FaceResult("multi_face_chosen", self.multi_face, [big[best]], found=len(faces))
