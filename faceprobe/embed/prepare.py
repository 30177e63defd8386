"""The per-record steps both embed engines share (the local DataLoader and Ray Data): decode an
image, detect and choose its faces, align each backbone's chip, compute the extra feature groups,
and embed in a worker what a worker embeds. Everything a worker needs travels in one small,
picklable :class:`PrepareConfig`.

Decisions:
- Nothing about one image can stop the run: every failure becomes a row with a status and a
  one-line message (``missing``, ``unreadable``, ``no_face``, ``face_too_small``, ``error``).
- One detector and one copy of each worker-run backbone per process. The worker-run backbones
  (dlib) are built before the workers fork (:func:`preload_for_workers`) so each inherits them;
  a detector's networks load lazily in each worker after the fork: building MTCNN's nets before
  the fork measured slower (300 LFW images, FaceNet backbone, 2 cores: 17 s against 14 s whole
  process), the two workers importing facenet-pytorch side by side instead of the main process
  alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from faceprobe.data.records import FaceRecord
from faceprobe.embed import features as extra_features
from faceprobe.embed.align import align_face
from faceprobe.embed.backbones import Backbone, BackboneConfig, create_backbone
from faceprobe.embed.detect import FaceDetector
from faceprobe.embed.detectors import get_detector
from faceprobe.embed.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from faceprobe.errors import ConfigError
from faceprobe.threads import torch_threads

# detect: the detector's 5 points; dataset: the record's own; dlib68: five points from dlib's
# 68-point predictor on its own HOG box around the detected face
LANDMARK_MODES = ("detect", "dataset", "dlib68")


@dataclass(frozen=True)
class PrepareConfig:
    """Everything a worker needs to turn records into chips (picklable, small)."""

    backbone: BackboneConfig
    multi_face: str = "central"
    no_face: str = "skip"
    min_face_size: float | None = None
    landmarks: str = "detect"
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    detector_device: str = "cpu"
    extra_features: tuple = ()  # groups of faceprobe.embed.features computed next to alignment
    others: tuple = ()  # BackboneConfigs of the further backbones, each aligned on its own
    # (index, name, weights file, precision, groups) of backbones the workers run themselves
    in_workers: tuple = ()
    detector: str = "mtcnn"  # a named detector (faceprobe.embed.detectors), never auto
    detector_weights: str | None = None  # SCRFD's ONNX file, resolved

    def describe(self) -> str:
        b = self.backbone
        how = f"{b.alignment} {b.input_size}px"
        how += f" margin={b.margin:g}" if b.alignment == "crop" else " template"
        ms = "auto" if self.min_face_size is None else f"{self.min_face_size:g}"
        det = "" if self.detector == "mtcnn" else f" detector={self.detector}"
        return (f"{how}; landmarks={self.landmarks} multi_face={self.multi_face} "
                f"no_face={self.no_face} min_face_size={ms}{det}")


ALIGNMENTS = ("similarity", "crop", "dlib5")


def with_alignment(config: BackboneConfig, align: str) -> BackboneConfig:
    """``config`` with another alignment. dlib5 needs dlib's chip geometry (dlib.resnet only);
    similarity needs a template (FaceNet's is ArcFace's, scaled to 160 px with a margin)."""
    if align not in ALIGNMENTS:
        raise ConfigError(f"--align {align!r}; choose one of {', '.join(ALIGNMENTS)}")
    if align == "dlib5" and config.name != "dlib.resnet":
        raise ConfigError("--align dlib5 cuts dlib's own 150x150 chip; it is for dlib.resnet only")
    template = config.template
    if align == "similarity" and template is None:
        from faceprobe.embed.align import ARCFACE_TEMPLATE, scaled_template

        template = tuple(map(tuple, scaled_template(ARCFACE_TEMPLATE, 112, config.input_size,
                                                    0.1).tolist()))
    return dataclasses.replace(config, alignment=align, template=template)


def detector_for(cfg: PrepareConfig) -> FaceDetector:
    return get_detector(cfg.detector, cfg.detector_weights, cfg.detector_device,
                        cfg.min_face_size, cfg.multi_face, cfg.no_face)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def base_row(rec: FaceRecord) -> dict:
    lm = None if rec.landmarks is None else np.asarray(rec.landmarks, np.float32).reshape(5, 2)
    return {
        "path": rec.path, "dataset": rec.dataset, "split": rec.split, "identity": rec.identity,
        "face": 0, "labels": dict(rec.labels), "status": "error", "error": "", "policy": "",
        "features": None, "box": None, "score": None, "landmarks_detected": None,
        "landmarks_dataset": lm, "chip": None,
    }


def decode_records(records: Sequence[FaceRecord], cfg: PrepareConfig) -> list[tuple[dict, object]]:
    """(row, image or None) per record; unreadable images become failed rows here."""
    out = []
    for rec in records:
        row = base_row(rec)
        img = None
        try:
            img = load_image(rec.path, cfg.max_pixels)
        except ImageLoadError as exc:
            row["status"], row["error"] = exc.status, str(exc)
        except Exception as exc:  # noqa: BLE001 - one image never stops the run
            row["status"], row["error"] = "error", f"{rec.path}: {one_line(exc)}"
        out.append((row, img))
    return out


@contextlib.contextmanager
def _detection_threads(detector: FaceDetector):
    """MTCNN on a CPU runs with one intra-op thread wherever it runs (a worker, the main process
    scoring images, the web app): its points then come out bitwise the same everywhere, so a
    photo scored directly gets the chips its store row got (with two threads the float sums
    differ in the last bits, which moved MobileFaceNet embeddings by ~1e-4)."""
    if detector.device.type != "cpu":
        yield
        return
    with torch_threads(1):
        yield


def detect_align(decoded: list[tuple[dict, object]], cfg: PrepareConfig,
                 detector: FaceDetector) -> list[dict]:
    """Rows (one per chosen face; failed images keep their single row) with ``chip`` set."""
    todo = [(row, img) for row, img in decoded if img is not None]
    results = {}
    if todo:
        use_lm = cfg.landmarks == "dataset"
        imgs = [img for _, img in todo]
        lms = [row["landmarks_dataset"] if use_lm else None for row, _ in todo]
        try:
            with _detection_threads(detector):
                found = detector.locate(imgs, lms)
        except Exception:  # noqa: BLE001 - retry one by one so only the culprit fails
            found = []
            for img, lm in zip(imgs, lms, strict=True):
                try:
                    found.append(detector.locate([img], [lm])[0])
                except Exception as exc:  # noqa: BLE001
                    found.append(exc)
        for (row, _), res in zip(todo, found, strict=True):
            results[id(row)] = res
    rows: list[dict] = []
    for row, img in decoded:
        res = results.get(id(row))
        if res is None:
            rows.append(row)
            continue
        if isinstance(res, BaseException):
            row["status"], row["error"] = "error", f"{row['path']}: detection failed: {one_line(res)}"
            rows.append(row)
            continue
        row["policy"] = res.policy
        if not res.faces:
            row["status"], row["error"] = res.status, f"{row['path']}: {res.error}"
            rows.append(row)
            continue
        for k, face in enumerate(res.faces):
            r = dict(row) if k else row
            r["face"], r["status"], r["error"] = k, res.status, ""
            r["box"], r["score"] = face.box, face.score
            if cfg.landmarks == "dlib68" and res.status != "dataset_landmarks":
                try:
                    face = dataclasses.replace(
                        face, landmarks=extra_features.dlib68_five(img, face.box))
                except Exception as exc:  # noqa: BLE001 - this face fails, not the image
                    r["status"] = "error"
                    r["error"] = f"{row['path']}: dlib 68-point landmarks failed: {one_line(exc)}"
                    rows.append(r)
                    continue
            if res.status != "dataset_landmarks":
                r["landmarks_detected"] = face.landmarks
            try:
                r["chip"] = align_face(img, cfg.backbone, face.landmarks, face.box)
                r["chips"] = [align_face(img, c, face.landmarks, face.box) for c in cfg.others]
            except Exception as exc:  # noqa: BLE001
                r["status"], r["error"] = "error", f"{row['path']}: alignment failed: {one_line(exc)}"
            else:
                if cfg.extra_features:
                    _add_extra(r, img, cfg, face)
            rows.append(r)
    return rows


def _add_extra(r: dict, img, cfg: PrepareConfig, face) -> None:
    """The extra feature groups of one aligned face, in ``r["extra"]`` (failing the row if they
    cannot be computed: a store never holds a usable row with a group missing)."""
    try:
        r["extra"] = extra_features.compute(
            cfg.extra_features, img, r, cfg.backbone, chip=r["chip"], used_box=face.box,
            used_landmarks=face.landmarks)
    except Exception as exc:  # noqa: BLE001
        r["status"], r["error"] = "error", f"{r['path']}: features failed: {one_line(exc)}"
        r["chip"] = None


_WORKER_BACKBONES: dict[tuple, Backbone] = {}


def chip_of(row: dict, k: int) -> np.ndarray:
    """Backbone ``k``'s chip of a row: the first backbone's is ``chip``, the others' ``chips``."""
    return row["chip"] if k == 0 else row["chips"][k - 1]


