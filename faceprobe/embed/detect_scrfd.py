"""Face detection with SCRFD-2.5GF (InsightFace, 5 keypoints) on onnxruntime.

The same interface as MTCNN's :class:`~faceprobe.embed.detect.FaceDetector`: ``detect(images)``
-> per image a list of :class:`~faceprobe.embed.detect.Detection` (box x1 y1 x2 y2, score in
[0, 1], 5 points in LANDMARK_NAMES order), best score first; ``locate`` and ``choose`` apply the
same face policies (inherited).

Decisions (measured on this file's model, ``scrfd_2.5g_bnkps.onnx``, sha256 22fa39a6...):
- The published graph is fixed at ``1x3x640x640``, and its two FPN upsamples are ``Resize`` with
  constant output *sizes*. Both are rewritten to a constant scale of 2 (nearest, asymmetric,
  floor: the same pixels whenever the input side is a multiple of 32) and the batch, height and
  width made symbolic, so a batch of canvases of any multiple-of-32 size runs in one call. The
  edited graph is kept in ``$FACEPROBE_HOME/cache`` under the file's sha256 and checked once
  against the original at 640x640.
- Its outputs are the heads' raw convolutions, per stride 8, 16, 32: class logits ``(N, 2, h,
  w)`` (no Sigmoid in the graph: a sigmoid is applied here), box distances ``(N, 8, h, w)`` and
  keypoint offsets ``(N, 20, h, w)``, 2 anchors per location, anchor-major channels. Anchor
  centres are ``(x * stride, y * stride)``; distances and offsets are in stride units
  (``distance2bbox`` / ``distance2kps`` as in InsightFace's ``scrfd.py``).
- Input: RGB (InsightFace's ``cv2.dnn.blobFromImage(..., swapRB=True)`` on a BGR image feeds
  RGB), ``(x - 127.5) / 128``; the canvas is padded with the mean (0 after normalisation, as
  mmdet's ``Pad`` after ``Normalize`` in training), the image at its top-left.
- Scale per image: the long side is resized to ``input_size`` (default 320, whatever the image's
  size) on a canvas rounded up to a multiple of 32. SCRFD was trained on 640 crops of WIDER FACE,
  where faces are rarely over ~300 px: a face that fills a 640 canvas is missed, one that fills a
  320 canvas is found. Measured on 600 MTFL images (bench/detectors.py): long side 128..512 finds
  a face in 100% of them; at 640 the 400 px net_7876 images drop to 55%. On all 3,334 MTFL
  images 320 and 256 both find 100% (NME 0.052 / 0.051); 256 is ~1.4x faster, 320 keeps faces
  of large photos 25% bigger. When an image gives no face, it is tried again with its long side
  at ``retry_size`` (640), for small faces in large photos.
- Batches: one onnxruntime call per group of same-size canvases (<= ``max_batch``); outputs
  equal single-image runs within 3e-6. On a CPU this is throughput-neutral (measured), on a GPU
  it is the point.
- NMS is torchvision's ``batched_nms`` (one call for all images of a batch), IoU 0.4 as
  InsightFace.
- onnxruntime runs on every core with intra-op spinning off (the session of
  ``backbones/arcface.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faceprobe.embed.detect import (
    Detection,
    FaceDetector,
    check_policies,
)

log = logging.getLogger(__name__)

SCRFD_FILENAME = "scrfd_2.5g_bnkps.onnx"
SCRFD_URL = "https://github.com/KennethWang1221/Face-Detection-and-Recognition-System/raw/5638c7a/scrfd.onnx"
SCRFD_SHA256 = "22fa39a6cbb01b35876c4d4bd46a9e85991f7a9190e3c8f39a4546420bb9f81a"
STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
MEAN, STD = 127.5, 128.0
DEFAULT_INPUT_SIZE = 320
RETRY_SIZE = 640
MAX_BATCH = 16
CHECK_TOLERANCE = 1e-3


def _dynamic_model(path: str | os.PathLike) -> bytes:
    """The SCRFD graph with symbolic batch/height/width and scale-2 upsampling, as bytes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 3 * len(STRIDES):
        raise ValueError(f"expected 1 input and {3 * len(STRIDES)} outputs, got {len(inputs)} "
                         f"and {len(graph.output)}")
    for d, name in zip(inputs[0].type.tensor_type.shape.dim, ("N", None, "H", "W"), strict=True):
        if name is not None:
            d.Clear()
            d.dim_param = name
    for k, out in enumerate(graph.output):
        dims = out.type.tensor_type.shape.dim
        for j, name in ((0, "N"), (2, f"h{k}"), (3, f"w{k}")):
            dims[j].Clear()
            dims[j].dim_param = name
    del graph.value_info[:]
    scales = "faceprobe_upsample_x2"
    graph.initializer.append(numpy_helper.from_array(
        np.array([1.0, 1.0, 2.0, 2.0], np.float32), scales))
    for node in graph.node:
        if node.op_type == "Resize":
            if len(node.input) != 4:
                raise ValueError(f"Resize {node.name} has {len(node.input)} inputs, expected 4")
            modes = {a.name: a.s for a in node.attribute if a.type == onnx.AttributeProto.STRING}
            if modes.get("mode") != b"nearest":
                raise ValueError(f"Resize {node.name} is not nearest-neighbour")
            del node.input[3]
            node.input[2] = scales
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    for n in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(n)
    return model.SerializeToString()


