"""What every head shares: input normalisation, parameter checks, class weights, task plumbing.

Decisions:
- A head is fitted on ``StoreData`` or on ``(X, y)`` dicts with the store's encoding (categorical
  labels as int codes with -1 missing, age as float with NaN missing). Vocabularies come with
  ``fit(..., vocabularies=)``; without them a task's classes are its codes as strings.
- Parameters are checked at ``fit`` (sklearn's convention), each failure a ``ConfigError`` of the
  form ``"<Head>: <param> must be <what>, got <value>"`` so every message reads the same.
- Torch runs the small networks here on one thread: a 1024x256 dense step gains nothing from
  OpenMP's second thread, and on a shared 2-core machine its barrier waits made steps 5-10x
  slower (measured: 2 ms/step on 1 thread vs 10-35 ms on 2 under load).
- Inverse-frequency class weights are ``w_c = (1/n_c) / mean_j(1/n_j)`` over the classes present
  in the training rows, so the mean weight over classes is 1 and a balanced task gets all ones.
  A class absent from training gets weight 0 (it cannot be learnt; it is not a division by zero).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from faceprobe.data.vocab import AGE, AGE_GROUPS, age_group, is_regression
from faceprobe.embed.store import StoreData
from faceprobe.errors import ConfigError

AGE_GROUP = "age_group"
_AGE_GROUP_INDEX = {name: i for i, name in enumerate(AGE_GROUPS)}


@dataclass
class Dataset:
    """Features and labels of one fit/predict call, already split into the two dicts."""

    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.X.values())))


def as_dataset(data: Any, y: Mapping | None = None) -> Dataset:
    """``StoreData``, ``(X, y)``, or ``X`` with ``y`` given separately -> Dataset."""
    if isinstance(data, StoreData):
        return Dataset(dict(data.X), dict(data.y))
    if isinstance(data, Dataset):
        return data
    if isinstance(data, tuple) and len(data) == 2 and y is None:
        data, y = data
    if isinstance(data, np.ndarray):
        data = {"embedding": data}
    if not isinstance(data, Mapping) or not data:
        raise ConfigError("training data must be StoreData, (X, y) dicts, or an X dict "
                          "(feature group -> (n, dim) array)")
    X = {k: np.asarray(v, dtype=np.float32) for k, v in data.items()}
    n = {len(v) for v in X.values()}
    if len(n) != 1:
        raise ConfigError(f"feature groups have different row counts: {sorted(n)}")
    return Dataset(X, {k: np.asarray(v) for k, v in (y or {}).items()})


def features_of(X: Mapping[str, np.ndarray], features: Sequence[str] | None) -> list[str]:
    groups = list(features) if features else (["embedding"] if "embedding" in X else sorted(X))
    missing = [g for g in groups if g not in X]
    if missing:
        raise ConfigError(f"feature group(s) {', '.join(missing)} not in the data "
                          f"(it has {', '.join(X) or 'none'})")
    return groups


def feature_groups_of(state: Mapping) -> dict[str, int]:
    """A saved head's feature groups in the order it concatenated them when fitted. bundle.json
    is written with sorted keys, so the ``feature_groups`` mapping comes back alphabetical; the
    ``params['features']`` list keeps the fit order (with two groups of equal width, e.g. two
    128-d backbones, the alphabetical order silently swapped them)."""
    dims = {str(k): int(v) for k, v in state["feature_groups"].items()}
    order = list((state.get("params") or {}).get("features") or dims)
    if sorted(order) != sorted(dims):
        order = list(dims)
    return {g: dims[g] for g in order}


def concat_features(X: Mapping[str, np.ndarray], groups: Sequence[str]) -> np.ndarray:
    arrs = [np.asarray(X[g], dtype=np.float32) for g in groups]
    return arrs[0] if len(arrs) == 1 else np.concatenate(arrs, axis=1)


def fit_scaler(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std, with near-constant columns given std 1 so standardising never divides by ~0."""
    mean = a.mean(axis=0, dtype=np.float64)
    std = a.std(axis=0, dtype=np.float64)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def fold_scaler(scalers: Mapping[str, Mapping], groups: Sequence[str], W: np.ndarray,
                b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first layer ``x @ W + b`` with the groups' input standardisation ``(x - mean) / std``
    folded in (float64), so scoring skips the scaler."""
    mean = np.concatenate([np.asarray(scalers[g]["mean"], np.float64) for g in groups])
    std = np.concatenate([np.asarray(scalers[g]["std"], np.float64) for g in groups])
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    return W / std[:, None], b - (mean / std) @ W


def resolve_tasks(tasks: Iterable[str] | str | None, y: Mapping[str, np.ndarray], head: str
                  ) -> list[str]:
    if tasks is None:
        return list(y)
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    tasks = list(dict.fromkeys(tasks))
    if not tasks:
        raise ConfigError(f"{head}: tasks must name at least one task")
    return tasks


def vocab_for(task: str, y: np.ndarray, vocabularies: Mapping | None) -> list[str] | None:
    if is_regression(task):
        return None
    if vocabularies and vocabularies.get(task):
        return [str(c) for c in vocabularies[task]]
    if task == AGE_GROUP:
        return list(AGE_GROUPS)
    codes = y[y >= 0]
    k = int(codes.max()) + 1 if len(codes) else 1
    return [str(i) for i in range(k)]


def derive_age_group(age: np.ndarray) -> np.ndarray:
    """Age in years -> age_group codes (-1 where age is missing)."""
    out = np.full(len(age), -1, dtype=np.int64)
    ok = ~np.isnan(age)
    out[ok] = [_AGE_GROUP_INDEX[age_group(float(a))] for a in age[ok]]
    return out


def class_weights(codes: np.ndarray, k: int, mode: str = "inverse") -> np.ndarray:
    """Per-class weights for a task with ``k`` classes; codes -1 (missing) are ignored."""
    if mode == "none":
        return np.ones(k, dtype=np.float32)
    counts = np.bincount(codes[codes >= 0].astype(np.int64), minlength=k)[:k].astype(np.float64)
    w = np.zeros(k)
    present = counts > 0
    if present.any():
        w[present] = 1.0 / counts[present]
        w[present] /= w[present].mean()
    return w.astype(np.float32)


def check(head: str, name: str, ok: bool, what: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{head}: {name} must be {what}, got {value!r}")


def check_choice(head: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    check(head, name, value in choices, "one of " + ", ".join(map(repr, choices)), value)


def check_number(head: str, name: str, value: Any, lo: float, hi: float | None = None,
                 integer: bool = False, lo_open: bool = False) -> None:
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, (int, np.integer) if integer else (int, float, np.number)) \
        and not isinstance(value, bool)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (hi is None or value <= hi)
    rng = f"{'>' if lo_open else '>='} {lo}" + ("" if hi is None else f" and <= {hi}")
    check(head, name, ok, f"{kind} {rng}", value)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def task_labels(task: str, y: Mapping[str, np.ndarray]) -> np.ndarray:
    """A task's training targets, deriving age_group from age when only age is stored."""
    if task in y:
        return np.asarray(y[task])
    if task == AGE_GROUP and AGE in y:
        return derive_age_group(np.asarray(y[AGE], dtype=np.float64))
    raise ConfigError(f"no labels for task {task!r} in the training data "
                      f"(it has {', '.join(y) or 'none'})")


def present(task: str, y: np.ndarray) -> np.ndarray:
    return ~np.isnan(y) if is_regression(task) else (y >= 0)


def progress_bar(show: bool, total: int | None, unit: str, desc: str):
    """A tqdm bar on stderr (stdout stays clean for ``--json``), drawn only when ``show``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not show, file=sys.stderr,
                dynamic_ncols=True)


class HeadMixin:
    """What every head shares over its own ``predict_outputs``: scikit-learn's
    get_params/set_params over ``_PARAMS`` (``_NAME`` in messages), ``predict_proba`` (class
    probabilities per categorical task) and ``predict`` (class codes, age in years)."""

    _PARAMS: tuple[str, ...] = ()
    _NAME = "head"

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._PARAMS}

    def set_params(self, **params: Any):
        for k, v in params.items():
            if k not in self._PARAMS:
                raise ConfigError(f"{self._NAME}: unknown parameter {k!r}; it has "
                                  f"{', '.join(self._PARAMS)}")
            setattr(self, k, v)
        return self

    def predict_proba(self, X: Any) -> dict[str, np.ndarray]:
        return {t: v for t, v in self.predict_outputs(X).items() if t != AGE}

    def predict(self, X: Any) -> dict[str, np.ndarray]:
        return {t: (v if t == AGE else v.argmax(axis=1))
                for t, v in self.predict_outputs(X).items()}


class EarlyStopping:
    """The best-epoch bookkeeping of the torch training loops (``keras_torch``, ``margin_torch``):
    ``update`` after each epoch keeps a copy of the weights of the epoch with the lowest
    validation loss (an improvement is a drop of more than 1e-6) and says when ``patience``
    epochs in a row have not improved; ``restore`` loads that copy back. Disabled, every epoch
    counts as the best and the weights are left as trained."""

    def __init__(self, patience: int, enabled: bool = True):
        self.patience = int(patience)
        self.enabled = enabled
        self.best, self.best_epoch, self.waited = float("inf"), 0, 0
        self.best_state: dict | None = None

    def update(self, net, epoch: int, val_loss: float) -> bool:
        """Record ``epoch`` (0-based); True when training should stop."""
        if not self.enabled:
            self.best_epoch = epoch + 1
        elif val_loss < self.best - 1e-6:
            self.best, self.best_epoch, self.waited = val_loss, epoch + 1, 0
            self.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            self.waited += 1
            return self.waited > self.patience
        return False

    def restore(self, net) -> None:
        if self.best_state is not None:
            net.load_state_dict(self.best_state)


def train_epoch(net, opt, n: int, batch_size: int, gen, batch_loss, min_batch: int = 1) -> float:
    """One epoch of the torch training loops: ``net`` in train mode, the ``n`` training rows in
    an order drawn from ``gen``, one optimiser step per batch on ``batch_loss(idx)``; batches
    under ``min_batch`` rows are skipped (2 where BatchNorm cannot normalise a batch of one).
    Returns the mean batch loss."""
    import torch

    net.train()
    perm = torch.randperm(n, generator=gen)
    total, steps = 0.0, 0
    for lo in range(0, n, batch_size):
        idx = perm[lo:lo + batch_size]
        if len(idx) < min_batch:
            continue
        loss = batch_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach())
        steps += 1
    return total / max(steps, 1)
