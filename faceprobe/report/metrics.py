"""Evaluation metrics, bootstrap confidence intervals and per-group (fairness) breakdowns.

Every number comes from ``sklearn.metrics``; this module only decides what to compute on which
rows. Conventions:
- Categorical tasks: ``y_true`` int codes into ``classes`` (-1 = missing, dropped), ``proba``
  (n, k) class probabilities; predictions are the arg-max.
- Age: ``y_true``/``y_pred`` in years (NaN = missing, dropped).
- Confidence intervals: percentile bootstrap over rows (``n_boot`` resamples, seeded), 95%.
- Fairness: each headline metric per value of every demographic label the rows have (and per
  intersection of the first two), with the largest gap between groups of at least
  ``min_group`` rows (smaller groups are listed but not used for the gap: their metric is noise).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn import metrics as skm

from faceprobe.data.vocab import AGE_GROUPS, age_group
from faceprobe.errors import ConfigError

DEMOGRAPHIC_TASKS = ("gender", "race", "age_group", "Male", "Young")
CI_LEVEL = 0.95


def bootstrap_ci(metric: Callable[..., float], arrays: Sequence[np.ndarray], *,
                 n_boot: int = 500, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric(*arrays)`` resampling rows with replacement."""
    n = len(arrays[0])
    if n < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_boot):
            idx = rng.integers(0, n, n)
            try:
                v = metric(*(a[idx] for a in arrays))
            except ValueError:  # e.g. a resample with one class for ROC AUC
                continue
            if np.isfinite(v):
                values.append(v)
    if not values:
        return (float("nan"), float("nan"))
    alpha = (1 - CI_LEVEL) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return (float(lo), float(hi))


