"""KeypointRCNN (torchvision ``keypointrcnn_resnet50_fpn``, 5 keypoints): train on a store's
ground-truth landmarks, predict into a store extra field.

Decisions:
- Classes: ``face`` = background + face; ``gender`` = background + woman + man, so one model
  detects, localises the 5 points and predicts gender. In gender mode rows without a gender label
  are left out of training (a box with an unknown class cannot be a target).
- Training rows: every row with finite ``landmarks_dataset`` whose image can be read (failed
  detections included: the ground truth does not depend on the detector). Target box: the row's
  detected box when it contains all 5 points, else a box around the points (``box_from_points``),
  because a detector box that misses the points belongs to another face or is a fallback.
- Pixel convention: continuous coordinates, pixel ``i`` covers ``[i, i+1)``, so an image of width
  W spans ``[0, W]`` and a horizontal flip maps ``x -> W - x`` (torchvision's references do the
  same); boxes become ``(W - x2, y1, W - x1, y2)``. A flip also swaps the left/right names
  (``FLIP_PERM``), since LANDMARK_NAMES are image-left first: after a flip ``left_eye`` is again
  the eye on the image's left.
- Optimiser AdamW (lr 1e-4, weight decay 1e-4), StepLR (x0.1 after 70% of the epochs), gradient
  norm clipped at 10: a random-init or freshly re-headed model otherwise spikes early.
- Mixed precision (fp16 autocast + GradScaler) only on CUDA: CPU autocast is bf16 and slower on
  most CPUs.
- ``MODEL/checkpoint.pt`` is written after every epoch (tmp + rename) with model, optimiser,
  scheduler, scaler, epoch, config and history; a later ``train`` with the same ``--out``
  resumes from it and the epoch counter continues (classes and image size must match; the
  checkpoint's optimiser state, hence its learning rate, wins over ``--lr``). Everything in it
  is tensors and plain containers, so it is read with ``torch.load(weights_only=True)``.
- ``--image-size`` is the model transform's ``min_size`` (``max_size`` = 1333/800 of it). Default
  512: the datasets' images are 178-250 px, so torchvision's 800 spends most compute upsampling.
- Weights are never downloaded: ``coco`` / ``imagenet`` are looked up as torchvision's file names
  in ``$FACEPROBE_HOME/weights`` (default ``~/.faceprobe/weights``) and torch's checkpoint cache
  (``$TORCH_HOME/hub/checkpoints``); a missing file is a WeightsError naming it and both places.
  With pretrained weights the backbone's batch norm is frozen and its first two stages stay fixed
  (torchvision's defaults); from scratch everything trains with ordinary batch norm.
- Sampled RoIs per training image 128 (torchvision: 512, a quarter of them positive) and 300
  proposals at inference (torchvision: 1000): these images hold one face, every positive RoI runs
  the keypoint head (~7 GFLOP forward each), and the box head on 1000 proposals costs as much as
  the backbone. ``--rois-per-image`` lowers it further for CPU smoke tests.
- Prediction lowers the box score threshold to 0: every store row is a face, so the best box is
  kept whatever its score, and the score is written next to the points for the user to filter.
  The kept detection is the one overlapping the row's stored box most (a multi-face image has one
  row per face), else the highest-scoring one. Each image is run once per shard even when several
  rows (faces) share it. Only the ``max_detections`` (default 5) best boxes per image get
  keypoints: the keypoint head costs ~7 GFLOP per box, and torchvision's 100 would make CPU
  prediction ~20x slower for candidates that are never kept.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from faceprobe.embed.store import Store
from faceprobe.errors import ConfigError, ImageError, StoreError, WeightsError
from faceprobe.files import file_sha256

CLASSES = {"face": ("background", "face"), "gender": ("background", "woman", "man")}
# class index -> store gender vocabulary name
_GENDER_OF_CLASS = {1: "female", 2: "male"}
FLIP_PERM = (1, 0, 2, 4, 3)  # left_eye<->right_eye, nose, mouth_left<->mouth_right
NUM_KEYPOINTS = 5
CHECKPOINT = "checkpoint.pt"
WEIGHT_FILES = {
    "coco": ("keypointrcnn_resnet50_fpn_coco-fc266e95.pth",
             "keypointrcnn_resnet50_fpn_coco-9f466800.pth"),
    "imagenet": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
}
DEFAULTS = {
    "epochs": 10, "batch_size": 4, "lr": 1e-4, "weight_decay": 1e-4, "lr_gamma": 0.1,
    "image_size": 512, "classes": "face", "weights": "coco", "seed": 0, "clip_grad": 10.0,
    "rois_per_image": 128, "proposals": 300,
}
_UNREADABLE = ("missing", "unreadable")
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- geometry and augmentation


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


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    x1 = np.maximum(boxes[:, 0], box[0])
    y1 = np.maximum(boxes[:, 1], box[1])
    x2 = np.minimum(boxes[:, 2], box[2])
    y2 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    a = (box[2] - box[0]) * (box[3] - box[1])
    return inter / np.maximum(area + a - inter, 1e-9)


def choose_detection(boxes: np.ndarray, scores: np.ndarray, row_box: np.ndarray | None
                     ) -> int | None:
    """Index of the detection kept for a row: most overlap with the row's stored box (ties and
    no overlap at all fall back to the score), or the highest score when the row has no box."""
    if len(boxes) == 0:
        return None
    if row_box is not None and np.isfinite(row_box).all():
        iou = _iou(np.asarray(boxes, dtype=np.float64), np.asarray(row_box, dtype=np.float64))
        if iou.max() > 0:
            best = np.flatnonzero(iou >= iou.max() - 1e-9)
            return int(best[np.argmax(np.asarray(scores)[best])])
    return int(np.argmax(scores))


# ---------------------------------------------------------------- weights and model


def weights_dirs() -> list[Path]:
    home = Path(os.environ.get("FACEPROBE_HOME") or Path.home() / ".faceprobe")
    return [home / "weights", Path(torch.hub.get_dir()) / "checkpoints"]


def resolve_weights(spec: str) -> Path | None:
    """``none`` -> None; ``coco``/``imagenet`` -> the cached torchvision file; else a file path."""
    if spec == "none":
        return None
    if spec in WEIGHT_FILES:
        for d in weights_dirs():
            for name in WEIGHT_FILES[spec]:
                if (d / name).is_file():
                    return d / name
        where = " or ".join(str(d) for d in weights_dirs())
        raise WeightsError(
            f"{spec} weights for KeypointRCNN not found: put {WEIGHT_FILES[spec][0]} in {where} "
            "(nothing is downloaded), pass --weights FILE, or use --weights none (random init)")
    p = Path(spec).expanduser()
    if not p.is_file():
        raise WeightsError(f"weights file {p} does not exist; pass coco, imagenet, none or an "
                           "existing .pth/.pt file")
    return p


def _max_size(image_size: int) -> int:
    return max(int(image_size), int(round(image_size * 1333 / 800)))


def build_model(config: dict) -> torch.nn.Module:
    """The architecture described by ``config`` (classes, image_size, pretrained), untrained."""
    from torchvision.models import resnet50
    from torchvision.models.detection import KeypointRCNN
    from torchvision.models.detection._utils import overwrite_eps
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    pretrained = bool(config.get("pretrained"))
    norm = FrozenBatchNorm2d if pretrained else torch.nn.BatchNorm2d
    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=norm),
                                     3 if pretrained else 5)
    size = int(config["image_size"])
    model = KeypointRCNN(backbone, num_classes=len(CLASSES[config["classes"]]),
                         num_keypoints=NUM_KEYPOINTS, min_size=size, max_size=_max_size(size),
                         box_batch_size_per_image=int(config.get("rois_per_image", 512)),
                         rpn_post_nms_top_n_test=int(config.get("proposals", 1000)))
    if pretrained and config.get("bn_eps") is not None:
        overwrite_eps(model, float(config["bn_eps"]))
    return model


def _load_state(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or non-tensor file
        raise WeightsError(f"{path} is not a loadable torch weights file "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        return obj["model"]  # a faceprobe checkpoint: fine-tune from it
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds no state dict")
    return obj


def weights_kind(state: dict) -> str:
    keys = list(state)
    if any(k.startswith("backbone.body.") for k in keys):
        return "detection"
    if "conv1.weight" in state and any(k.startswith("layer4.") for k in keys):
        return "resnet50"
    raise WeightsError("weights are neither a KeypointRCNN/detection state dict nor a ResNet-50 "
                       "classification one")


def init_from_weights(model: torch.nn.Module, state: dict, path: Path) -> dict:
    """Load what fits from ``state`` (read from ``path``): a detection checkpoint everywhere
    except the layers whose shape differs (class count, 17 COCO keypoints -> 5), a ResNet-50 into
    the backbone."""
    kind = weights_kind(state)
    target = model if kind == "detection" else model.backbone.body
    own = target.state_dict()
    fit = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    body_keys = [k for k in own if (k.startswith("backbone.body.") or kind == "resnet50")
                 and not k.endswith("num_batches_tracked")]
    missing_body = [k for k in body_keys if k not in fit]
    if missing_body:
        raise WeightsError(f"{path} does not match a ResNet-50 backbone ({len(missing_body)} "
                           f"tensors missing or of another shape, e.g. {missing_body[0]})")
    target.load_state_dict(fit, strict=False)
    skipped = sorted(k for k in state if k not in fit and not k.startswith("fc."))
    return {"kind": kind, "loaded": len(fit), "reinitialised": skipped}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for but no CUDA GPU is available; use --device cpu")
    return dev




# ---------------------------------------------------------------- dataset


@dataclass(frozen=True)
class Sample:
    path: str
    box: np.ndarray  # (4,) x1 y1 x2 y2, image pixels (clipped to the image when loaded)
    points: np.ndarray  # (5, 2)
    label: int  # class index into CLASSES[classes]


def samples_from_store(store: Store, classes: str, splits: Sequence[str] | None = None
                       ) -> tuple[list[Sample], dict]:
    """Training samples of a store and the counts of rows left out, by reason."""
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
    skipped = {"no_landmarks": int((~has_pts).sum()),
               "unreadable": int((has_pts & unreadable).sum()), "no_gender": 0}
    out = []
    for i in np.flatnonzero(has_pts & ~unreadable):
        pts = d.landmarks_dataset[i].astype(np.float32)
        label = 1
        if classes == "gender":
            code = int(d.y["gender"][i])
            if code < 0:
                skipped["no_gender"] += 1
                continue
            name = store.vocabularies["gender"][code]
            label = {v: k for k, v in _GENDER_OF_CLASS.items()}.get(name, -1)
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
        image = _to_tensor(img)
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.tensor([s.label]),
                  "keypoints": torch.from_numpy(kps)}
        return image, target


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    if not img.flags.writeable:  # torch warns on read-only numpy memory
        img = img.copy()
    return torch.from_numpy(img).permute(2, 0, 1).float().div_(255)


def collate(batch):
    batch = [b for b in batch if b is not None]
    return [b[0] for b in batch], [b[1] for b in batch]


# ---------------------------------------------------------------- training


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise WeightsError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it "
                           "to start over") from None


def _make_optim(model, config):
    params = [p for p in model.parameters() if p.requires_grad]
    try:  # the fused kernel is ~3x faster on a CPU for these 59M parameters
        opt = torch.optim.AdamW(params, lr=config["lr"], weight_decay=config["weight_decay"],
                                fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(params, lr=config["lr"], weight_decay=config["weight_decay"])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=config["lr_step"],
                                            gamma=config["lr_gamma"])
    return opt, sched


def train(store_path: str | os.PathLike, out: str | os.PathLike, *, epochs: int | None = None,
          device: str = "auto", weights: str | None = None, classes: str | None = None,
          batch_size: int | None = None, lr: float | None = None, image_size: int | None = None,
          max_iters: int | None = None, splits: Sequence[str] | None = None,
          rois_per_image: int | None = None,
          workers: int | None = None, seed: int | None = None, log: Log | None = _stderr
          ) -> dict:
    """Train (or resume training) a KeypointRCNN on the store's ground-truth landmarks.

    Arguments left None take the checkpoint's value when resuming, else ``DEFAULTS``.
    ``max_iters`` caps the iterations of each epoch. Returns a summary with the history.
    """
    log = log or (lambda _m: None)
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    given = {"classes": classes, "image_size": image_size, "batch_size": batch_size, "lr": lr,
             "weights": weights, "seed": seed, "rois_per_image": rois_per_image}
    ckpt = _load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    if ckpt is not None:
        config = dict(ckpt["config"])
        for key in ("classes", "image_size"):
            if given[key] is not None and given[key] != config[key]:
                raise ConfigError(f"{out} was trained with --{key.replace('_', '-')} "
                                  f"{config[key]}; resume with the same value or use another --out")
        for key in ("weights", "lr"):  # the checkpoint's weights and optimiser state win
            if given[key] is not None and given[key] != config[key]:
                log(f"resuming from {ckpt_path}: --{key} {given[key]} ignored")
        for key in ("batch_size", "seed", "rois_per_image"):
            if given[key] is not None:
                config[key] = given[key]
        config["epochs"] = int(epochs if epochs is not None else config["epochs"])
    else:
        config = dict(DEFAULTS)
        config.update({k: v for k, v in given.items() if v is not None})
        if epochs is not None:
            config["epochs"] = int(epochs)
        config["lr_step"] = max(1, int(round(0.7 * config["epochs"])))
    if config["classes"] not in CLASSES:
        raise ConfigError(f"unknown --classes {config['classes']!r}; choose "
                          f"{' or '.join(CLASSES)}")
    for key in ("epochs", "batch_size", "image_size", "rois_per_image"):
        if int(config[key]) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1")
    if max_iters is not None and max_iters < 1:
        raise ConfigError("--max-iters must be at least 1")
    if not (config["lr"] > 0):
        raise ConfigError("--lr must be positive")
    dev = resolve_device(device)
    store = Store(store_path)
    samples, skipped = samples_from_store(store, config["classes"], splits)

    init_info = state = None
    torch.manual_seed(int(config["seed"]))  # heads that no weights file covers start the same
    if ckpt is None:
        wpath = resolve_weights(config["weights"])
        if wpath is not None:
            state = _load_state(wpath)
            kind = weights_kind(state)
            config["pretrained"] = True
            # torchvision's COCO keypoint weights were trained with frozen-BN eps 0
            config["bn_eps"] = 0.0 if kind == "detection" and "coco" in wpath.name else None
            config["weights_file"] = str(wpath)
            config["weights_sha256"] = file_sha256(wpath)
        else:
            config["pretrained"] = False
    model = build_model(config)
    if state is not None:
        init_info = init_from_weights(model, state, Path(config["weights_file"]))
        state = None
        log(f"initialised from {config['weights_file']} ({init_info['loaded']} tensors; "
            f"{len(init_info['reinitialised'])} re-initialised for 5 points / "
            f"{len(CLASSES[config['classes']])} classes)")
    model.to(dev)
    opt, sched = _make_optim(model, config)
    amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    history: list[dict] = []
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if amp and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start = int(ckpt["epoch"])
        history = list(ckpt.get("history", []))
        log(f"resuming {ckpt_path} after epoch {start}")
    config["store"] = str(store.path)
    config["gender_vocabulary"] = store.vocabularies.get("gender")
    out.mkdir(parents=True, exist_ok=True)
    if start >= config["epochs"]:
        log(f"{out} has already trained {start} epoch(s) of {config['epochs']}; nothing to do "
            "(raise --epochs to train further)")
    n_workers = (min(4, os.cpu_count() or 1) if dev.type == "cuda" else 0) \
        if workers is None else int(workers)
    dataset = LandmarkDataset(samples, train=True, seed=int(config["seed"]))
    log(f"training on {len(samples)} faces ({skipped}) on {dev}, image size "
        f"{config['image_size']}, classes {config['classes']}")
    for epoch in range(start, int(config["epochs"])):
        dataset.epoch = epoch
        gen = torch.Generator().manual_seed(int(config["seed"]) * 100003 + epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=int(config["batch_size"]), shuffle=True, generator=gen,
            num_workers=n_workers, collate_fn=collate, pin_memory=dev.type == "cuda",
            persistent_workers=False)
        model.train()
        t0 = time.time()
        sums: dict[str, float] = {}
        iters = 0
        for images, targets in loader:
            if max_iters is not None and iters >= max_iters:
                break
            if not images:
                continue
            images = [im.to(dev, non_blocking=True) for im in images]
            targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
                losses = model(images, targets)
                loss = sum(losses.values())
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise ConfigError(f"training diverged (loss {loss_value}) at epoch {epoch + 1} "
                                  f"iteration {iters + 1}; lower --lr (now {config['lr']})")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(config["clip_grad"]))
            scaler.step(opt)
            scaler.update()
            iters += 1
            sums["loss"] = sums.get("loss", 0.0) + loss_value
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if iters % 20 == 0:
                log(f"epoch {epoch + 1} iter {iters}: loss {sums['loss'] / iters:.4f}")
        sched.step()
        entry = {"epoch": epoch + 1, "iters": iters, "seconds": round(time.time() - t0, 2),
                 "lr": float(opt.param_groups[0]["lr"]),
                 **{k: v / max(iters, 1) for k, v in sums.items()}}
        history.append(entry)
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(),
                      "scaler": scaler.state_dict() if amp else {},
                      "epoch": epoch + 1, "config": config, "history": history}, ckpt_path)
        _write_json(out / "history.json", {"config": config, "history": history})
        log(f"epoch {epoch + 1}/{config['epochs']}: loss {entry.get('loss', float('nan')):.4f} "
            f"({iters} iterations, {entry['seconds']} s); checkpoint {ckpt_path}")
    return {"model": str(out), "checkpoint": str(ckpt_path),
            "epochs_done": history[-1]["epoch"] if history else start,
            "faces": len(samples), "skipped": skipped,
            "device": str(dev), "init": init_info, "config": config, "history": history}


# ---------------------------------------------------------------- prediction


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
    ckpt = _load_checkpoint(ckpt_path)
    if not (isinstance(ckpt, dict) and "config" in ckpt and "model" in ckpt):
        raise WeightsError(f"{ckpt_path} is not a faceprobe landmarks checkpoint")
    config = dict(ckpt["config"])
    config["epoch"] = int(ckpt.get("epoch", 0))
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


@torch.inference_mode()
def _run(model, images: list[np.ndarray], dev: torch.device) -> list[dict]:
    tensors = [_to_tensor(im).to(dev) for im in images]
    with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
        outs = model(tensors)
    return [{k: v.float().cpu().numpy() for k, v in o.items()} for o in outs]


def predict(model_dir: str | os.PathLike, store_path: str | os.PathLike, *, batch_size: int = 8,
            device: str = "auto", overwrite: bool = False, max_detections: int = 5,
            proposals: int | None = None, log: Log | None = _stderr) -> dict:
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
                    name = _GENDER_OF_CLASS.get(int(o["labels"][j]))
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
