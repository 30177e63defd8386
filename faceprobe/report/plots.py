"""Report figures as PNG bytes (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def confusion_matrix_png(cm: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> bytes:
    cm = np.asarray(cm)
    size = max(3.5, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(cm, display_labels=list(classes)).plot(
        ax=ax, colorbar=False, xticks_rotation=45, cmap="Blues")
    ax.set_title(title)
    return _png(fig)


def roc_png(y: np.ndarray, proba: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    keep = y >= 0
    y, proba = y[keep], proba[keep]
    if len(classes) == 2:
        RocCurveDisplay.from_predictions(y, proba[:, 1], ax=ax, name=classes[1])
    else:
        for k, name in enumerate(classes):
            if 0 < (y == k).sum() < len(y):
                RocCurveDisplay.from_predictions(y == k, proba[:, k], ax=ax, name=f"{name} vs rest")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_title(title)
    return _png(fig)


def calibration_png(y: np.ndarray, proba: np.ndarray, title: str) -> bytes:
    """Reliability of the top-label confidence (binary and multi-class alike)."""
    keep = y >= 0
    y, proba = y[keep], proba[keep]
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(int)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    if len(np.unique(correct)) == 2:
        frac, mean = calibration_curve(correct, conf, n_bins=10, strategy="quantile")
        ax.plot(mean, frac, "o-", label="model")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect")
    ax.set_xlabel("confidence of predicted class")
    ax.set_ylabel("fraction correct")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return _png(fig)


def age_scatter_png(y: np.ndarray, pred: np.ndarray, title: str) -> bytes:
    keep = np.isfinite(y)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.scatter(y[keep], pred[keep], s=6, alpha=0.4)
    top = float(np.nanmax(np.concatenate([y[keep], pred[keep]]))) if keep.any() else 100.0
    ax.plot([0, top], [0, top], "k:", lw=0.8)
    ax.set_xlabel("true age (years)")
    ax.set_ylabel("predicted age (years)")
    ax.set_title(title)
    return _png(fig)


def group_bars_png(breakdown: dict, metric: str, title: str) -> bytes:
    """One bar chart per grouping label; groups under min size are drawn pale."""
    items = [(by, e["groups"]) for by, e in breakdown.items() if e["groups"]]
    fig, axes = plt.subplots(1, max(1, len(items)), figsize=(3.6 * max(1, len(items)), 3.4),
                             squeeze=False)
    for ax, (by, table) in zip(axes[0], items, strict=False):
        names = list(table)
        vals = [table[n]["value"] for n in names]
        ns = [table[n]["n"] for n in names]
        bars = ax.bar(range(len(names)), vals, color="tab:blue")
        for b, n in zip(bars, ns, strict=True):
            if n < 10:
                b.set_alpha(0.35)
        ax.set_xticks(range(len(names)), [f"{n}\n(n={c})" for n, c in zip(names, ns, strict=True)],
                      rotation=60 if len(names) > 4 else 0, fontsize=7)
        ax.set_title(f"by {by}", fontsize=9)
        ax.set_ylabel(metric)
    fig.suptitle(title)
    return _png(fig)


def history_png(history: dict[str, list[float]], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key in ("loss", "val_loss", "refit_loss"):  # refit_loss: the train+val refit
        if history.get(key):
            ax.plot(range(1, len(history[key]) + 1), history[key], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    return _png(fig)


def error_grid_png(thumbs: Sequence[np.ndarray], captions: Sequence[str], title: str) -> bytes:
    n = len(thumbs)
    cols = min(6, max(1, n))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, cap in zip(axes.ravel(), thumbs, captions, strict=False):
        ax.imshow(img)
        ax.set_title(cap, fontsize=7)
    fig.suptitle(title)
    return _png(fig)


def landmark_overlay_png(images: Sequence[np.ndarray], true_pts: Sequence[np.ndarray],
                         pred_pts: Sequence[np.ndarray], captions: Sequence[str],
                         title: str) -> bytes:
    n = len(images)
    cols = min(6, max(1, n))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, t, p, cap in zip(axes.ravel(), images, true_pts, pred_pts, captions,
                                  strict=False):
        ax.imshow(img)
        if t is not None and np.isfinite(t).all():
            ax.scatter(t[:, 0], t[:, 1], s=12, c="lime", marker="o", label="true")
        if p is not None and np.isfinite(p).all():
            ax.scatter(p[:, 0], p[:, 1], s=14, c="red", marker="x", label="predicted")
        ax.set_title(cap, fontsize=7)
    fig.suptitle(title + "  (green: true, red: predicted)")
    return _png(fig)


def ced_png(errors: np.ndarray, title: str, limit: float = 0.3) -> bytes:
    """Cumulative error distribution of per-face NME."""
    e = np.sort(errors[np.isfinite(errors)])
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    if len(e):
        ax.plot(e, np.arange(1, len(e) + 1) / len(e))
    ax.axvline(0.10, color="k", ls=":", lw=0.8)
    ax.set_xlim(0, limit)
    ax.set_ylim(0, 1)
    ax.set_xlabel("NME")
    ax.set_ylabel("fraction of faces")
    ax.set_title(title)
    return _png(fig)