def _roc_auc(y: np.ndarray, proba: np.ndarray, k: int) -> float:
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if k == 2:
        return float(skm.roc_auc_score(y, proba[:, 1]))
    # one-vs-rest over the classes present in y; probabilities renormalised over them
    p = proba[:, present]
    p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    return float(skm.roc_auc_score(y, p, multi_class="ovr", labels=present, average="macro"))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], *,
                           n_boot: int = 500, seed: int = 0) -> dict:
    """All classification metrics for one task (rows with y_true == -1 dropped)."""
    y_true = np.asarray(y_true)
    keep = y_true >= 0
    y, p = y_true[keep].astype(int), np.asarray(proba)[keep]
    k = len(classes)
    if len(y) == 0:
        return {"n": 0}
    if y.max() >= k or p.ndim != 2 or p.shape[1] != k:
        # labels in another vocabulary than the predictions' (heads.evaluate.align_tasks maps
        # them first); a clear error rather than an IndexError deep in the ROC code
        raise ConfigError(f"true labels (codes up to {int(y.max())}) or probabilities "
                          f"({p.shape[-1]} columns) do not fit the {k} classes "
                          f"{', '.join(map(str, classes))}; match the vocabularies first")
    pred = p.argmax(axis=1)
    labels = list(range(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = skm.classification_report(
            y, pred, labels=labels, target_names=list(classes), output_dict=True, zero_division=0
        )
        out = {
            "n": int(len(y)),
            "accuracy": float(skm.accuracy_score(y, pred)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
            "cohen_kappa": float(skm.cohen_kappa_score(y, pred, labels=labels)),
            "roc_auc": _roc_auc(y, p, k),
            "per_class": {c: {m: float(report[c][m]) for m in
                              ("precision", "recall", "f1-score", "support")} for c in classes},
            "macro_avg": {m: float(v) for m, v in report["macro avg"].items()},
            "weighted_avg": {m: float(v) for m, v in report["weighted avg"].items()},
            "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
            "classes": list(classes),
        }
    out["ci"] = {
        "accuracy": bootstrap_ci(skm.accuracy_score, [y, pred], n_boot=n_boot, seed=seed),
        "balanced_accuracy": bootstrap_ci(
            skm.balanced_accuracy_score, [y, pred], n_boot=n_boot, seed=seed),
    }
    if np.isfinite(out["roc_auc"]):
        out["ci"]["roc_auc"] = bootstrap_ci(
            lambda a, b: _roc_auc(a, b, k), [y, p], n_boot=min(n_boot, 200), seed=seed)
    return out


def _cs5(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.abs(y - pred) <= 5.0))


def _rmse(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sqrt(skm.mean_squared_error(y, pred)))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, *, n_boot: int = 500,
                       seed: int = 0) -> dict:
    """Age metrics in years (rows with NaN truth dropped)."""
    y_true = np.asarray(y_true, dtype=float)
    keep = np.isfinite(y_true)
    y, pred = y_true[keep], np.asarray(y_pred, dtype=float)[keep]
    if len(y) == 0:
        return {"n": 0}
    groups = np.array([age_group(a) for a in y])
    per_group = {}
    for g in AGE_GROUPS:
        m = groups == g
        if m.any():
            per_group[g] = {"mae": float(skm.mean_absolute_error(y[m], pred[m])), "n": int(m.sum())}
    return {
        "n": int(len(y)),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "rmse": _rmse(y, pred),
        "cs5": _cs5(y, pred),
        "mae_per_age_group": per_group,
        "ci": {"mae": bootstrap_ci(skm.mean_absolute_error, [y, pred], n_boot=n_boot, seed=seed)},
    }


def _headline(task_metrics: dict) -> str:
    return "mae" if "mae" in task_metrics else "accuracy"


def group_breakdown(y_true: np.ndarray, score_fn: Callable[[np.ndarray], float | None],
                    groups: dict[str, tuple[np.ndarray, Sequence[str] | None]], *,
                    min_group: int = 10) -> dict:
    """``score_fn(mask) -> metric`` for each value of each grouping label.

    ``groups``: name -> (per-row codes or values, vocabulary or None). Returns, per grouping,
    {"groups": {value: {"value", "n"}}, "gap", "highest", "lowest"}.
    """
    out = {}
    for name, (codes, vocab) in groups.items():
        codes = np.asarray(codes)
        if vocab is not None:
            valid = codes >= 0
            names = np.array([vocab[c] if c >= 0 else "" for c in codes], dtype=object)
        else:
            names = codes.astype(object)
            valid = names != ""
        table = {}
        for value in sorted(set(names[valid])):
            m = valid & (names == value)
            v = score_fn(m)
            if v is None:
                continue
            table[str(value)] = {"value": float(v), "n": int(m.sum())}
        big = {k: v for k, v in table.items() if v["n"] >= min_group and np.isfinite(v["value"])}
        entry: dict = {"groups": table}
        if len(big) >= 2:
            hi = max(big, key=lambda k: big[k]["value"])
            lo = min(big, key=lambda k: big[k]["value"])
            entry.update(gap=big[hi]["value"] - big[lo]["value"], highest=hi, lowest=lo)
        out[name] = entry
    return out


def demographic_groups(y: dict[str, np.ndarray], vocabularies: dict[str, list | None]) -> dict:
    """The demographic labels present, plus the intersection of the first two (e.g. gender x race)."""
    found = {}
    for t in DEMOGRAPHIC_TASKS:
        if t in y and vocabularies.get(t) is not None and (np.asarray(y[t]) >= 0).any():
            found[t] = (np.asarray(y[t]), vocabularies[t])
    if "Male" in found:  # CelebA's own name for the same labels as the mapped `gender`
        found.pop("gender", None)
    if "age_group" not in found and "age" in y and np.isfinite(y["age"]).any():
        ages = np.asarray(y["age"], dtype=float)
        found["age_group"] = (
            np.array([age_group(a) if np.isfinite(a) else "" for a in ages], dtype=object), None)
    names = list(found)
    if len(names) >= 2:
        a, b = names[:2]

        def label(name, i):
            codes, vocab = found[name]
            c = codes[i]
            if vocab is None:
                return c
            return vocab[c] if c >= 0 else ""
        n = len(found[a][0])
        inter = np.array([
            f"{label(a, i)} x {label(b, i)}" if label(a, i) != "" and label(b, i) != "" else ""
            for i in range(n)], dtype=object)
        found[f"{a} x {b}"] = (inter, None)
    return found


def fairness(task: str, y_true: np.ndarray, pred_or_proba: np.ndarray, groups: dict, *,
             min_group: int = 10) -> dict:
    """Per-group headline metric for one task (accuracy, or MAE for age)."""
    y_true = np.asarray(y_true)
    if task == "age":
        keep = np.isfinite(y_true.astype(float))

        def score(m):
            m = m & keep
            return skm.mean_absolute_error(y_true[m], pred_or_proba[m]) if m.any() else None
        metric = "mae"
    else:
        keep = y_true >= 0
        pred = np.asarray(pred_or_proba).argmax(axis=1)

        def score(m):
            m = m & keep
            return skm.accuracy_score(y_true[m], pred[m]) if m.any() else None
        metric = "accuracy"
    own = {k: v for k, v in groups.items() if k != task and not k.startswith(f"{task} x")}
    return {"metric": metric, "by": group_breakdown(y_true, score, own, min_group=min_group)}
