"""Training a ``MarginHead``: the torch loop behind ``MarginHead.fit``, and training on a store.

Separate from ``faceprobe.heads.margin`` so that the estimator module stays what inference needs
(numpy only: a bundle is loaded and ``transform`` runs without this module or torch), while
everything that trains lives here:

- the torch network, ``arcface_logits``, the training loop with early stopping (``_train``) and
  the export of the trained network to numpy matrices with BatchNorm folded (``_export``);
- measuring and training on a store: ``identification_accuracy``, ``load_identity_rows``,
  ``fit_margin_on_split`` and ``train_margin_store`` (``faceprobe train --head arcface``).

The model, its defaults and the decisions behind them are described in ``faceprobe.heads.margin``.
This module imports that one; that one imports this one only inside ``MarginHead.fit`` and for
the names it still re-exports, so there is no import cycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from faceprobe.embed.store import StoreData
from faceprobe.errors import ConfigError
from faceprobe.heads.common import EarlyStopping, train_epoch
from faceprobe.heads.margin import KIND, TASK, MarginHead, _l2, _missing_identity

_BN_EPS = 1e-3


# -------------------------------------------------------------------- torch training
def _torch_net(head: MarginHead, width: int, n_classes: int):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            layers: list[nn.Module] = []
            w = width
            for h in head.hidden:
                layers += [nn.Linear(w, int(h)), nn.BatchNorm1d(int(h), eps=_BN_EPS, momentum=0.01),
                           nn.ReLU()]
                w = int(h)
            self.trunk = nn.Sequential(*layers)
            self.proj = nn.Linear(w, int(head.out_dim))
            self.classes = nn.Parameter(torch.empty(n_classes, int(head.out_dim)))
            for mod in self.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.xavier_uniform_(mod.weight)
                    nn.init.zeros_(mod.bias)
            # a (semi-)orthogonal projection starts as a rotation of the input space, so the
            # head starts from the backbone's geometry (CelebA, 65 training people, unseen-person
            # top-1, 3 folds: xavier 0.902, orthogonal 0.932, raw 0.934; synthetic 128-d:
            # 0.888 -> 0.917)
            nn.init.orthogonal_(self.proj.weight)
            nn.init.normal_(self.classes, std=0.01)

        def embed(self, x):
            return nn.functional.normalize(self.proj(self.trunk(x)), dim=1)

        def forward(self, x):
            return self.embed(x) @ nn.functional.normalize(self.classes, dim=1).T

    return Net()


def arcface_logits(cos, y, s: float, m: float):
    """ArcFace logits from cosines ``cos`` (n, classes) and integer targets ``y``."""
    import math

    import torch

    cos = cos.clamp(-1.0, 1.0)
    c = cos.gather(1, y[:, None])
    sin = torch.sqrt((1.0 - c * c).clamp(min=1e-9))
    phi = c * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
    # past theta = pi - m, cos(theta + m) would rise again: keep the target logit decreasing
    phi = torch.where(c > math.cos(math.pi - m), phi, c - math.sin(math.pi - m) * m)
    return s * cos.scatter(1, y[:, None], phi)


def _train(head: MarginHead, xtr_np, ytr_np, xva_np, yva_np, n_classes, callbacks):
    import torch
    import torch.nn.functional as F
    from torch import nn

    seed = int(head.seed)
    torch.manual_seed(seed)
    net = _torch_net(head, xtr_np.shape[1], n_classes)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr = torch.from_numpy(xtr_np), torch.from_numpy(ytr_np)
    has_val = xva_np is not None and len(yva_np)
    xva = torch.from_numpy(xva_np) if has_val else None
    yva = torch.from_numpy(np.asarray(yva_np, np.int64)) if has_val else None
    decay = [mod.weight for mod in net.modules() if isinstance(mod, nn.Linear)]
    rest = [p for p in net.parameters() if all(p is not q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(head.weight_decay)},
                             {"params": rest, "weight_decay": 0.0}], lr=float(head.lr))
    s, m = float(head.s), float(head.m)

    def loss_of(x, y):
        return F.cross_entropy(arcface_logits(net(x), y, s, m), y)

    n, bs = len(xtr), int(head.batch_size)
    history: dict[str, list[float]] = {"loss": [], "val_loss": [], "val_accuracy": []}
    stopper = EarlyStopping(head.patience, enabled=bool(has_val))
    for epoch in range(int(head.epochs)):
        # min_batch 2: BatchNorm cannot normalise a batch of one
        history["loss"].append(train_epoch(net, opt, n, bs, gen,
                                           lambda idx: loss_of(xtr[idx], ytr[idx]), min_batch=2))
        logs = {"loss": history["loss"][-1]}
        if has_val:
            net.eval()
            with torch.no_grad():
                cos = net(xva)
                vl = float(F.cross_entropy(arcface_logits(cos, yva, s, m), yva))
                acc = float((cos.argmax(1) == yva).float().mean())
            history["val_loss"].append(vl)
            history["val_accuracy"].append(acc)
            logs.update(val_loss=vl, val_accuracy=acc)
        for cb in callbacks or ():
            cb(epoch, logs)
        if head.verbose:
            print(f"epoch {epoch + 1}: " + " ".join(f"{k} {v:.4f}" for k, v in logs.items()),
                  flush=True)
        if stopper.update(net, epoch, logs.get("val_loss")):
            break
    stopper.restore(net)
    net.eval()
    return history, stopper.best_epoch, _export(net)


def _export(net) -> list[tuple[np.ndarray, np.ndarray]]:
    """torch module -> [(W (in, out), b)] with each BatchNorm folded into its Linear."""
    from torch import nn

    def np_(t):
        return t.detach().cpu().numpy().astype(np.float64)

    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for mod in net.trunk:
        if isinstance(mod, nn.Linear):
            layers.append((np_(mod.weight).T, np_(mod.bias)))
        elif isinstance(mod, nn.BatchNorm1d):
            W, b = layers[-1]
            a = np_(mod.weight) / np.sqrt(np_(mod.running_var) + mod.eps)
            layers[-1] = (W * a, (b - np_(mod.running_mean)) * a + np_(mod.bias))
    layers.append((np_(net.proj.weight).T, np_(net.proj.bias)))
    return [(W.astype(np.float32), b.astype(np.float32)) for W, b in layers]


# -------------------------------------------------------------------- measuring and training
def identification_accuracy(Z: np.ndarray, identities: Any, n_enrol: int = 1) -> dict[str, Any]:
    """Closed-set top-1 identification inside one set of rows: each identity's first
    ``n_enrol`` rows (row order) form its template (mean of unit rows), its other rows are
    probes, scored by cosine against every template. Identities with no probe left only enrol
    (they are distractors). The same rule as ``faceprobe identify`` with one split."""
    Z = _l2(np.asarray(Z, np.float32))
    ids = np.array(["" if _missing_identity(v) else str(v) for v in identities], dtype=object)
    known = ids != ""
    Z, ids = Z[known], ids[known]
    classes, y = np.unique(ids, return_inverse=True) if len(ids) else (ids, ids)
    y = np.asarray(y, np.int64)
    enrol = np.zeros(len(y), bool)
    seen = np.zeros(len(classes), np.int64)
    for i, c in enumerate(y):
        if seen[c] < n_enrol:
            enrol[i] = True
            seen[c] += 1
    templates = np.zeros((len(classes), Z.shape[1] if Z.ndim == 2 else 0), np.float32)
    np.add.at(templates, y[enrol], Z[enrol])
    templates = _l2(templates)
    probes = ~enrol
    if not probes.any():
        return {"top1": None, "probes": 0, "identities": int(len(classes))}
    pred = (Z[probes] @ templates.T).argmax(axis=1)
    return {"top1": float((pred == y[probes]).mean()), "probes": int(probes.sum()),
            "identities": int(len(classes))}


def load_identity_rows(store: Any, features: Sequence[str] | str | None = None, *,
                       log: Callable[[str], None] | None = None) -> StoreData:
    """A store's usable rows that have an identity, with the feature groups asked for (every
    group by default, as ``train``); ``log`` says how many usable rows had none. Raises when no
    row has one."""
    from faceprobe.heads.train import resolve_features

    groups = resolve_features(store, features)
    data = store.load(features=groups, tasks=[])
    keep = np.array([not _missing_identity(v) for v in data.identity], dtype=bool)
    if not keep.any():
        raise ConfigError(f"store {store.path} has no rows with an identity; an identity-space "
                          "head needs identity labels (e.g. CelebA identity_CelebA.txt)")
    if log and not keep.all():
        log(f"{int((~keep).sum())} of {len(keep)} usable rows have no identity; not used")
    return data.subset(keep)


def fit_margin_on_split(head: MarginHead, data: StoreData, split: Any, *,
                        log: Callable[[str], None] | None = None,
                        callbacks: Sequence[Callable[[int, dict], None]] | None = None,
                        refit: bool = True) -> dict[str, Any]:
    """Fit on the split's train rows, measure identification on its validation rows (identities
    disjoint from training: each validation identity's first image enrols, the rest probe; the
    raw embeddings measured the same way for comparison), then refit on train + validation
    (more identities; early stopping on the head's own held-out images) when ``refit``."""
    train = data.subset(split.train)
    start = time.perf_counter()
    head.fit(train, log=log, callbacks=callbacks)
    metrics: dict[str, Any] = {"task": TASK, "rows_ignored": head.rows_ignored_,
                               "best_epoch": head.best_epoch_,
                               "epochs_run": len(head.history_.get("loss", []))}
    if log:
        log(f"fitted {KIND} on {len(train)} rows ({head.n_identities_} identities) in "
            f"{time.perf_counter() - start:.1f}s, {metrics['epochs_run']} epochs "
            f"(best {head.best_epoch_})")
    if len(split.val):
        val = data.subset(split.val)
        ours = identification_accuracy(head.transform(val), val.identity)
        groups = list(head.feature_groups_)
        raw = identification_accuracy(
            np.concatenate([_l2(val.X[g]) for g in groups], axis=1), val.identity)
        metrics.update(identification_top1=ours["top1"], raw_identification_top1=raw["top1"],
                       probes=ours["probes"], identities=ours["identities"])
        if log and ours["top1"] is not None:
            log(f"validation identification top-1 {ours['top1']:.3f} (raw embeddings "
                f"{raw['top1']:.3f}) over {ours['probes']} probes of {ours['identities']} "
                "unseen identities")
    if refit and len(split.val):
        both = data.subset(np.concatenate([split.train, split.val]))
        start = time.perf_counter()
        head.fit(both, log=log, callbacks=callbacks)
        split.description["refit"] = "train+val"
        if log:
            log(f"refitted (train+val) {KIND} on {len(both)} rows ({head.n_identities_} "
                f"identities) in {time.perf_counter() - start:.1f}s")
    return metrics


def train_margin_store(store: Any, *, out: Any = None, features: Sequence[str] | str | None = None,
                       seed: int = 0, params: Mapping[str, Any] | None = None,
                       val_fraction: float = 0.15, test_fraction: float = 0.15,
                       overwrite: bool = False, log: Callable[[str], None] | None = None,
                       callbacks: Sequence[Callable[[int, dict], None]] | None = None):
    """``faceprobe train --head arcface --tasks identity``: identity-disjoint split of the rows
    with an identity (the store's official split when it has one), fit, validation
    identification, refit on train + validation, bundle (kind ``margin``) at ``out``.
    Returns ``faceprobe.heads.train.TrainResult``."""
    from faceprobe.embed.store import Store
    from faceprobe.heads.bundle import check_out, save_bundle
    from faceprobe.heads.splits import make_split
    from faceprobe.heads.train import TrainResult, resolve_features

    if out is not None:
        check_out(out, overwrite)
    store = store if isinstance(store, Store) else Store(store)
    groups = resolve_features(store, features)
    data = load_identity_rows(store, groups, log=log)
    split = make_split(data, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    if log:
        log(f"{len(data)} rows with an identity; {split.description['text']}")
    head = MarginHead(**{"features": groups, "seed": seed, **dict(params or {})})
    metrics = fit_margin_on_split(head, data, split, log=log, callbacks=callbacks)
    bundle = None
    if out is not None:
        bundle = save_bundle(head, out, store=store, split=split.description,
                             metrics={"val": metrics}, overwrite=overwrite)
    return TrainResult(head, split, metrics, bundle)
