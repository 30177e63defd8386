"""KeypointRCNN training loop with per-epoch checkpoints that a later run resumes.

Decisions:
- Optimiser AdamW (weight decay 1e-4), StepLR (x0.1 after 70% of the epochs), gradient norm
  clipped at 10: a random-init or freshly re-headed model otherwise spikes early. Learning rate
  1e-4 for the ResNet (torchvision's fine-tuning scale) and 5e-4 for the MobileFaceNet, whose
  FPN and heads start from random and are ~20x smaller.
- Mixed precision (fp16 autocast + GradScaler) only on CUDA: CPU autocast is bf16 and slower on
  most CPUs.
- ``MODEL/checkpoint.pt`` is written after every epoch (tmp + rename) with model, optimiser,
  scheduler, scaler, epoch, config, history and the image paths trained on; a later ``train``
  with the same ``--out`` resumes from it and the epoch counter continues (backbone, classes,
  image size and hold-out must match; the checkpoint's optimiser state, hence its learning
  rate, wins over ``--lr``). Everything in it is tensors and plain containers, so it is read
  with ``torch.load(weights_only=True)``.
- ``--image-size`` is the model transform's ``min_size`` (``max_size`` = 1333/800 of it).
  Defaults: 512 for the ResNet (the datasets' images are 178-250 px, so torchvision's 800 spends
  most compute upsampling); 256 for the MobileFaceNet, whose faces then span ~100-150 px, more
  than the 112 px it was trained on.
- Sampled RoIs per training image 128 for the ResNet, 64 for the MobileFaceNet (torchvision: 512,
  a quarter of them positive): these images hold one face and every positive RoI runs the
  keypoint head. ``--rois-per-image`` lowers it further for CPU smoke tests.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from faceprobe.embed.backbones.base import resolve_device
from faceprobe.embed.store import Store
from faceprobe.errors import ConfigError, WeightsError
from faceprobe.files import file_sha256
from faceprobe.landmarks.rcnn_data import LandmarkDataset, collate, samples_from_store
from faceprobe.landmarks.rcnn_model import (
    CLASSES,
    build_model,
    check_backbone,
    init_from_weights,
    load_state,
    resolve_weights,
    weights_kind,
)

CHECKPOINT = "checkpoint.pt"
DEFAULTS = {
    "backbone": "mobilefacenet", "epochs": 10, "batch_size": 4, "weight_decay": 1e-4,
    "lr_gamma": 0.1, "classes": "face", "weights": "pretrained", "seed": 0, "clip_grad": 10.0,
    "proposals": 300, "holdout": 0.2,
}
BACKBONE_DEFAULTS = {
    "mobilefacenet": {"lr": 5e-4, "image_size": 256, "rois_per_image": 64},
    "resnet50": {"lr": 1e-4, "image_size": 512, "rois_per_image": 128},
}
Log = Callable[[str], None]


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def load_checkpoint(path: Path) -> dict:
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
          rois_per_image: int | None = None, backbone: str | None = None,
          holdout: float | None = None,
          workers: int | None = None, seed: int | None = None, log: Log | None = stderr_log
          ) -> dict:
    """Train (or resume training) a KeypointRCNN on the store's ground-truth landmarks.

    Arguments left None take the checkpoint's value when resuming, else ``DEFAULTS``.
    ``max_iters`` caps the iterations of each epoch. Returns a summary with the history.
    """
    log = log or (lambda _m: None)
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    given = {"classes": classes, "image_size": image_size, "batch_size": batch_size, "lr": lr,
             "weights": weights, "seed": seed, "rois_per_image": rois_per_image,
             "backbone": backbone, "holdout": holdout}
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    if ckpt is not None:
        config = {"backbone": "resnet50", "holdout": 0.0, **ckpt["config"]}  # older checkpoints
        for key in ("backbone", "classes", "image_size", "holdout", "seed"):
            if given[key] is not None and given[key] != config[key]:
                raise ConfigError(f"{out} was trained with --{key.replace('_', '-')} "
                                  f"{config[key]}; resume with the same value or use another --out")
        for key in ("weights", "lr"):  # the checkpoint's weights and optimiser state win
            if given[key] is not None and given[key] != config[key]:
                log(f"resuming from {ckpt_path}: --{key} {given[key]} ignored")
        for key in ("batch_size", "rois_per_image"):
            if given[key] is not None:
                config[key] = given[key]
        config["epochs"] = int(epochs if epochs is not None else config["epochs"])
    else:
        config = dict(DEFAULTS)
        config["backbone"] = check_backbone(backbone or DEFAULTS["backbone"])
        config.update(BACKBONE_DEFAULTS[config["backbone"]])
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
    samples, skipped = samples_from_store(store, config["classes"], splits,
                                          float(config["holdout"]), int(config["seed"]))
    # every image any epoch saw, so a resumed run on other rows cannot hide earlier ones
    trained_paths = sorted({s.path for s in samples} | set((ckpt or {}).get("trained_paths") or ()))

    init_info = state = None
    torch.manual_seed(int(config["seed"]))  # heads that no weights file covers start the same
    if ckpt is None:
        wpath = resolve_weights(config["weights"], config["backbone"])
        if wpath is not None:
            state = load_state(wpath)
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
            f"{len(init_info['reinitialised'])} not used or re-initialised for 5 points / "
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
    log(f"training a {config['backbone']} KeypointRCNN on {len(samples)} faces ({skipped}) on "
        f"{dev}, image size {config['image_size']}, classes {config['classes']}")
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
                      "epoch": epoch + 1, "config": config, "history": history,
                      "trained_paths": trained_paths}, ckpt_path)
        _write_json(out / "history.json", {"config": config, "history": history})
        log(f"epoch {epoch + 1}/{config['epochs']}: loss {entry.get('loss', float('nan')):.4f} "
            f"({iters} iterations, {entry['seconds']} s); checkpoint {ckpt_path}")
    return {"model": str(out), "checkpoint": str(ckpt_path),
            "epochs_done": history[-1]["epoch"] if history else start,
            "faces": len(samples), "skipped": skipped,
            "device": str(dev), "init": init_info, "config": config, "history": history}

