"""Train/validation/test splits over a store's usable rows.

Decisions:
- A dataset's official split wins when the store has one: ``train``/``val``/``test`` (CelebA's
  partition, also ``valid``/``validation``), ``train``/``test`` (MTFL: validation is carved out of
  train), or folds ``fold1..foldN`` (LFW: the last fold is test, the one before it validation,
  the rest train). Rows with no split value then go to train.
- Otherwise a seeded split stratified on one categorical task (the first the data has unless
  named; a missing label is its own stratum). Whenever identities are known the split is by
  identity (StratifiedGroupKFold: the held-out fold of ``round(1/fraction)`` folds), so no person
  sits on both sides; rows without an identity are each their own group. Test is taken first,
  then validation from the rest.
- The description records what was done plus a sha256 of the test rows' ids, so evaluating a
  bundle later can re-derive the same split and notice when the store's rows have changed.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from faceprobe.data.vocab import is_regression
from faceprobe.embed.store import StoreData
from faceprobe.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")
_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
            "validation": "val", "dev": "val", "test": "test", "testing": "test"}
_FOLD_RE = re.compile(r"^fold[_-]?(\d+)$", re.IGNORECASE)


@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    description: dict[str, Any] = field(default_factory=dict)

    def indices(self, name: str) -> np.ndarray:
        if name == "all":
            return np.sort(np.concatenate([self.train, self.val, self.test]))
        if name not in SPLIT_NAMES:
            raise ConfigError(f"split must be one of train, val, test, all, got {name!r}")
        return getattr(self, name)


def rows_sha256(data: StoreData, idx: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(data.row_id[idx], dtype=np.int64).tobytes()
                          ).hexdigest()


def _groups(data: StoreData) -> np.ndarray | None:
    ident = np.asarray(data.identity, dtype=object)
    known = np.array([bool(i) for i in ident])
    if not known.any():
        return None
    _, codes = np.unique(ident[known].astype(str), return_inverse=True)
    groups = np.empty(len(ident), dtype=np.int64)
    groups[known] = codes
    groups[~known] = codes.max() + 1 + np.arange((~known).sum()) if known.any() else 0
    return groups


def _strata(data: StoreData, task: str | None) -> tuple[np.ndarray | None, str | None]:
    if task is None:
        task = next((t for t, v in data.y.items() if not is_regression(t) and (v >= 0).any()),
                    None)
    if task is None:
        return None, None
    if task not in data.y or is_regression(task):
        raise ConfigError(f"stratify must name a categorical task in the data, got {task!r}")
    return np.asarray(data.y[task], dtype=np.int64), task


def _holdout(idx: np.ndarray, fraction: float, strata: np.ndarray | None,
             groups: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, held out ~fraction), by group when groups are given."""
    from sklearn.model_selection import (
        GroupShuffleSplit,
        StratifiedGroupKFold,
        StratifiedShuffleSplit,
        train_test_split,
    )

    if fraction <= 0 or len(idx) < 2:
        return idx, idx[:0]
    s = strata[idx] if strata is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members"
        if groups is not None:
            g = groups[idx]
            n_splits = max(2, round(1 / fraction))
            if len(np.unique(g)) < n_splits:
                raise ConfigError(f"only {len(np.unique(g))} identities: too few for an "
                                  f"identity-disjoint split of {fraction:.0%}")
            if s is not None:
                cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
                rest, held = next(cv.split(idx, s, g))
            else:
                gss = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
                rest, held = next(gss.split(idx, groups=g))
        else:
            try:
                if s is None:
                    raise ValueError
                sss = StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
                rest, held = next(sss.split(idx, s))
            except ValueError:  # a class with one row cannot be stratified
                rest, held = train_test_split(np.arange(len(idx)), test_size=fraction,
                                              random_state=seed)
    return np.sort(idx[rest]), np.sort(idx[held])


