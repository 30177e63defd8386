"""KeypointRCNN prediction into a store: ``landmarks predict``. The model is described in
``rcnn_model``, its data in ``rcnn_data``, its training in ``rcnn_train``.

Decisions:
- Prediction lowers the box score threshold to 0: every store row is a face, so the best box is
  kept whatever its score, and the score is written next to the points for the user to filter.
  The kept detection is the one overlapping the row's stored box most (a multi-face image has one
  row per face), else the highest-scoring one. Each image is run once per shard even when several
  rows (faces) share it. Only the ``max_detections`` (default 5) best boxes per image get
  keypoints: the keypoint head runs once per box, and torchvision's 100 would make CPU
  prediction ~20x slower for candidates that are never kept.
- 300 proposals at inference (torchvision: 1000): these images hold one face, and the box head on
  1000 proposals costs as much as the backbone.
- ``rcnn_trained`` marks the rows whose image the model trained on (1), did not (0) or, for a
  checkpoint older than that record, NaN (unknown): ``landmarks evaluate --source rcnn`` leaves
  the trained ones out.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from faceprobe.embed.backbones.base import resolve_device
from faceprobe.embed.store import Store
from faceprobe.errors import ConfigError, ImageError, StoreError, WeightsError
from faceprobe.files import file_sha256
from faceprobe.landmarks.rcnn_data import GENDER_OF_CLASS, to_tensor
from faceprobe.landmarks.rcnn_model import NUM_KEYPOINTS, build_model
from faceprobe.landmarks.rcnn_train import CHECKPOINT, Log, load_checkpoint, stderr_log


def choose_detection(boxes: np.ndarray, scores: np.ndarray, row_box: np.ndarray | None
                     ) -> int | None:
    """Index of the detection kept for a row: most overlap with the row's stored box (ties and
    no overlap at all fall back to the score), or the highest score when the row has no box."""
    if len(boxes) == 0:
        return None
    if row_box is not None and np.isfinite(row_box).all():
        from torchvision.ops import box_iou

        iou = box_iou(torch.as_tensor(np.asarray(boxes, np.float64)),
                      torch.as_tensor(np.asarray(row_box, np.float64))[None]).numpy()[:, 0]
        if iou.max() > 0:
            best = np.flatnonzero(iou >= iou.max() - 1e-9)
            return int(best[np.argmax(np.asarray(scores)[best])])
    return int(np.argmax(scores))


def checkpoint_path(model_dir: str | os.PathLike) -> Path:
    p = Path(model_dir)
    ckpt_path = p / CHECKPOINT if p.is_dir() else p
    if not ckpt_path.is_file():
        raise WeightsError(f"{ckpt_path} does not exist; train a model with "
                           "`faceprobe landmarks train STORE --out MODEL`")
    return ckpt_path


def load_model(model_dir: str | os.PathLike, device: str = "auto", proposals: int | None = None
               ) -> tuple[torch.nn.Module, dict, torch.device]:
    """The trained model of ``model_dir`` (its checkpoint), in eval mode on ``device``;
    ``proposals`` overrides the region proposals kept per image."""
    ckpt_path = checkpoint_path(model_dir)
    ckpt = load_checkpoint(ckpt_path)
    if not (isinstance(ckpt, dict) and "config" in ckpt and "model" in ckpt):
        raise WeightsError(f"{ckpt_path} is not a faceprobe landmarks checkpoint")
    config = dict(ckpt["config"])
    config["epoch"] = int(ckpt.get("epoch", 0))
    config["trained_paths"] = ckpt.get("trained_paths")
    if proposals is not None:
        config["proposals"] = int(proposals)
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise WeightsError(f"{ckpt_path} does not match its own config ({str(exc)[:200]})"
                           ) from None
    dev = resolve_device(device)
    model.to(dev).eval()
    config["checkpoint"] = str(ckpt_path)
    return model, config, dev


def trained_mask(paths, trained: list[str] | None) -> np.ndarray:
    """1 where a row's image was trained on, 0 where not, NaN when the model did not record it."""
    if trained is None:
        return np.full(len(paths), np.nan, np.float32)
    seen = set(trained)
    return np.array([str(p) in seen for p in paths], np.float32)


@torch.inference_mode()
def _run(model, images: list[np.ndarray], dev: torch.device) -> list[dict]:
    tensors = [to_tensor(im).to(dev) for im in images]
    with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
        outs = model(tensors)
    return [{k: v.float().cpu().numpy() for k, v in o.items()} for o in outs]


