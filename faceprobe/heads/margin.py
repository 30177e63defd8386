"""ArcFace (additive angular margin) head: a learned identity space over stored embeddings.

``MarginHead`` is fitted on embeddings labelled with an identity and maps any embedding into a
new, L2-normalised space (``transform``) in which images of one person are closer (cosine) than
in the backbone's space. It predicts no attributes; verification and identification then run on
``transform``'s output exactly as on raw embeddings.

Model (training): each feature group L2-normalised, then standardised with the training rows'
mean/std (a scaler per group, concatenated in the fit order, as in ``KerasHead``), optional
hidden layers Linear -> BatchNorm -> ReLU, a linear projection to ``out_dim``, L2-normalised.
Logits are the cosines to a normalised class-weight matrix (one row per training identity),
``cos(theta + m)`` on the true class (ArcFace, with the usual fallback
``cos(theta) - m sin(m)`` once ``theta + m`` passes pi so the logit stays monotone), all times
``s``; the loss is the cross-entropy.

Decisions:
- Training is a plain torch loop on one thread, for the reason ``keras_head`` gives (Keras'
  per-layer call overhead is 20-30x the arithmetic of a net this small). Inference needs none of
  it: ``transform`` is numpy only, with the input scaler and each BatchNorm folded into the
  adjacent matrix, so it is fast, deterministic and does not import torch or Keras. A test
  checks that it reproduces the torch network.
- The class-weight matrix is a training device and is not kept: a bundle holds the embedding
  network only (a few matrices in ``weights.npz``, read with ``allow_pickle=False``), so a
  bundle never executes code on load and carries no list of training identities.
- Early stopping on held-out images of the training identities (a closed-set loss needs the
  held-out classes to have weights): ``val_fraction`` of each identity's images (stochastically
  rounded, so identities with 2-5 images still give that share overall; at least one image of
  an identity stays in training, so identities with one image are all training), seeded. The
  best epoch's weights (lowest held-out ArcFace loss) are restored. ``validation`` (X,
  identities) replaces that hold-out; its rows of identities unseen in training are dropped
  and counted. Without any held-out row the head trains ``epochs`` epochs.
- Rows without an identity (None, "", NaN) are not used; ``rows_ignored_`` counts them and
  ``fit(..., log=)`` says how many.
- Defaults ``s=30, m=0.3, out_dim=128, hidden=(), lr=3e-3, patience=5, epochs=100``, and an
  orthogonal initial projection, measured on clustered synthetic embeddings (unit-sphere
  identity centres + a shared low-rank nuisance (pose/light stand-in, rank dim/8) + isotropic
  noise, re-normalised), 1,000 training identities x 6 images, scored as top-1 identification
  of 300 *unseen* identities (first image enrols, 4 probe each), one seed, shared 2-core box;
  and on real CelebA faces (MobileFaceNet-paddle, 98 people x 15 images, 3 identity-disjoint
  folds: ~65 people train, ~33 unseen are scored the same way):

  ========================  =======  =======  ======
  setting                   128-d    512-d    CelebA
  ========================  =======  =======  ======
  raw embeddings            0.457    0.474    0.934
  s=30 m=0.3 (default)      0.917    0.936    0.932
  s=16 m=0.3                0.859
  s=64 m=0.3                0.916
  s=30 m=0.1                0.923             0.930
  s=30 m=0.5                0.902    0.929
  s=64 m=0.5                0.904    0.935    0.932
  s=30 m=0 (no margin)      0.873
  hidden=(512,) / (256,)    0.638             0.870
  out_dim=64                                  0.894
  out_dim=256                        0.998
  xavier, not orthogonal    0.888             0.902
  ========================  =======  =======  ======

  s=30 / m=0.3 is best or within 0.01 of it everywhere; the margin is worth +0.04 over a plain
  normalised softmax (m=0); the large-scale values (s=64, m=0.5) are no better for a linear
  head on ~1k identities, and s=16 is worse. A hidden layer over-fits at this scale, so the
  default is a linear projection. The orthogonal initial projection starts the head as a
  rotation of the (standardised) input space, i.e. from the backbone's geometry: +0.03 on
  both. With 512-d inputs a wider space (out_dim 256) scored higher on this synthetic data,
  whose identity signal spans most dimensions; out_dim is in the search space (heads/
  search_space.py) rather than guessed from the input width. On CelebA with only ~65 training
  people the head matches the pretrained space but does not beat it: it pays off with many
  identities and a backbone whose nuisance directions it can learn to remove (the synthetic case).
- Fit time (one thread, shared box): 1,000 identities x 6 images, 10-50 s (early stopping ends
  most fits well before 100 epochs).
- The torch loop is in ``faceprobe.heads.margin_torch``, imported by ``fit`` only: loading a
  bundle and ``transform`` never load it. Training on a store (``train_margin_store``) is in
  ``faceprobe.heads.margin_train``, which imports this module, never the reverse.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from faceprobe.embed.store import StoreData
from faceprobe.errors import ConfigError
from faceprobe.heads.common import (
    HeadMixin,
    check,
    check_number,
    features_of,
    fit_scaler,
    fold_scaler,
)
from faceprobe.threads import torch_threads

HEAD = "MarginHead"
KIND = "margin"
TASK = "identity"


def _missing_identity(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return isinstance(v, (str, bytes)) and not str(v).strip()


def as_features(X: Any, identities: Any = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(N, D) array, feature-group dict or StoreData -> (groups dict, identities or None)."""
    if isinstance(X, StoreData):
        ids = X.identity if identities is None else identities
        X = dict(X.X)
    else:
        ids = identities
        if isinstance(X, np.ndarray) or (isinstance(X, (list, tuple)) and X
                                         and not isinstance(X[0], Mapping)):
            X = {"embedding": np.asarray(X)}
    if not isinstance(X, Mapping) or not X:
        raise ConfigError(f"{HEAD}: X must be an (n, dim) array, a dict feature group -> "
                          "(n, dim) array, or StoreData")
    out = {}
    for k, v in X.items():
        a = np.asarray(v, dtype=np.float32)
        if a.ndim != 2:
            raise ConfigError(f"{HEAD}: feature group {k!r} must be a 2-d (n, dim) array, got "
                              f"shape {a.shape}")
        out[str(k)] = a
    n = {len(v) for v in out.values()}
    if len(n) != 1:
        raise ConfigError(f"{HEAD}: feature groups have different row counts: {sorted(n)}")
    if ids is not None:
        ids = np.asarray(ids, dtype=object)
        if ids.ndim != 1 or len(ids) != n.pop():
            raise ConfigError(f"{HEAD}: identities must be one label per row of X "
                              f"({len(next(iter(out.values())))} rows), got shape {ids.shape}")
    return out, ids


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0).astype(np.float32)