def _official(data: StoreData) -> tuple[dict[str, np.ndarray], str] | None:
    values = np.asarray(data.split, dtype=object).astype(str)
    names = set(np.unique(values)) - {""}
    if not names:
        return None
    folds = {n: int(m.group(1)) for n in names if (m := _FOLD_RE.match(n))}
    if folds and len(folds) == len(names) and len(folds) >= 3:
        order = sorted(folds, key=folds.get)
        test, val = order[-1], order[-2]
        parts = {"test": np.flatnonzero(values == test), "val": np.flatnonzero(values == val)}
        parts["train"] = np.flatnonzero((values != test) & (values != val))
        return parts, f"official folds: {test} test, {val} validation, {len(order) - 2} train"
    mapped = {n: _ALIASES.get(n.lower()) for n in names}
    if None in mapped.values() or "test" not in mapped.values():
        return None
    kind = np.array([mapped.get(v, "train") if v else "train" for v in values])
    parts = {k: np.flatnonzero(kind == k) for k in SPLIT_NAMES if (kind == k).any()}
    return parts, "official " + "/".join(k for k in SPLIT_NAMES if k in parts)


def make_split(data: StoreData, *, seed: int = 0, val_fraction: float = 0.15,
               test_fraction: float = 0.15, stratify: str | None = None,
               official: bool = True) -> Split:
    """Index arrays into ``data`` for train/val/test and a description of how they were made."""
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(f, (int, float)) or not 0 <= f < 0.9:
            raise ConfigError(f"split: {name} must be a number >= 0 and < 0.9, got {f!r}")
    n = len(data)
    strata, task = _strata(data, stratify)
    groups = _groups(data)
    desc: dict[str, Any] = {"seed": int(seed), "val_fraction": val_fraction,
                            "test_fraction": test_fraction, "stratify": task,
                            "identity_disjoint": groups is not None, "official": False}
    found = _official(data) if official else None
    if found is not None:
        parts, text = found
        desc.update(official=True, method=text)
        train = parts.get("train", np.zeros(0, np.int64))
        test = parts["test"]
        val = parts.get("val")
        if val is None:
            train, val = _holdout(train, val_fraction, strata, groups, seed)
            text += f"; validation carved from train ({val_fraction:.0%}, seed {seed}"
            text += ", identity-disjoint)" if groups is not None else ")"
        if groups is not None:
            shared = np.intersect1d(groups[train], groups[test]).size
            desc["identities_shared_train_test"] = int(shared)
            if shared:
                text += f"; note: {shared} identities appear in both train and test"
    else:
        rest, test = _holdout(np.arange(n), test_fraction, strata, groups, seed)
        share = val_fraction / max(1e-9, 1 - test_fraction)
        train, val = _holdout(rest, share, strata, groups, seed + 1)
        text = (f"seeded split (seed {seed}), stratified on {task}" if task
                else f"seeded random split (seed {seed})")
        text += ", identity-disjoint" if groups is not None else ", no identities known"
        desc["method"] = "identity-disjoint stratified" if groups is not None else "stratified"
    desc["counts"] = {"train": len(train), "val": len(val), "test": len(test)}
    desc["test_sha256"] = rows_sha256(data, test)
    desc["text"] = (f"{text}: {len(train)} train / {len(val)} val / {len(test)} test rows")
    if len(train) == 0:
        raise ConfigError(f"split left no training rows ({desc['text']})")
    return Split(np.asarray(train, np.int64), np.asarray(val, np.int64),
                 np.asarray(test, np.int64), desc)


def split_from_description(data: StoreData, desc: dict[str, Any]) -> Split:
    """Re-derive a recorded split on the same store rows."""
    return make_split(data, seed=int(desc.get("seed", 0)),
                      val_fraction=float(desc.get("val_fraction", 0.15)),
                      test_fraction=float(desc.get("test_fraction", 0.15)),
                      stratify=desc.get("stratify"), official=bool(desc.get("official", True)))