def _cache_name(path: str | os.PathLike) -> str:
    from faceprobe.files import file_sha256

    return f"{file_sha256(path)}.scrfd-dynamic.onnx"


def cached_dynamic_model(path: str | os.PathLike) -> tuple[bytes, bool]:
    """(:func:`_dynamic_model` bytes, whether they came from ``$FACEPROBE_HOME/cache``)."""
    from faceprobe.embed.backbones.base import read_cache

    data = read_cache(_cache_name(path))
    return (data, True) if data is not None else (_dynamic_model(path), False)


def _store_cache(path: str | os.PathLike, data: bytes) -> None:
    from faceprobe.embed.backbones.base import write_cache

    write_cache(_cache_name(path), data)


def _anchor_centers(h: int, w: int, stride: int) -> np.ndarray:
    """(h * w * NUM_ANCHORS, 2) x, y: row-major locations, the anchors of a location adjacent."""
    ys, xs = np.mgrid[:h, :w]
    c = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(c, NUM_ANCHORS, axis=0)


def decode(outputs: Sequence[np.ndarray], score_threshold: float, iou_threshold: float,
           max_faces: int | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Raw head outputs (scores x3, boxes x3, keypoints x3, strides 8/16/32) of a batch -> per
    image (boxes (n, 4), scores (n,), points (n, 5, 2)) in canvas pixels, best score first."""
    import torch
    from torchvision.ops import batched_nms

    n_strides = len(STRIDES)
    batch = outputs[0].shape[0]
    all_boxes, all_scores, all_kps, all_img = [], [], [], []
    for k, stride in enumerate(STRIDES):
        logits, dist, kps = outputs[k], outputs[k + n_strides], outputs[k + 2 * n_strides]
        h, w = logits.shape[2:]
        # (N, A*C, h, w) -> (N, h, w, A, C) -> (N, h*w*A, C): the anchor order of the centres
        scores = 1.0 / (1.0 + np.exp(-logits.transpose(0, 2, 3, 1).reshape(batch, -1)))
        dist = dist.reshape(batch, NUM_ANCHORS, 4, h, w).transpose(0, 3, 4, 1, 2).reshape(
            batch, -1, 4) * stride
        kps = kps.reshape(batch, NUM_ANCHORS, 10, h, w).transpose(0, 3, 4, 1, 2).reshape(
            batch, -1, 5, 2) * stride
        centers = _anchor_centers(h, w, stride)
        img, idx = np.nonzero(scores >= score_threshold)
        c = centers[idx]
        d = dist[img, idx]
        all_boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
        all_kps.append(c[:, None, :] + kps[img, idx])
        all_scores.append(scores[img, idx])
        all_img.append(img)
    boxes = np.concatenate(all_boxes).astype(np.float32)
    scores = np.concatenate(all_scores).astype(np.float32)
    kps = np.concatenate(all_kps).astype(np.float32)
    img = np.concatenate(all_img)
    keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                       torch.from_numpy(img), iou_threshold).numpy()  # score-descending
    out = []
    for b in range(batch):
        sel = keep[img[keep] == b]
        if max_faces is not None:
            sel = sel[:max_faces]
        out.append((boxes[sel], scores[sel], kps[sel]))
    return out


def _resize(image: np.ndarray, nh: int, nw: int) -> np.ndarray:
    from PIL import Image

    if (nh, nw) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))


def _round_up(x: int, m: int = 32) -> int:
    return max(m, -(-x // m) * m)


class ScrfdDetector(FaceDetector):
    """SCRFD-2.5GF plus the face policy of :class:`FaceDetector` (``locate``/``choose``).

    ``input_size``: the long side each image is resized to (a multiple of 32 gives a canvas with
    no padding along it); ``retry_size``: the long side of a second try for an image with no face
    (None: no retry); ``score_threshold`` on the sigmoid score; ``iou_threshold`` for NMS.
    ``min_face_size`` (pixels, default 20 as MTCNN's floor): smaller faces are
    ``face_too_small`` under ``locate``.
    """

    def __init__(self, weights: str | os.PathLike | None = None, device="cpu",
                 min_face_size: float | None = None, score_threshold: float = 0.5,
                 iou_threshold: float = 0.4, input_size: int = DEFAULT_INPUT_SIZE,
                 retry_size: int | None = RETRY_SIZE, multi_face: str = "central",
                 no_face: str = "skip", threads: int | None = None,
                 max_batch: int = MAX_BATCH):
        from faceprobe.embed.backbones.base import resolve_device
        from faceprobe.errors import ConfigError

        check_policies(multi_face, no_face)
        if not 0 < score_threshold < 1:
            raise ConfigError(f"score_threshold={score_threshold}; give a value in (0, 1)")
        if not 0 < iou_threshold <= 1:
            raise ConfigError(f"iou_threshold={iou_threshold}; give a value in (0, 1]")
        if input_size < 32 or (retry_size is not None and retry_size < 32):
            raise ConfigError(f"input_size={input_size}, retry_size={retry_size}; at least 32")
        if min_face_size is not None and min_face_size <= 0:
            raise ConfigError(f"min_face_size={min_face_size}; give a positive size in pixels")
        self.device = resolve_device(device)  # cuda: onnxruntime's CUDA provider when installed
        self.min_face_size = min_face_size
        self.thresholds = ()
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.input_size = int(input_size)
        self.retry_size = None if retry_size is None else int(retry_size)
        self.multi_face = multi_face
        self.no_face = no_face
        self.max_batch = max(1, int(max_batch))
        self._threads = threads
        self._nets = None
        self.weights_path = self._resolve(weights)
        self._session = None

    @staticmethod
    def _resolve(weights) -> Path:
        from faceprobe.embed.backbones.base import resolve_weights

        return resolve_weights(SCRFD_FILENAME, weights, SCRFD_URL, what="SCRFD face detector")

    @property
    def session(self):
        if self._session is None:
            self._session = self._make_session()
        return self._session

    def _make_session(self):
        from faceprobe.embed.backbones.arcface import _session
        from faceprobe.errors import WeightsError

        path = self.weights_path
        try:
            data, cached = cached_dynamic_model(path)
            session = _session(data, self.device, self._threads)
        except Exception as exc:  # noqa: BLE001 - onnx/onnxruntime raise their own types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise WeightsError(f"{path} is not a usable SCRFD ONNX model ({type(exc).__name__}: "
                               f"{first})") from None
        if not cached:
            # the edited graph must reproduce the original at the original's 640x640
            rng = np.random.default_rng(0)
            x = rng.normal(0, 1, (1, 3, 640, 640)).astype(np.float32)
            want = _session(str(path), self.device, self._threads).run(None, {
                _input_name(path): x})
            got = session.run(None, {session.get_inputs()[0].name: x})
            err = max(float(np.abs(a - b).max()) for a, b in zip(got, want, strict=True))
            if not err <= CHECK_TOLERANCE:
                raise WeightsError(f"{path}: the dynamic-size SCRFD graph differs from the "
                                   f"original by {err:.3g}")
            _store_cache(path, data)
        return session

    @property
    def nets(self):  # FaceDetector API: there are no MTCNN nets here
        return self.session

    def _run(self, canvases: np.ndarray) -> list[np.ndarray]:
        """NHWC uint8 RGB canvases -> the 9 raw outputs (normalised input, mean padding)."""
        sess = self.session
        x = (canvases.astype(np.float32) - MEAN) / STD
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return sess.run(None, {sess.get_inputs()[0].name: x})

    def detect(self, images: Sequence[np.ndarray], min_face_size: float | None = None
               ) -> list[list[Detection]]:
        """All faces of each RGB uint8 image, best score first: at ``input_size``, then at
        ``retry_size`` for the images with none. ``min_face_size`` is accepted for
        FaceDetector's signature and not used here (SCRFD has no pyramid; ``choose`` applies
        the minimum)."""
        found = self.detect_at(images, self.input_size)
        if self.retry_size is not None and self.retry_size != self.input_size:
            empty = [k for k, f in enumerate(found) if not f]
            if empty:
                again = self.detect_at([images[k] for k in empty], self.retry_size)
                for k, f in zip(empty, again, strict=True):
                    found[k] = f
        return found

    def detect_at(self, images: Sequence[np.ndarray], size: int) -> list[list[Detection]]:
        """All faces of each image with its long side resized to ``size``. Images whose canvases
        have the same size share onnxruntime calls (up to ``max_batch`` at a time)."""
        out: list[list[Detection] | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            img = np.asarray(img)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"image {i}: expected HxWx3 uint8 RGB, got {img.shape} {img.dtype}")
            h, w = img.shape[:2]
            s = size / max(h, w)
            groups.setdefault((max(1, round(h * s)), max(1, round(w * s))), []).append(i)
        for (nh, nw), idx in groups.items():
            ch, cw = _round_up(nh), _round_up(nw)
            for start in range(0, len(idx), self.max_batch):
                part = idx[start:start + self.max_batch]
                canvas = np.full((len(part), ch, cw, 3), MEAN, np.float32)
                for j, i in enumerate(part):
                    canvas[j, :nh, :nw] = _resize(np.asarray(images[i]), nh, nw)
                found = decode(self._run(canvas), self.score_threshold, self.iou_threshold)
                for i, (boxes, scores, kps) in zip(part, found, strict=True):
                    sy, sx = nh / images[i].shape[0], nw / images[i].shape[1]
                    # canvas -> image pixel-index coordinates (pixel centres at integers)
                    boxes[:, 0::2] = (boxes[:, 0::2] + 0.5) / sx - 0.5
                    boxes[:, 1::2] = (boxes[:, 1::2] + 0.5) / sy - 0.5
                    kps[..., 0] = (kps[..., 0] + 0.5) / sx - 0.5
                    kps[..., 1] = (kps[..., 1] + 0.5) / sy - 0.5
                    out[i] = [Detection(boxes[k].copy(), float(scores[k]), kps[k].copy())
                              for k in range(len(boxes))]
        return out  # type: ignore[return-value]

    def _second_look(self, img: np.ndarray) -> list[Detection]:
        """None: :meth:`detect` already looks again at ``retry_size``."""
        return []


def _input_name(path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)
