"""Fine-tune foamliu's MobileFaceNet on your own identities with an ArcFace margin (resumable).

``finetune(chips, identities, weights=..., out=..., workdir=...)`` trains the backbone (initialised
from ``weights``, a state dict in foamliu's layout) together with an additive-angular-margin
classifier over the identities, and writes the best backbone to ``out`` as a plain state dict in
the same layout (``load_mobilefacenet(out)``, ``MobileFaceNetTorch(weights=out)``) plus
``out.meta.json`` (what it was trained from and how; :func:`~faceprobe.embed.backbones.
mobilefacenet_torch.meta_path`).

Decisions:
- Loss: ArcFace. Logits ``s * cos(theta_j)`` against the L2-normalised class weights, with
  ``cos(theta_y + m)`` for the true class (insightface's form: where ``theta_y + m`` would pass pi,
  ``cos(theta_y) - m sin(m)`` keeps the logit monotonic). Computed in fp32 outside autocast.
- The class weights start as the normalised mean pretrained embedding of each identity's training
  chips (weight imprinting), not at random: a random classifier's first gradients would tear into
  the pretrained backbone. The embedding of the classifier and the saved backbone are the same
  128-d vector (no extra layer).
- Split: see ``split_indices`` (:mod:`faceprobe.identity.finetune_checkpoint`). Every identity is
  a class.
- Validation metric: nearest class centre. Centres are the normalised mean embeddings of each
  identity's training chips (eval mode, no flip) under the current backbone; a validation chip is
  right when its nearest centre (cosine) is its identity. This scores the backbone, which is what
  is saved, not the margin layer. Ties in accuracy are broken by the mean cosine margin (true centre
  minus the best other). The pretrained backbone is scored first (epoch 0): ``out`` holds the best
  of epochs 0..E, so fine-tuning never returns something worse on validation than what it got.
- Early stopping: stop after ``patience`` epochs without a better validation score. Without a
  validation set (``val_fraction=0`` or no identity with 2 chips) every epoch runs and the last is
  kept.
- Optimiser: SGD, momentum 0.9, Nesterov, weight decay on conv/linear weights only (not BN, not
  biases); the margin layer learns at ``lr``, the pretrained backbone at ``lr * backbone_lr_scale``
  (0.1). The rate follows a cosine from full to 1 % over ``epochs``, a function of the global step
  (nothing to restore). Augmentation: random horizontal flip (p = 0.5).
- BatchNorm: running statistics are frozen (BN in eval mode, affine parameters still learn) when
  ``freeze_bn`` is true, by default when ``batch_size < 32``: small batches give noisy statistics
  that would overwrite the pretrained ones. A batch of one chip is merged into the one before it.
- Resumable: at the end of each epoch (and every ``checkpoint_every`` steps when > 0) the whole
  state goes to ``workdir/checkpoint.pt`` (what it holds, how it is written, when a workdir is
  refused: :mod:`faceprobe.identity.finetune_checkpoint`). Each epoch's order and flips come from
  ``(seed, epoch)``, so a run resumed mid-epoch sees the batches an uninterrupted run would.
- Precision ``'auto'``: fp32 on a CPU, bf16 autocast on CUDA when the GPU supports it (not
  measured here: no GPU). Measured on this machine (AMD EPYC, no avx512_bf16/AMX, 2 cores shared
  with other jobs, load 5-8; MobileFaceNet train step, batch 32, forward + backward + SGD, median
  of 3 steps after 1 warm-up, 1 intra-op thread, two rounds): fp32 1.72 s and 2.48 s per step,
  bf16 autocast 10.8 s and 19.4 s per step: bf16 is 6-8x slower here, so ``'auto'`` never picks it
  on a CPU. (With 2 threads and batch 8 under the same load: fp32 4.2-4.3 s, bf16 15.8 s.)
- Threads: ``threads=None`` keeps torch's intra-op setting. On this loaded 2-core machine one
  thread is far faster than two (batch 4 forward + backward: 0.39 s with 1 thread, 13.3 s with 2;
  batch 32 fp32 step 1.7-2.5 s vs 6.7 s): pass ``threads=1`` when the cores are shared.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from faceprobe.embed.backbones.base import resolve_device, to_model_input
from faceprobe.embed.backbones.mobilefacenet_torch import (
    load_mobilefacenet,
    meta_path,
    mobilefacenet_config,
)
from faceprobe.errors import ConfigError
from faceprobe.files import file_sha256
from faceprobe.identity.finetune_checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    _check_data,
    _cpu_state,
    _data_fingerprint,
    _load_checkpoint,
    _number,
    _rng_state,
    _save_checkpoint,
    _set_rng_state,
    _write_atomic,
    split_indices,
)
from faceprobe.threads import torch_threads

META_FORMAT = "faceprobe.finetune/1"
FINETUNE_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
EVAL_BATCH = 128


class ArcMargin(nn.Module):
    """Additive angular margin classifier: ``s * cos(theta_j)``, ``s * cos(theta_y + m)`` for the
    true class ``y``. ``weight`` (classes, dim) is normalised at every call."""

    def __init__(self, dim: int, classes: int, s: float = 32.0, m: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.s, self.m = float(s), float(m)
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th = math.cos(math.pi - m)  # theta + m passes pi beyond this cosine
        self.mm = math.sin(math.pi - m) * m

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(emb.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(emb).clamp(-1 + 1e-7, 1 - 1e-7)
        sin = torch.sqrt(1.0 - cos * cos)
        phi = cos * self.cos_m - sin * self.sin_m  # cos(theta + m)
        phi = torch.where(cos > self.th, phi, cos - self.mm)
        one_hot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return self.s * (one_hot * phi + (1.0 - one_hot) * cos)


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in FINETUNE_PRECISIONS:
        raise ConfigError(f"finetune: precision {precision!r}; choose one of "
                          f"{', '.join(FINETUNE_PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"  # measured slower on this machine's CPUs: see the module docstring
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("finetune: fp16 needs a CUDA device; use precision bf16 or fp32 on a CPU")
    return precision


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)



# --- training pieces -----------------------------------------------------------------------

def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.eval()


def _param_groups(model: nn.Module, margin: ArcMargin, lr: float, backbone_lr: float,
                  weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "lr": backbone_lr, "base_lr": backbone_lr, "weight_decay": weight_decay},
        {"params": no_decay, "lr": backbone_lr, "base_lr": backbone_lr, "weight_decay": 0.0},
        {"params": [margin.weight], "lr": lr, "base_lr": lr, "weight_decay": weight_decay},
    ]


def _cosine_factor(step: int, total: int, floor: float = 0.01) -> float:
    t = min(1.0, step / max(1, total))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def _batches(train: np.ndarray, batch_size: int, seed: int, epoch: int
             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Epoch ``epoch``'s batches of chip indices and flip flags, from (seed, epoch) alone."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = train[rng.permutation(len(train))]
    flips = rng.random(len(order)) < 0.5
    cuts = list(range(0, len(order), batch_size))
    if len(cuts) > 1 and len(order) - cuts[-1] == 1:  # a batch of 1 joins the previous one
        cuts.pop()
    bounds = cuts[1:] + [len(order)]
    return ([order[a:b] for a, b in zip(cuts, bounds, strict=True)],
            [flips[a:b] for a, b in zip(cuts, bounds, strict=True)])


def _to_input(chips: np.ndarray, config, device: torch.device, flips=None) -> torch.Tensor:
    if flips is not None and flips.any():
        chips = chips.copy()
        chips[flips] = chips[flips, :, ::-1]
    return torch.from_numpy(to_model_input(chips, config)).to(device, non_blocking=True)


@torch.no_grad()
def _embed(model: nn.Module, chips: np.ndarray, config, device, precision) -> torch.Tensor:
    model.eval()
    out = []
    for s in range(0, len(chips), EVAL_BATCH):
        with _autocast(precision, device):
            out.append(model(_to_input(chips[s:s + EVAL_BATCH], config, device)).float())
    return F.normalize(torch.cat(out), dim=1) if out else torch.zeros((0, 128), device=device)


def _centres(emb: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    sums = torch.zeros((classes, emb.shape[1]), device=emb.device).index_add_(0, labels, emb)
    return F.normalize(sums, dim=1)


def _validate(model, chips, labels, train, val, classes, config, device, precision
              ) -> tuple[dict, torch.Tensor]:
    """Nearest-centre accuracy and mean cosine margin of the val chips; also the centres."""
    idx = np.concatenate([train, val])
    emb = _embed(model, chips[idx], config, device, precision)
    lab = torch.from_numpy(labels[idx]).to(device)
    centres = _centres(emb[:len(train)], lab[:len(train)], classes)
    if not len(val):
        return {"accuracy": None, "margin": None}, centres
    sim = emb[len(train):] @ centres.T
    y = lab[len(train):]
    true = sim.gather(1, y[:, None])[:, 0]
    other = sim.scatter(1, y[:, None], -2.0).max(dim=1).values
    acc = float((sim.argmax(dim=1) == y).float().mean())
    return {"accuracy": acc, "margin": float((true - other).mean())}, centres


def _better(a: dict, b: dict | None) -> bool:
    if b is None:
        return True
    return (a["accuracy"], a["margin"]) > (b["accuracy"], b["margin"])


# --- the entry point -----------------------------------------------------------------------

def finetune(chips, identities, *, weights, out, workdir, epochs: int = 10,
             batch_size: int = 64, lr: float = 0.01, backbone_lr_scale: float = 0.1,
             s: float = 32.0, m: float = 0.5, val_fraction: float = 0.2, patience: int = 3,
             weight_decay: float = 5e-4, freeze_bn: bool | None = None,
             checkpoint_every: int = 0, device="cpu", precision: str = "auto", seed: int = 0,
             threads: int | None = None, show_progress: bool = True,
             log: Callable[[str], object] = print) -> dict:
    """Fine-tune MobileFaceNet (from ``weights``) with an ArcFace margin on ``identities``; write
    the best backbone to ``out`` (+ ``out.meta.json``); resume from ``workdir`` when it holds a
    checkpoint of the same run. Returns a summary dict (see the module docstring)."""
    t0 = time.perf_counter()
    epochs = _number("epochs", epochs, lo=1, integer=True)
    batch_size = _number("batch_size", batch_size, lo=2, integer=True,
                         hint="a batch needs 2 chips or more")
    lr = _number("lr", lr, lo=0, lo_open=True)
    backbone_lr_scale = _number("backbone_lr_scale", backbone_lr_scale, lo=0,
                                hint="0 freezes the backbone")
    s = _number("s", s, lo=0, lo_open=True, hint="the logit scale, typically 30-64")
    m = _number("m", m, lo=0, hi=math.pi / 2, hi_open=True,
                hint="the angular margin in radians, typically 0.5")
    val_fraction = _number("val_fraction", val_fraction, lo=0, hi=1, hi_open=True)
    patience = _number("patience", patience, lo=1, integer=True)
    weight_decay = _number("weight_decay", weight_decay, lo=0)
    checkpoint_every = _number("checkpoint_every", checkpoint_every, lo=0, integer=True,
                               hint="steps between mid-epoch checkpoints, 0 for none")
    seed = _number("seed", seed, integer=True)
    if freeze_bn is None:
        freeze_bn = batch_size < 32
    dev = resolve_device(device)
    precision = _resolve_precision(precision, dev)
    chips, labels, classes = _check_data(chips, identities)
    if workdir is None or out is None:
        raise ConfigError("finetune: out and workdir are required (a file and a folder)")
    out, workdir = Path(out).expanduser(), Path(workdir).expanduser()
    weights = Path(weights).expanduser()
    model = load_mobilefacenet(weights, "cpu")  # WeightsError names the file
    weights_sha = file_sha256(weights)

    params = {"epochs": epochs, "batch_size": batch_size, "lr": lr,
              "backbone_lr_scale": backbone_lr_scale, "s": s, "m": m,
              "val_fraction": val_fraction, "patience": patience, "weight_decay": weight_decay,
              "freeze_bn": bool(freeze_bn), "checkpoint_every": checkpoint_every, "seed": seed}
    # everything that changes the result; checkpoint_every only changes how often it is saved
    fingerprint = {**{k: v for k, v in params.items() if k != "checkpoint_every"},
                   "data": _data_fingerprint(chips, classes, labels),
                   "weights_sha256": weights_sha}
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = workdir / CHECKPOINT
    ckpt = _load_checkpoint(ckpt_path, fingerprint, workdir)

    config = mobilefacenet_config()
    margin = ArcMargin(model.conv3.out_channels, len(classes), s, m)
    model.to(dev)
    margin.to(dev)
    backbone_lr = lr * backbone_lr_scale
    groups = _param_groups(model, margin, lr, backbone_lr, weight_decay)
    if backbone_lr == 0:
        model.requires_grad_(False)
        groups = groups[2:]
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    threads_ctx = torch_threads(threads) if threads and dev.type == "cpu" else \
        contextlib.nullcontext()

    with threads_ctx:
        if ckpt is not None:
            train, val = ckpt["split"]["train"].numpy(), ckpt["split"]["val"].numpy()
            model.load_state_dict(ckpt["model"])
            margin.load_state_dict(ckpt["margin"])
            opt.load_state_dict(ckpt["optimizer"])
            state = ckpt["state"]
            resumed_from = state["epoch_done"]
            _set_rng_state(ckpt["rng"])
            log(f"finetune: resumed from {ckpt_path} at epoch {state['epoch_done']} of "
                f"{epochs} (step {state['step']}"
                + (f", {state['batch_done']} batches into epoch {state['epoch_done'] + 1})"
                   if state["batch_done"] else ")"))
        else:
            resumed_from = None
            train, val = split_indices(labels, val_fraction, seed)
            torch.manual_seed(seed)
            log(f"finetune: {len(chips)} chips of {len(classes)} identities; train {len(train)}, "
                f"validation {len(val)} (of {len(np.unique(labels[val])) if len(val) else 0} "
                f"identities); device {dev}, precision {precision}, batch {batch_size}, "
                f"freeze_bn {bool(freeze_bn)}")
            score, centres = _validate(model, chips, labels, train, val, len(classes), config,
                                       dev, precision)
            with torch.no_grad():  # imprint: class weights start at the pretrained centres
                margin.weight.copy_(centres)
            state = {"epoch_done": 0, "batch_done": 0, "step": 0, "loss_sum": 0.0, "seen": 0,
                     "best": score if len(val) else None, "best_epoch": 0, "bad_epochs": 0,
                     "history": [{"epoch": 0, "loss": None, **score}], "done": False,
                     "stopped_early": False, "baseline": score}
            best_state = _cpu_state(model)
            if len(val):
                log(f"finetune: epoch 0 (pretrained): validation accuracy "
                    f"{score['accuracy']:.4f}, margin {score['margin']:.4f}")
            else:
                log("finetune: no validation set (val_fraction 0, or no identity with 2 chips): "
                    "every epoch runs and the last is kept")
        if ckpt is not None:
            best_state = ckpt["best_state"]

        def save(best_state):
            blob = {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "params": params,
                    "classes": classes,
                    "split": {"train": torch.from_numpy(train), "val": torch.from_numpy(val)},
                    "model": _cpu_state(model), "margin": _cpu_state(margin),
                    "optimizer": opt.state_dict(), "state": copy.deepcopy(state),
                    "best_state": best_state, "rng": _rng_state(),
                    "saved": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
            _save_checkpoint(ckpt_path, blob)

        steps_per_epoch = len(_batches(train, batch_size, seed, 1)[0])
        total_steps = steps_per_epoch * epochs
        y_all = torch.from_numpy(labels).to(dev)
        while not state["done"] and state["epoch_done"] < epochs:
            epoch = state["epoch_done"] + 1
            batches, flips = _batches(train, batch_size, seed, epoch)
            _set_train_mode(model, freeze_bn)
            margin.train()
            bar = tqdm(total=len(batches), unit="batch", desc=f"finetune {epoch}/{epochs}",
                       disable=not show_progress, file=sys.stderr, dynamic_ncols=True)
            bar.update(state["batch_done"])
            for k in range(state["batch_done"], len(batches)):
                idx = batches[k]
                factor = _cosine_factor(state["step"], total_steps)
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * factor
                x = _to_input(chips[idx], config, dev, flips[k])
                with _autocast(precision, dev):
                    emb = model(x)
                loss = F.cross_entropy(margin(emb.float(), y_all[idx]), y_all[idx])
                value = float(loss.detach())
                if not math.isfinite(value):  # before the step: the last checkpoint stays sound
                    raise FloatingPointError(f"finetune: loss is {value} at epoch {epoch}, step "
                                             f"{state['step']}; lower lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                state["step"] += 1
                state["batch_done"] = k + 1
                state["loss_sum"] += value * len(idx)
                state["seen"] += len(idx)
                bar.update(1)
                bar.set_postfix(loss=f"{state['loss_sum'] / state['seen']:.3f}")
                if checkpoint_every and state["step"] % checkpoint_every == 0 \
                        and k + 1 < len(batches):
                    save(best_state)
            bar.close()
            score, _ = _validate(model, chips, labels, train, val, len(classes), config, dev,
                                 precision)
            mean_loss = state["loss_sum"] / max(1, state["seen"])
            state["history"].append({"epoch": epoch, "loss": mean_loss, **score})
            state.update(epoch_done=epoch, batch_done=0, loss_sum=0.0, seen=0)
            if not len(val) or _better(score, state["best"]):
                state.update(best=score if len(val) else None, best_epoch=epoch, bad_epochs=0)
                best_state = _cpu_state(model)
                mark = " (best)"
            else:
                state["bad_epochs"] += 1
                mark = f" (best {state['best']['accuracy']:.4f} at epoch {state['best_epoch']})"
            scored = (f", validation accuracy {score['accuracy']:.4f}, margin "
                      f"{score['margin']:.4f}{mark}" if len(val) else "")
            log(f"finetune: epoch {epoch}/{epochs}: loss {mean_loss:.4f}{scored}")
            if len(val) and state["bad_epochs"] >= patience and epoch < epochs:
                state.update(done=True, stopped_early=True)
                log(f"finetune: no better validation score for {patience} epochs: stopping")
            if epoch >= epochs:
                state["done"] = True
            save(best_state)

    # the best backbone, in foamliu's layout, then its metadata
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, lambda f: torch.save(best_state, f))
    best = state["best"]
    summary = {
        "out": str(out), "meta": str(meta_path(out)), "workdir": str(workdir),
        "best_epoch": state["best_epoch"], "epochs_run": state["epoch_done"],
        "stopped_early": state["stopped_early"],
        "resumed_from_epoch": resumed_from,
        "best_val_accuracy": None if best is None else best["accuracy"],
        "baseline_val_accuracy": state["baseline"]["accuracy"] if len(val) else None,
        "history": state["history"], "classes": len(classes), "train": int(len(train)),
        "val": int(len(val)), "device": str(dev), "precision": precision,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    meta = {"format": META_FORMAT, "architecture": "MobileFaceNet (foamliu layout)",
            "weights_sha256": file_sha256(out), "base_weights": str(weights),
            "base_weights_sha256": weights_sha, "data_sha256": fingerprint["data"],
            "params": params, "identities": len(classes), "train_chips": int(len(train)),
            "val_chips": int(len(val)), "validation": "nearest class centre (cosine)",
            "best_epoch": state["best_epoch"], "epochs_run": state["epoch_done"],
            "best_val_accuracy": summary["best_val_accuracy"],
            "baseline_val_accuracy": summary["baseline_val_accuracy"],
            "history": state["history"],
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    _write_atomic(meta_path(out), lambda f: f.write(json.dumps(meta, indent=1).encode()))
    log(f"finetune: wrote {out} (epoch {state['best_epoch']}"
        + (f", validation accuracy {best['accuracy']:.4f}" if best else "") + ")")
    return summary


__all__ = ["ArcMargin", "finetune", "split_indices"]
