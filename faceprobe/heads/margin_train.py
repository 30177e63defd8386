"""Training a ``MarginHead`` on a store: ``identification_accuracy`` (top-1 over held-out
identities), ``load_identity_rows``, ``fit_margin_on_split`` and ``train_margin_store``
(``faceprobe train --head arcface``).

The torch network and loop behind ``MarginHead.fit`` are in ``faceprobe.heads.margin_torch``; the
model, its defaults and the decisions behind them are described in ``faceprobe.heads.margin``.
Imports run one way: this module -> ``margin`` -> ``margin_torch`` (inside ``fit`` only), and
this module -> ``train`` / ``bundle`` for the store-level pieces, none of which imports it back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from faceprobe.embed.store import StoreData
from faceprobe.errors import ConfigError
from faceprobe.heads.margin import KIND, TASK, MarginHead, _l2, _missing_identity


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