def predict(model_dir: str | os.PathLike, store_path: str | os.PathLike, *, batch_size: int = 8,
            device: str = "auto", overwrite: bool = False, max_detections: int = 5,
            proposals: int | None = None, log: Log | None = stderr_log) -> dict:
    """Predict points for every row of the store; write ``landmarks_rcnn`` (n,5,2),
    ``landmarks_rcnn_score`` (n,5), ``rcnn_box`` (n,4), ``rcnn_box_score`` (n,) and, for a gender
    model, ``rcnn_gender`` (codes into the store's gender vocabulary) as extra fields, one file
    per shard. Shards already written by this model are skipped (resume)."""
    from faceprobe.embed.images import load_image
    from faceprobe.landmarks.extra import (
        extra_file_name,
        is_current,
        read_extra_attrs,
        write_extra,
    )

    log = log or (lambda _m: None)
    if batch_size < 1 or max_detections < 1 or (proposals is not None and proposals < 1):
        raise ConfigError("--batch-size, --max-detections and --proposals must be at least 1")
    store = Store(store_path)
    fingerprint = file_sha256(checkpoint_path(model_dir))
    summary = {"shards": 0, "written": 0, "skipped": 0, "rows": 0, "predicted": 0,
               "no_detection": 0, "unreadable": 0, "device": str(resolve_device(device))}
    todo = []
    for shard in store.shards():
        summary["shards"] += 1
        if is_current(store.path, "landmarks_rcnn", shard) and not overwrite:
            if read_extra_attrs(store.path, "landmarks_rcnn", shard).get("model_sha256") \
                    != fingerprint:
                raise StoreError(f"store {store.path} shard {shard} already has landmarks_rcnn "
                                 "from another model; pass --overwrite to replace them")
            summary["skipped"] += 1
        else:
            todo.append(shard)
    summary["model"] = str(checkpoint_path(model_dir))
    if not todo:
        return summary
    model, config, dev = load_model(model_dir, device, proposals)
    trained = config.pop("trained_paths")
    model.roi_heads.score_thresh = 0.0
    model.roi_heads.detections_per_img = int(max_detections)
    gender = config["classes"] == "gender"
    gvocab = store.vocabularies.get("gender") or ["male", "female"]
    attrs = {"model": config["checkpoint"], "model_sha256": fingerprint,
             "epoch": config["epoch"], "classes": config["classes"],
             "image_size": config["image_size"], "gender_vocabulary": gvocab}
    correct = labelled = 0
    tasks = ["gender"] if gender and "gender" in store.vocabularies else []
    for shard in todo:
        t0 = time.time()
        d = store.read_shard(shard, features=(), tasks=tasks)
        n = len(d)
        pts = np.full((n, NUM_KEYPOINTS, 2), np.nan, np.float32)
        pscore = np.full((n, NUM_KEYPOINTS), np.nan, np.float32)
        box = np.full((n, 4), np.nan, np.float32)
        bscore = np.full(n, np.nan, np.float32)
        gcode = np.full(n, np.nan, np.float32)
        by_path: dict[str, list[int]] = {}
        for i, p in enumerate(d.path):
            by_path.setdefault(str(p), []).append(i)
        paths = list(by_path)
        for b in range(0, len(paths), batch_size):
            chunk, images = [], []
            for p in paths[b:b + batch_size]:
                try:
                    images.append(load_image(p))
                    chunk.append(p)
                except ImageError:
                    summary["unreadable"] += len(by_path[p])
            if not images:
                continue
            for p, o in zip(chunk, _run(model, images, dev), strict=True):
                for i in by_path[p]:
                    j = choose_detection(o["boxes"], o["scores"], d.box[i])
                    if j is None:
                        summary["no_detection"] += 1
                        continue
                    pts[i] = o["keypoints"][j, :, :2]
                    pscore[i] = o["keypoints_scores"][j]
                    box[i] = o["boxes"][j]
                    bscore[i] = o["scores"][j]
                    name = GENDER_OF_CLASS.get(int(o["labels"][j]))
                    if gender and name in gvocab:
                        gcode[i] = gvocab.index(name)
        summary["rows"] += n
        summary["predicted"] += int(np.isfinite(pts).all(axis=(1, 2)).sum())
        if gender and tasks:
            have = (d.y["gender"] >= 0) & np.isfinite(gcode)
            labelled += int(have.sum())
            correct += int((d.y["gender"][have] == gcode[have]).sum())
        write_extra(store.path, "landmarks_rcnn_score", shard, pscore, attrs)
        write_extra(store.path, "rcnn_box", shard, box, attrs)
        write_extra(store.path, "rcnn_box_score", shard, bscore, attrs)
        write_extra(store.path, "rcnn_trained", shard, trained_mask(d.path, trained), attrs)
        if gender:
            write_extra(store.path, "rcnn_gender", shard, gcode, attrs)
        else:  # a gender model's earlier answer would otherwise outlive its points
            (store.path / extra_file_name("rcnn_gender", shard)).unlink(missing_ok=True)
        # written last: its presence marks the shard done for a resumed run
        write_extra(store.path, "landmarks_rcnn", shard, pts, attrs)
        summary["written"] += 1
        log(f"shard {shard}: {n} rows in {time.time() - t0:.1f} s")
    if gender:
        summary["gender_accuracy"] = correct / labelled if labelled else None
        summary["gender_evaluated"] = labelled
    return summary
