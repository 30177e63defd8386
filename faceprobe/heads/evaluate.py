"""Minimal evaluation of a bundle on a store split (the report issue extends it).

Decisions:
- The split is re-derived from the description recorded in the bundle, on the store's usable
  rows. On the store the bundle was trained from, the test rows' id hash must match the recorded
  one, otherwise the store changed since training and the "test" rows could include training
  rows: that is refused rather than reported as a test score.
- Age metrics are reported both under ``tasks.age`` and at the top level ``age``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from faceprobe.data.vocab import AGE
from faceprobe.embed.store import Store
from faceprobe.errors import BundleError
from faceprobe.heads.common import present, task_labels


def compute_metrics(y: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                    tasks: list[str]) -> dict[str, Any]:
    """Per-task metrics on the rows where the task is labelled."""
    import warnings

    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    res: dict[str, Any] = {"tasks": {}}
    for t in tasks:
        if t not in outputs:
            continue
        try:
            yt = task_labels(t, y)
        except Exception:  # the store has no labels for it: nothing to score
            continue
        m = present(t, yt)
        if t == AGE:
            pred = np.asarray(outputs[t], np.float64)[m]
            entry = {"mae": float(np.abs(pred - yt[m]).mean()) if m.any() else None,
                     "n": int(m.sum())}
            res["tasks"][t] = entry
            res["age"] = entry
            continue
        pred = np.asarray(outputs[t]).argmax(axis=1)[m]
        truth = yt[m].astype(np.int64)
        with warnings.catch_warnings():  # a class predicted but absent from a small split
            warnings.simplefilter("ignore", UserWarning)
            res["tasks"][t] = {
                "accuracy": float(accuracy_score(truth, pred)) if m.any() else None,
                "balanced_accuracy": float(balanced_accuracy_score(truth, pred))
                if m.any() else None,
                "n": int(m.sum()),
            }
    return res


def select_rows(bundle: Any, store: Store, split: str = "test") -> tuple[Any, str]:
    """The store rows a bundle is evaluated on, and how they were chosen.

    Labels of every task the store has are loaded (not only the bundle's), so reports can break
    metrics down by demographic labels the head was not trained on."""
    from faceprobe.heads.splits import split_from_description

    bundle.check_store(store)
    data = store.load(features=list(bundle.features), tasks=list(store.vocabularies))
    desc = bundle.meta.get("split") or {}
    same_store = (bundle.meta.get("store") or {}).get("records_sha256") == \
        store.meta.get("records_sha256")
    if split == "all":
        idx, text = np.arange(len(data)), "all usable rows"
    else:
        sp = split_from_description(data, desc)
        idx = sp.indices(split)
        text = sp.description["text"]
        if split in ("val", "train") and desc.get("refit") == "train+val":
            text += "; note: the head was refitted on train+val, so these rows were trained on"
        if split == "test" and same_store and desc.get("test_sha256") \
                and sp.description["test_sha256"] != desc["test_sha256"]:
            raise BundleError(
                f"store {store.path} has other usable rows than when bundle {bundle.path} was "
                "trained, so its test split would mix in training rows; retrain, or evaluate "
                "with --split all")
    if not len(idx):
        raise BundleError(f"split {split!r} of store {store.path} has no rows ({text})")
    return data.subset(idx), text


def evaluate_bundle(bundle: Any, store: Store | str, split: str = "test") -> dict[str, Any]:
    """``{"tasks": {task: {"accuracy", "balanced_accuracy", "n"} | {"mae", "n"}}, "age": ...}``"""
    store = store if isinstance(store, Store) else Store(store)
    sub, text = select_rows(bundle, store, split)
    outputs = bundle.predict_outputs({g: sub.X[g] for g in bundle.features})
    res = compute_metrics(sub.y, outputs, bundle.tasks)
    res.update({"split": split, "rows": len(sub), "split_description": text,
                "store": str(store.path), "bundle": str(bundle.path), "head": bundle.kind})
    return res


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A small fixed-width table: task, n, accuracy, balanced accuracy / MAE."""
    lines = [f"{'task':<16}{'n':>8}{'accuracy':>10}{'bal.acc':>10}{'MAE':>8}"]
    for t, m in metrics.get("tasks", {}).items():
        if "mae" in m:
            mae = "-" if m["mae"] is None else f"{m['mae']:.2f}"
            lines.append(f"{t:<16}{m['n']:>8}{'':>10}{'':>10}{mae:>8}")
        else:
            acc = "-" if m["accuracy"] is None else f"{m['accuracy']:.4f}"
            bac = "-" if m["balanced_accuracy"] is None else f"{m['balanced_accuracy']:.4f}"
            lines.append(f"{t:<16}{m['n']:>8}{acc:>10}{bac:>10}{'':>8}")
    return "\n".join(lines)
