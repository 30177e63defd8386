"""The multi-output Keras head: one shared trunk over stored embeddings, one output per task.

Decisions:
- Training runs the same network as a plain torch module and copies the weights into the Keras
  model afterwards. Measured on the 2-core box: ``keras.Model.fit`` spends 30-60 ms of Python per
  step on this 4-layer net (layer ``__call__`` bookkeeping), 20-30x the arithmetic, which made one
  10k-row fit take minutes and a 20-trial search impossible in 3 minutes; the torch loop takes
  ~2 ms a step. A test asserts the Keras model reproduces the torch outputs
  (``test_keras_model_reproduces_the_torch_trained_network``).
- Where things are: this module is the estimator (parameters, targets, fit/refit, predict,
  bundle state); ``keras_torch`` the torch network, loss and training loop; ``keras_model`` the
  saved Keras model (its layers, the weight copy, the folded inference). Both are imported by
  this one and import nothing of it.
- Age in years is read as the expectation over the ``age_group`` softmax (``expected``, the
  default), using the mean training age inside each bin (not the bin midpoint: the open-ended
  last bin has none), or regressed on a standardised target with a Huber loss (``regression``;
  delta 0.25 std = ~5 years). Measured on dlib UTKFace embeddings (same split, 4 seeds): the
  expectation gave age MAE 5.50 on validation and test against 6.3-6.4 for the regression, with
  gender and race unchanged; a loss weight for ``age`` applies to the ``age_group`` output then.
- Early stopping on validation loss restores the best epoch's weights. Without a validation set,
  10% of the training rows (seeded) are held out for it. ``early_stopping=False`` trains exactly
  ``epochs`` epochs on every row given; ``refit`` uses it to retrain on train + validation for the
  epoch count early stopping chose (what ``train``/``tune`` do once validation metrics are
  measured, as for the baselines: on UTKFace, mean of 4 seeds, test race 0.832 -> 0.841, gender
  0.880 -> 0.885, age MAE 5.50 -> 5.47).
- Labels in and out are the store's codes (sklearn's "same labels as y"); class names live in
  ``vocabularies_``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from faceprobe.data.vocab import AGE, AGE_GROUPS
from faceprobe.errors import ConfigError
from faceprobe.heads.common import (
    AGE_GROUP,
    HeadMixin,
    as_dataset,
    check,
    check_choice,
    check_number,
    class_weights,
    feature_groups_of,
    features_of,
    fit_scaler,
    present,
    resolve_tasks,
    task_labels,
    vocab_for,
)
from faceprobe.heads.keras_model import _build_model, _copy_weights, _fused_layers, _run_fused
from faceprobe.heads.keras_torch import _train_torch
from faceprobe.threads import torch_threads

HEAD = "KerasHead"
_AGE_MIDPOINTS = [1.0, 6.0, 14.5, 24.5, 34.5, 44.5, 54.5, 64.5, 75.0]
_PREDICT_BATCH = 65536


# The age regression loss (Huber on standardised years) is small beside the cross-entropies, so
# early stopping on their sum stops before age has converged. Weighting it 4x (measured on dlib
# UTKFace embeddings, gender/race/age heads): age MAE 8.7 -> 7.6 years, gender and race unchanged
# or better. Only for age_mode="regression"; explicit loss_weights override it.
REGRESSION_AGE_LOSS_WEIGHT = 4.0


class KerasHead(HeadMixin):
    """Multi-task MLP over stored features, shaped as a scikit-learn estimator."""

    kind = "mlp"

    def __init__(self, tasks: Sequence[str] | str | None = None, hidden: Sequence[int] = (256,),
                 dropout: float = 0.3, lr: float = 1e-3, batch_size: int = 256,
                 epochs: int = 200, patience: int = 10,
                 loss_weights: Mapping[str, float] | None = None,
                 class_weighting: str = "inverse", age_mode: str = "expected",
                 features: Sequence[str] | None = None, norm: str = "batch",
                 weight_decay: float = 1e-4, early_stopping: bool = True, seed: int = 0,
                 verbose: int = 0):
        self.tasks = tasks
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.batch_size = batch_size
        self.epochs = epochs
        self.patience = patience
        self.loss_weights = loss_weights
        self.class_weighting = class_weighting
        self.age_mode = age_mode
        self.features = features
        self.norm = norm
        self.weight_decay = weight_decay
        self.early_stopping = early_stopping
        self.seed = seed
        self.verbose = verbose

    _NAME = HEAD
    _PARAMS = ("tasks", "hidden", "dropout", "lr", "batch_size", "epochs", "patience",
               "loss_weights", "class_weighting", "age_mode", "features", "norm",
               "weight_decay", "early_stopping", "seed", "verbose")

    def __repr__(self) -> str:
        return f"KerasHead(tasks={self.tasks!r}, hidden={tuple(self.hidden)!r}, dropout={self.dropout})"

    def _validate(self) -> None:
        hidden = self.hidden
        check(HEAD, "hidden", isinstance(hidden, (list, tuple)) and all(
            isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h > 0 for h in hidden),
            "a list of positive integers (empty for a linear head)", hidden)
        check_number(HEAD, "dropout", self.dropout, 0.0, 0.95)
        check_number(HEAD, "lr", self.lr, 0.0, 1.0, lo_open=True)
        check_number(HEAD, "batch_size", self.batch_size, 1, integer=True)
        check_number(HEAD, "epochs", self.epochs, 1, integer=True)
        check_number(HEAD, "patience", self.patience, 0, integer=True)
        check_number(HEAD, "weight_decay", self.weight_decay, 0.0)
        check_number(HEAD, "seed", self.seed, 0, integer=True)
        check_choice(HEAD, "class_weighting", self.class_weighting, ("inverse", "none"))
        check_choice(HEAD, "age_mode", self.age_mode, ("regression", "expected"))
        check_choice(HEAD, "norm", self.norm, ("batch", "layer", "none"))
        check_choice(HEAD, "early_stopping", self.early_stopping, (True, False))
        lw = self.loss_weights
        check(HEAD, "loss_weights", lw is None or (isinstance(lw, Mapping) and all(
            isinstance(v, (int, float)) and v >= 0 for v in lw.values())),
            "None or a dict task -> non-negative number", lw)

    # ---------------------------------------------------------------- fit
    def fit(self, data: Any, y: Mapping | None = None, *, validation: Any = None,
            vocabularies: Mapping[str, list[str] | None] | None = None,
            callbacks: Sequence[Any] | None = None) -> KerasHead:
        """Fit on StoreData or (X, y); ``validation`` the same (else 10% of rows are held out
        for early stopping; none with ``early_stopping=False``). ``callbacks`` are called as
        ``cb(epoch, logs)`` after each epoch (progress, tuners)."""
        self._validate()
        self._fused = None
        ds = as_dataset(data, y)
        tasks = resolve_tasks(self.tasks, ds.y, HEAD)
        if self.loss_weights:
            unknown = [t for t in self.loss_weights if t not in tasks]
            check(HEAD, "loss_weights", not unknown, f"keyed by the fitted tasks ({', '.join(tasks)})",
                  dict(self.loss_weights))
        groups = features_of(ds.X, self.features)
        if validation is None and not self.early_stopping:
            val = None
        elif validation is None:
            rng = np.random.default_rng(self.seed)
            order = rng.permutation(len(ds))
            n_val = max(1, len(ds) // 10)
            val_idx, tr_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
            val = _take(ds, val_idx)
            ds = _take(ds, tr_idx)
        else:
            val = as_dataset(validation)

        self.tasks_ = tasks
        self.feature_groups_ = {g: int(ds.X[g].shape[1]) for g in groups}
        self.scalers_ = {}
        for g in groups:
            mean, std = fit_scaler(ds.X[g])
            self.scalers_[g] = {"mean": mean.tolist(), "std": std.tolist()}
        # Outputs the network has: every categorical task asked for, plus age_group when age is
        # read from it, plus a regression unit for age.
        outputs = [t for t in tasks if t != AGE]
        if AGE in tasks and self.age_mode == "expected" and AGE_GROUP not in outputs:
            outputs.append(AGE_GROUP)
        self.outputs_ = outputs + ([AGE] if AGE in tasks and self.age_mode == "regression" else [])
        self.vocabularies_ = {}
        targets, val_targets, self.class_weights_ = {}, {}, {}
        for t in self.outputs_:
            yt = task_labels(t, ds.y)
            if not present(t, yt).any():
                raise ConfigError(f"{HEAD}: task {t!r} has no labelled training rows")
            vt = task_labels(t, val.y) if val is not None else yt[:0]
            if t == AGE:
                self.vocabularies_[t] = None
                mu, sd = float(np.nanmean(yt)), float(np.nanstd(yt)) or 1.0
                self.age_scale_ = {"mean": mu, "std": sd}
                targets[t] = ((yt - mu) / sd).astype("float32")
                val_targets[t] = ((vt - mu) / sd).astype("float32")
                continue
            voc = vocab_for(t, yt, vocabularies)
            self.vocabularies_[t] = voc
            self.class_weights_[t] = class_weights(yt, len(voc), self.class_weighting).tolist()
            targets[t] = yt.astype("float32")
            val_targets[t] = vt.astype("float32")
        if AGE in tasks:
            self.vocabularies_[AGE] = None
            if self.age_mode == "expected":
                self.age_bin_means_ = _bin_means(ds.y)

        lw = {t: self._loss_weight(t, tasks) for t in self.outputs_}
        start = time.perf_counter()
        with torch_threads(1):
            net, self.history_, self.best_epoch_ = _train_torch(self, ds, val, targets,
                                                                val_targets, lw, callbacks)
            self.model_ = _build_model(self)
            _copy_weights(net, self.model_, self)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _loss_weight(self, output: str, tasks: Sequence[str]) -> float:
        given = dict(self.loss_weights or {})
        if output == AGE_GROUP and AGE_GROUP not in tasks:  # expected age is read from it
            return float(given.get(AGE, 1.0))
        default = REGRESSION_AGE_LOSS_WEIGHT if output == AGE else 1.0
        return float(given.get(output, default))

    def refit(self, data: Any, y: Mapping | None = None, *,
              vocabularies: Mapping[str, list[str] | None] | None = None) -> KerasHead:
        """Retrain from scratch on ``data`` (train + validation rows, typically) for the epoch
        count the early-stopped fit chose, holding nothing out. The parameters then say so
        (``epochs`` = that count, ``early_stopping=False``), so they reproduce this model; the
        early-stopped fit's history is kept, with the refit's loss as ``refit_loss``."""
        self._check_fitted()
        history, best_epoch = self.history_, self.best_epoch_
        self.set_params(epochs=max(1, int(best_epoch or self.epochs)), early_stopping=False)
        self.fit(data, y, vocabularies=vocabularies)
        self.history_ = {**history, "refit_loss": self.history_["loss"]}
        self.best_epoch_ = best_epoch
        return self

    # ---------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise ConfigError(f"{HEAD}: not fitted yet; call fit() first")

    def predict_outputs(self, X: Any, *, fused: bool = True) -> dict[str, np.ndarray]:
        """One forward pass: class probabilities per categorical output, age in years.

        ``fused`` runs the folded network (see ``keras_model._fused_layers``) instead of calling
        the Keras model; both give the same numbers up to float rounding (a test checks it)."""
        import torch

        self._check_fitted()
        ds = as_dataset(X)
        missing = [g for g in self.feature_groups_ if g not in ds.X]
        if missing:
            raise ConfigError(f"{HEAD}: input lacks feature group(s) {', '.join(missing)}")
        n = len(ds)
        layers = _fused_layers(self) if fused and self.norm != "layer" else None
        out: dict[str, list[np.ndarray]] = {t: [] for t in self.outputs_}
        with torch.no_grad(), torch_threads(1):
            for lo in range(0, n, _PREDICT_BATCH):
                batch = {g: ds.X[g][lo:lo + _PREDICT_BATCH] for g in self.feature_groups_}
                res = _run_fused(self, layers, batch) if layers else self._run_keras(batch)
                for t in self.outputs_:
                    out[t].append(res[t])
        res_np = {t: (np.concatenate(v) if v else np.zeros((0, 1), np.float32))
                  for t, v in out.items()}
        result: dict[str, np.ndarray] = {}
        for t in self.outputs_:
            if t == AGE:
                s = self.age_scale_
                result[AGE] = np.maximum(res_np[t][:, 0] * s["std"] + s["mean"], 0.0)
            else:
                result[t] = res_np[t]
        if AGE in self.tasks_ and self.age_mode == "expected":
            result[AGE] = result[AGE_GROUP] @ np.asarray(self.age_bin_means_, dtype=np.float32)
            if AGE_GROUP not in self.tasks_:
                del result[AGE_GROUP]
        return result

    def _run_keras(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from keras import ops

        res = self.model_(batch, training=False)
        return {t: ops.convert_to_numpy(res[t]) for t in self.outputs_}

    # ---------------------------------------------------------------- bundle state
    def get_state(self) -> dict[str, Any]:
        """The learned state except the network, as JSON-able values (for bundle.json)."""
        self._check_fitted()
        params = self.get_params()
        params["hidden"] = [int(h) for h in params["hidden"]]
        params["tasks"] = list(self.tasks_)
        params["features"] = list(self.feature_groups_)
        state = {"params": params, "tasks": self.tasks_, "outputs": self.outputs_,
                 "vocabularies": self.vocabularies_, "feature_groups": self.feature_groups_,
                 "scalers": self.scalers_, "class_weights": self.class_weights_,
                 "history": self.history_, "best_epoch": self.best_epoch_}
        for k in ("age_scale_", "age_bin_means_"):
            if hasattr(self, k):
                state[k.rstrip("_")] = getattr(self, k)
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any], model: Any) -> KerasHead:
        head = cls(**state["params"])
        head.tasks_ = list(state["tasks"])
        head.outputs_ = list(state["outputs"])
        head.vocabularies_ = dict(state["vocabularies"])
        head.feature_groups_ = feature_groups_of(state)
        head.scalers_ = dict(state["scalers"])
        head.class_weights_ = dict(state.get("class_weights", {}))
        head.history_ = dict(state.get("history", {}))
        head.best_epoch_ = state.get("best_epoch")
        if "age_scale" in state:
            head.age_scale_ = dict(state["age_scale"])
        if "age_bin_means" in state:
            head.age_bin_means_ = list(state["age_bin_means"])
        head.model_ = model
        return head


def _take(ds, idx):
    from faceprobe.heads.common import Dataset

    return Dataset({k: v[idx] for k, v in ds.X.items()}, {k: v[idx] for k, v in ds.y.items()})


def _bin_means(y: Mapping[str, np.ndarray]) -> list[float]:
    """Mean training age inside each age_group bin (the bin midpoint where a bin is empty)."""
    means = list(_AGE_MIDPOINTS)
    if AGE not in y:
        return means
    age = np.asarray(y[AGE], dtype=np.float64)
    groups = task_labels(AGE_GROUP, {AGE: age})
    for k in range(len(AGE_GROUPS)):
        sel = (groups == k) & ~np.isnan(age)
        if sel.any():
            means[k] = float(age[sel].mean())
    return means