def worker_embed(rows: list[dict], cfg: PrepareConfig) -> list[dict]:
    """Run the backbones that are cheaper in the workers (``in_workers``) on this chunk's chips;
    their groups wait in ``row["pre"]`` for the main process."""
    todo = [r for r in rows if r.get("chip") is not None]
    for k, name, weights, precision, groups in cfg.in_workers if todo else ():
        key = (name, weights, precision)
        try:
            if key not in _WORKER_BACKBONES:  # one per worker process, built after the fork
                _WORKER_BACKBONES[key] = create_backbone(name, weights=weights, device="cpu",
                                                         precision=precision)
            chips = np.stack([chip_of(r, k) for r in todo])
            feats = _WORKER_BACKBONES[key].features(chips, groups, batch_size=len(todo))
        except Exception as exc:  # noqa: BLE001 - the chunk's faces fail, not the run
            for r in todo:
                r["status"], r["error"] = "error", f"{r['path']}: embedding failed: {one_line(exc)}"
                r["chip"] = r["chips"] = None
            return rows
        for i, r in enumerate(todo):
            pre = r.setdefault("pre", {})
            for g in groups:
                pre[g if k == 0 else name] = feats[g][i]
    return rows


def preload_for_workers(cfg: PrepareConfig, backbones: Sequence[Backbone]) -> None:
    """Build the detector object and the backbones the workers run here, before the workers
    fork, so each inherits them instead of loading models itself (the detector's networks stay
    lazy: see the module's notes)."""
    detector_for(cfg)
    for k, name, weights, precision, _ in cfg.in_workers:
        _WORKER_BACKBONES.setdefault((name, weights, precision), backbones[k])


def prepare_records(records: Sequence[FaceRecord], cfg: PrepareConfig, detect: bool = True):
    decoded = decode_records(records, cfg)
    if not detect:
        return decoded
    return worker_embed(detect_align(decoded, cfg, detector_for(cfg)), cfg)


