"""Checkpoints of :func:`faceprobe.identity.finetune.finetune`: what identifies a run, and the
files it writes and resumes from.

Separate from the training loop in ``finetune.py``: these pieces decide whether a workdir's
checkpoint belongs to this run and make every file a run writes survive a kill; they need no model
code. Here: the argument checks (the checked values go into the fingerprint), the train/validation
split (stored in the checkpoint), the data fingerprint, reading and vetting a checkpoint, atomic
writes, and the RNG and state-dict snapshots a checkpoint holds. ``finetune.py`` imports this
module, never the reverse; its names stay importable from there.

Decisions:
- Split: of every identity with at least 2 chips, ``round(val_fraction * n)`` chips (at least 1,
  at most n - 1) are held out for validation, chosen with ``seed``; identities with one chip train
  only.
- Resumable: at the end of each epoch (and every ``checkpoint_every`` steps when > 0) the whole
  state (backbone, margin layer, optimiser, epoch and step within it, best score and the best
  backbone, patience counter, history, torch/numpy RNG states, the split) goes to
  ``workdir/checkpoint.pt``, written to ``*.tmp``, fsync'ed and renamed, so a kill at any moment
  leaves the previous or the next checkpoint. Each epoch's order and flips come from
  ``(seed, epoch)``, so a run resumed mid-epoch sees the batches an uninterrupted run would. A
  checkpoint records a fingerprint of the data (chips, identities), the initial weights (sha256) and
  every parameter that changes the result; a call with the same workdir and a different fingerprint
  is refused, naming what differs. Device, precision, threads, ``checkpoint_every``, progress and
  log are not part of it.
  A finished run's checkpoint says so: calling again rewrites ``out`` without training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from faceprobe import faults
from faceprobe.embed.backbones.mobilefacenet_torch import INPUT_SIZE
from faceprobe.errors import ConfigError

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "faceprobe.finetune.checkpoint/1"


# --- validation of the arguments -----------------------------------------------------------

def _number(name: str, v, *, lo=None, hi=None, lo_open=False, hi_open=False, integer=False,
            hint: str = ""):
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    if ok and integer:
        ok = float(v) == int(v)
    if ok:
        v = int(v) if integer else float(v)
        ok = math.isfinite(v)
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v < hi if hi_open else v <= hi
    if not ok:
        bounds = []
        if lo is not None:
            bounds.append(f"{'>' if lo_open else '>='} {lo:g}")
        if hi is not None:
            bounds.append(f"{'<' if hi_open else '<='} {hi:g}")
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"finetune: {name} must be {kind} {' and '.join(bounds)}, got {v!r}"
                          + (f"; {hint}" if hint else ""))
    return v


def _check_data(chips, identities) -> tuple[np.ndarray, np.ndarray, list[str]]:
    x = np.asarray(chips)
    if x.ndim != 4 or x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ConfigError(f"finetune: chips must be an (n, {INPUT_SIZE}, {INPUT_SIZE}, 3) RGB "
                          f"array of aligned faces, got shape {x.shape}; align with "
                          "faceprobe.embed.align (ArcFace template) first")
    if x.dtype != np.uint8:
        raise ConfigError(f"finetune: chips must be uint8 (0..255 pixels), got {x.dtype}")
    ids = np.asarray(identities)
    if ids.ndim != 1 or len(ids) != len(x):
        raise ConfigError(f"finetune: identities must be one label per chip ({len(x)}), got "
                          f"shape {ids.shape}")
    names = [str(v) for v in ids.tolist()]
    classes = sorted(set(names))
    if len(classes) < 2:
        raise ConfigError(f"finetune: needs at least 2 identities, got {len(classes)}")
    index = {c: k for k, c in enumerate(classes)}
    return x, np.array([index[n] for n in names], np.int64), classes



# --- split, fingerprint, checkpoint files --------------------------------------------------

def split_indices(labels: np.ndarray, val_fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) chip indices: per identity with >= 2 chips, round(val_fraction * n) held out
    (at least 1, at most n - 1) when ``val_fraction > 0``."""
    rng = np.random.default_rng([int(seed), 7919])
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = 0
        if val_fraction > 0 and len(idx) >= 2:
            k = min(len(idx) - 1, max(1, int(round(val_fraction * len(idx)))))
        val.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    return np.sort(np.array(train, np.int64)), np.sort(np.array(val, np.int64))


def _data_fingerprint(chips: np.ndarray, classes: list[str], labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(repr(chips.shape).encode())
    h.update(np.ascontiguousarray(chips).data)
    h.update(json.dumps(classes).encode())
    h.update(labels.astype("<i8").tobytes())
    return h.hexdigest()


def _write_atomic(path: Path, write: Callable) -> None:
    """``write(f)`` into ``path.tmp``, flush, fsync, rename over ``path``, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, IndexError):
            torch.cuda.set_rng_state_all(state["cuda"])


def _cpu_state(module_or_state) -> dict:
    sd = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    return {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}


def _differences(old: dict, new: dict) -> str:
    diffs = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            if k in ("data", "weights_sha256"):
                diffs.append("data (chips or identities)" if k == "data" else "initial weights")
            else:
                diffs.append(f"{k} {old.get(k)!r} -> {new.get(k)!r}")
    return ", ".join(diffs) or "format"


def _save_checkpoint(path: Path, blob: dict) -> None:
    """``blob`` to ``path`` with :func:`_write_atomic`."""
    _write_atomic(path, lambda f: torch.save(blob, f))
    faults.pause(faults.PAUSE_AFTER_CHECKPOINT)  # the kill test's window


def _load_checkpoint(ckpt_path: Path, fingerprint: dict, workdir: Path) -> dict | None:
    """The checkpoint at ``ckpt_path``, None when there is none. Refuses a damaged file, a file
    that is not a finetune checkpoint, and a checkpoint of another run (naming what differs)."""
    ckpt = None
    if ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged file: say which and how to recover
            raise ConfigError(f"finetune: checkpoint {ckpt_path} cannot be read "
                              f"({type(exc).__name__}); delete it to start over") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"finetune: {ckpt_path} is not a finetune checkpoint; use another "
                              "workdir")
        if ckpt["fingerprint"] != fingerprint:
            raise ConfigError(f"finetune: {workdir} holds a checkpoint of another run (differs in "
                              f"{_differences(ckpt['fingerprint'], fingerprint)}); use a new "
                              "workdir, or delete it to start over")
    return ckpt
