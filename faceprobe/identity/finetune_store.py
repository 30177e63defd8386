"""``faceprobe finetune``: fine-tune a backbone on a store's identities from its kept chips.

The store side of :func:`faceprobe.identity.finetune.finetune`: which rows train (the usable rows
of ``splits`` that have an identity, optionally each identity's first ``per_identity`` in store
order, the rule ``faceprobe identify --per-identity`` enrols by), which chips they are (the store's
``chips``, which must be the backbone's own 112-px ArcFace-template chips) and which weights
start it (``--weights``, else ``mobilefacenet-foamliu.pt`` resolved like every weights file).

Decisions:
- Only ``arcface.mobilefacenet`` can be fine-tuned: it is the one backbone with a trainable
  architecture here (the ONNX graphs are inference-only; dlib's model is not a torch network).
- The default workdir is ``OUT.run`` beside the weights file, so running the same command again
  resumes the same run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceprobe.embed.backbones.base import resolve_weights
from faceprobe.embed.store import Store
from faceprobe.errors import ConfigError, StoreError

TRAINABLE = ("arcface.mobilefacenet",)


def first_per_identity(identity: np.ndarray, n: int | None) -> np.ndarray:
    """Mask of each identity's first ``n`` rows in the order given (all rows when None)."""
    keep = np.array([bool(i) for i in identity], dtype=bool)
    if n is None:
        return keep
    seen: dict[str, int] = {}
    for k, ident in enumerate(identity):
        if keep[k]:
            keep[k] = seen.get(ident, 0) < n
            seen[ident] = seen.get(ident, 0) + 1
    return keep


def training_chips(store: Store, backbone: str, splits: Sequence[str] | None,
                   per_identity: int | None) -> tuple[np.ndarray, np.ndarray]:
    spec = store.meta.get("chips") or {}
    if spec and (spec.get("backbone") != backbone or spec.get("alignment") != "similarity"):
        raise StoreError(
            f"store {store.path} keeps {spec.get('backbone')} chips ({spec.get('size')} px, "
            f"{spec.get('alignment')}); fine-tuning {backbone} needs its own chips: embed with "
            f"--backbone {backbone} --features embedding,chips")
    chips, rows = store.load_chips(splits=splits)
    keep = first_per_identity(rows.identity, per_identity)
    if not keep.any():
        raise StoreError(f"store {store.path} has no usable row with an identity"
                         + (f" in splits {', '.join(splits)}" if splits else "")
                         + "; fine-tuning needs identity labels (e.g. CelebA)")
    return chips[keep], rows.identity[keep]


def finetune_store(store: Store | str | os.PathLike, *, out: str | os.PathLike,
                   backbone: str = "arcface.mobilefacenet", weights: Any = None,
                   workdir: str | os.PathLike | None = None,
                   splits: Sequence[str] | None = ("train",), per_identity: int | None = None,
                   log: Callable[[str], object] = print, **params: Any) -> dict:
    """Fine-tune ``backbone`` on the store's identities; write the weights to ``out``.
    ``params`` go to :func:`faceprobe.identity.finetune.finetune` (epochs, batch_size, lr, s, m,
    val_fraction, patience, device, precision, seed, threads, show_progress)."""
    from faceprobe.embed.backbones.mobilefacenet_torch import FILENAME, URL
    from faceprobe.identity.finetune import finetune

    if backbone not in TRAINABLE:
        raise ConfigError(f"backbone {backbone!r} cannot be fine-tuned; trainable: "
                          f"{', '.join(TRAINABLE)}")
    if per_identity is not None and per_identity < 1:
        raise ConfigError(f"per_identity must be at least 1, got {per_identity}")
    store = store if isinstance(store, Store) else Store(store)
    if splits and not any(s in set(store.load(features=(), tasks=()).split) for s in splits):
        splits = None  # a store without official splits trains on every row
    chips, identities = training_chips(store, backbone, splits, per_identity)
    init = resolve_weights(FILENAME, weights, URL, what=f"{backbone} PyTorch weights")
    out = Path(out)
    workdir = Path(workdir) if workdir else out.with_name(out.name + ".run")
    log(f"fine-tuning {backbone} from {init} on {len(chips)} chips of "
        f"{len(set(identities))} identities"
        + (f" (splits {', '.join(splits)})" if splits else "") + f"; checkpoints in {workdir}")
    return finetune(chips, identities, weights=init, out=out, workdir=workdir, log=log, **params)