class MarginHead(HeadMixin):
    """ArcFace head over stored embeddings, shaped as a scikit-learn transformer.

    ``fit(X, identities)`` learns the projection, ``transform(X)`` returns ``(n, out_dim)``
    L2-normalised float32 rows. Parameters are checked at ``fit``.

    s, m: ArcFace scale and additive angular margin (radians). out_dim: size of the new space.
    hidden: widths of Linear -> BatchNorm -> ReLU layers before the projection (empty: a linear
    projection). epochs: the most epochs (early stopping ends sooner). patience: epochs without a
    better held-out loss before stopping. val_fraction: share of each identity's images held out
    for early stopping. weight_decay: decoupled (AdamW) decay on the network's matrices.
    features: feature groups to use (default ``embedding``, else all, sorted).
    """

    kind = KIND
    _NAME = HEAD
    _PARAMS = ("out_dim", "hidden", "s", "m", "epochs", "batch_size", "lr", "patience",
               "val_fraction", "weight_decay", "features", "seed", "verbose")

    def __init__(self, out_dim: int = 128, hidden: Sequence[int] = (), s: float = 30.0,
                 m: float = 0.3, epochs: int = 100, batch_size: int = 256, lr: float = 3e-3,
                 patience: int = 5, val_fraction: float = 0.1, weight_decay: float = 1e-4,
                 features: Sequence[str] | None = None, seed: int = 0, verbose: int = 0):
        self.out_dim = out_dim
        self.hidden = hidden
        self.s = s
        self.m = m
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.val_fraction = val_fraction
        self.weight_decay = weight_decay
        self.features = features
        self.seed = seed
        self.verbose = verbose

    def __repr__(self) -> str:
        return (f"MarginHead(out_dim={self.out_dim}, hidden={tuple(self.hidden)!r}, s={self.s}, "
                f"m={self.m})")

    def _validate(self) -> None:
        check_number(HEAD, "out_dim", self.out_dim, 1, integer=True)
        hidden = self.hidden
        check(HEAD, "hidden", isinstance(hidden, (list, tuple)) and all(
            isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h > 0 for h in hidden),
            "a list of positive integers (empty for a linear projection)", hidden)
        check_number(HEAD, "s", self.s, 0.0, 256.0, lo_open=True)
        check_number(HEAD, "m", self.m, 0.0, 1.5)
        check_number(HEAD, "epochs", self.epochs, 1, integer=True)
        check_number(HEAD, "batch_size", self.batch_size, 2, integer=True)
        check_number(HEAD, "lr", self.lr, 0.0, 1.0, lo_open=True)
        check_number(HEAD, "patience", self.patience, 0, integer=True)
        check_number(HEAD, "val_fraction", self.val_fraction, 0.0, 0.5)
        check_number(HEAD, "weight_decay", self.weight_decay, 0.0)
        check_number(HEAD, "seed", self.seed, 0, integer=True)
        f = self.features
        check(HEAD, "features", f is None or (isinstance(f, (list, tuple)) and f and all(
            isinstance(g, str) for g in f)), "None or a non-empty list of feature group names", f)

    # ---------------------------------------------------------------- fit
    def fit(self, X: Any, identities: Any = None, validation: Any = None, *,
            log: Callable[[str], None] | None = None,
            callbacks: Sequence[Callable[[int, dict], None]] | None = None) -> MarginHead:
        """Fit on ``X`` ((n, d) array, feature-group dict or StoreData) and one identity per row
        (StoreData: its ``identity`` column unless ``identities`` is given). ``validation``:
        ``(X, identities)`` or StoreData, else ``val_fraction`` of each identity's images are held
        out. ``log`` gets one-line notes (rows ignored); ``callbacks`` ``cb(epoch, logs)``."""
        self._validate()
        self._folded = None
        groups_X, ids = as_features(X, identities)
        if ids is None:
            raise ConfigError(f"{HEAD}: fit needs identities (one per row), or StoreData with an "
                              "identity column")
        groups = features_of(groups_X, self.features)
        keep = np.array([not _missing_identity(v) for v in ids], dtype=bool)
        self.rows_ignored_ = int((~keep).sum())
        if self.rows_ignored_ and log:
            log(f"{HEAD}: {self.rows_ignored_} of {len(ids)} rows have no identity; not used")
        names = np.array([str(v) for v in ids[keep]], dtype=object)
        classes, y = np.unique(names, return_inverse=True) if len(names) else (names, names)
        if len(classes) < 2:
            raise ConfigError(f"{HEAD}: training needs at least 2 identities with images, got "
                              f"{len(classes)} ({int(keep.sum())} labelled rows)")
        Xk = {g: groups_X[g][keep] for g in groups}
        y = np.asarray(y, dtype=np.int64)

        if validation is None:
            tr, va = self._holdout(y)
            Xv = {g: a[va] for g, a in Xk.items()}
            yv = y[va]
            Xk = {g: a[tr] for g, a in Xk.items()}
            y = y[tr]
            self.validation_ignored_ = 0
        else:
            vX, vids = (validation if isinstance(validation, tuple) else (validation, None))
            vX, vids = as_features(vX, vids)
            missing = [g for g in groups if g not in vX]
            if missing or vids is None:
                raise ConfigError(f"{HEAD}: validation must hold feature group(s) "
                                  f"{', '.join(groups)} and identities")
            index = {c: i for i, c in enumerate(classes)}
            code = np.array([index.get(str(v), -1) if not _missing_identity(v) else -1
                             for v in vids], dtype=np.int64)
            ok = code >= 0
            self.validation_ignored_ = int((~ok).sum())
            if self.validation_ignored_ and log:
                log(f"{HEAD}: {self.validation_ignored_} validation rows have no identity seen in "
                    "training; not used for early stopping")
            Xv = {g: vX[g][ok] for g in groups}
            yv = code[ok]

        self.feature_groups_ = {g: int(Xk[g].shape[1]) for g in groups}
        self.n_identities_ = int(len(classes))
        self.n_train_rows_ = int(len(y))
        self.n_val_rows_ = int(len(yv))
        self.scalers_ = {}
        for g in groups:
            mean, std = fit_scaler(_l2(Xk[g]))
            self.scalers_[g] = {"mean": mean.tolist(), "std": std.tolist()}
        from faceprobe.heads.margin_torch import _train  # torch: only when fitting

        start = time.perf_counter()
        with torch_threads(1):
            self.history_, self.best_epoch_, arrays = _train(
                self, self._prepare(Xk), y, self._prepare(Xv) if len(yv) else None, yv,
                self.n_identities_, callbacks)
        self.layers_ = arrays
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _holdout(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices (train, held out): ``val_fraction`` of each identity's images, seeded."""
        rng = np.random.default_rng(self.seed)
        val = []
        order = np.argsort(y, kind="stable")
        bounds = np.flatnonzero(np.diff(y[order])) + 1
        for rows in np.split(order, bounds):
            # stochastic rounding: identities with 3 images still give val_fraction overall
            k = min(int(np.floor(self.val_fraction * len(rows) + rng.random())), len(rows) - 1)
            if k > 0:
                val.append(rng.choice(rows, k, replace=False))
        va = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
        mask = np.ones(len(y), bool)
        mask[va] = False
        return np.flatnonzero(mask), va

    def _prepare(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per group: L2-normalise, standardise; then concatenate in the fit order."""
        parts = []
        for g in self.feature_groups_:
            s = self.scalers_[g]
            parts.append((_l2(X[g]) - np.asarray(s["mean"], np.float32))
                         / np.asarray(s["std"], np.float32))
        return (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)).astype(np.float32)

    # ---------------------------------------------------------------- transform
    def _check_fitted(self) -> None:
        if not hasattr(self, "layers_"):
            raise ConfigError(f"{HEAD}: not fitted yet; call fit() first")

    def input_groups(self, X: Any) -> dict[str, np.ndarray]:
        """``X`` as this head's feature groups; one (n, d) array is read as the groups
        concatenated in the fit order (just ``embedding`` for a one-group head)."""
        self._check_fitted()
        if isinstance(X, np.ndarray) or (isinstance(X, (list, tuple)) and X
                                         and not isinstance(X[0], Mapping)):
            a = np.asarray(X, dtype=np.float32)
            width = sum(self.feature_groups_.values())
            if a.ndim != 2 or a.shape[1] != width:
                raise ConfigError(
                    f"{HEAD}: expects embeddings of dimension {width} "
                    f"({', '.join(f'{g} {d}' for g, d in self.feature_groups_.items())}), got "
                    f"an array of shape {a.shape}")
            out, lo = {}, 0
            for g, d in self.feature_groups_.items():
                out[g] = a[:, lo:lo + d]
                lo += d
            return out
        groups, _ = as_features(X)
        for g, d in self.feature_groups_.items():
            if g not in groups:
                raise ConfigError(f"{HEAD}: input lacks feature group {g!r} (it has "
                                  f"{', '.join(groups)})")
            if groups[g].shape[1] != d:
                raise ConfigError(f"{HEAD}: expects {g!r} of dimension {d}, got "
                                  f"{groups[g].shape[1]}")
        return {g: groups[g] for g in self.feature_groups_}

    def _folded_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The layers with the input scaler folded into the first matrix (float32)."""
        if getattr(self, "_folded", None) is not None:
            return self._folded
        layers = [(np.asarray(W, np.float64), np.asarray(b, np.float64)) for W, b in self.layers_]
        layers[0] = fold_scaler(self.scalers_, self.feature_groups_, *layers[0])
        self._folded = [(W.astype(np.float32), b.astype(np.float32)) for W, b in layers]
        return self._folded

    def transform(self, X: Any, batch_size: int = 65536) -> np.ndarray:
        """Map embeddings into the learned space: ``(n, out_dim)`` float32, unit L2 rows."""
        groups = self.input_groups(X)
        layers = self._folded_layers()
        names = list(self.feature_groups_)
        n = len(groups[names[0]])
        out = np.empty((n, int(layers[-1][0].shape[1])), dtype=np.float32)
        for lo in range(0, n, batch_size):
            x = np.concatenate([_l2(groups[g][lo:lo + batch_size]) for g in names], axis=1) \
                if len(names) > 1 else _l2(groups[names[0]][lo:lo + batch_size])
            for W, b in layers[:-1]:
                x = np.maximum(x @ W + b, 0.0)
            out[lo:lo + batch_size] = _l2(x @ layers[-1][0] + layers[-1][1])
        return out

    def fit_transform(self, X: Any, identities: Any = None, **kw: Any) -> np.ndarray:
        return self.fit(X, identities, **kw).transform(X)

    def predict_outputs(self, X: Any) -> dict[str, np.ndarray]:
        raise ConfigError(f"{HEAD}: an identity-space head predicts no attributes; map embeddings "
                          "with transform() (faceprobe verify/identify --model BUNDLE)")

    # ---------------------------------------------------------------- bundle state
    @property
    def tasks_(self) -> list[str]:
        return [TASK]

    def get_state(self) -> dict[str, Any]:
        """JSON-able state (bundle.json); the matrices are ``get_arrays()`` (weights.npz)."""
        self._check_fitted()
        params = self.get_params()
        params["hidden"] = [int(h) for h in params["hidden"]]
        params["features"] = list(self.feature_groups_)
        return {"params": params, "tasks": [TASK], "vocabularies": {TASK: None},
                "feature_groups": dict(self.feature_groups_), "scalers": self.scalers_,
                "n_identities": self.n_identities_, "n_train_rows": self.n_train_rows_,
                "n_val_rows": self.n_val_rows_, "rows_ignored": self.rows_ignored_,
                "out_dim": int(self.layers_[-1][0].shape[1]), "layers": len(self.layers_),
                "history": self.history_, "best_epoch": self.best_epoch_}

    def get_arrays(self) -> dict[str, np.ndarray]:
        """The network: ``W0, b0, ..., Wk, bk`` (BatchNorm folded, input scaler not folded)."""
        self._check_fitted()
        out = {}
        for i, (W, b) in enumerate(self.layers_):
            out[f"W{i}"] = np.asarray(W, np.float32)
            out[f"b{i}"] = np.asarray(b, np.float32)
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> MarginHead:
        from faceprobe.heads.common import feature_groups_of

        head = cls(**state["params"])
        head.feature_groups_ = feature_groups_of(state)
        head.scalers_ = {g: dict(v) for g, v in state["scalers"].items()}
        n = int(state["layers"])
        head.layers_ = [(np.asarray(arrays[f"W{i}"], np.float32),
                         np.asarray(arrays[f"b{i}"], np.float32)) for i in range(n)]
        for k in ("n_identities", "n_train_rows", "n_val_rows", "rows_ignored"):
            setattr(head, k + "_", state.get(k))
        head.history_ = dict(state.get("history", {}))
        head.best_epoch_ = state.get("best_epoch")
        head.validate_layers()
        return head

    def validate_layers(self) -> None:
        """The matrices chain from the input width to ``out_dim`` (a damaged or mismatched
        weights file fails here, not in the middle of a transform)."""
        width = sum(self.feature_groups_.values())
        for i, (W, b) in enumerate(self.layers_):
            if W.ndim != 2 or W.shape[0] != width or b.shape != (W.shape[1],):
                raise ConfigError(f"{HEAD}: layer {i} has shape {W.shape} / {b.shape}, expected "
                                  f"({width}, *) after an input of width {width}")
            width = W.shape[1]
        for g, s in self.scalers_.items():
            if len(s["mean"]) != self.feature_groups_[g] or len(s["std"]) != len(s["mean"]):
                raise ConfigError(f"{HEAD}: scaler of {g!r} does not match its dimension "
                                  f"{self.feature_groups_[g]}")
