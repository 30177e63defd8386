"""Face verification on stored embeddings with the LFW k-fold protocol.

Decisions:
- Score = cosine of the two stored (renormalised) embeddings; a pair is called "same" when
  ``score >= threshold``.
- Protocol (LFW "unrestricted, labeled outside data" style, as facenet/insightface do it): for each
  fold the threshold is the one maximising accuracy on the *other* folds, and accuracy is measured
  on the held-out fold; ``accuracy`` is the mean over folds and ``accuracy_std`` the population
  standard deviation (``np.std``, ddof=0), as those reference scripts report it.
- Threshold selection is exact, not a grid: accuracy only changes at the distinct training scores,
  so every cut between consecutive distinct scores is tried. Ties: the maximising cuts form runs
  of adjacent cuts, each an interval of thresholds with the same accuracy; the widest interval wins
  (then the lowest), and the threshold is its middle, i.e. half-way between the highest "different"
  score and the lowest "same" score it separates. The outer ends are clipped to the cosine range
  [-1, 1]. The middle keeps the choice stable when the same folds are re-scored.
- A pair list with a single fold (a plain CSV without folds) is split round-robin into up to 10
  folds, positives and negatives separately, so the reported accuracy is still held-out; the
  output says so in ``notes``.
- ROC AUC, the ROC curve and TAR@FAR come from ``sklearn.metrics`` (``roc_curve`` with
  ``drop_intermediate=False``); computed on all used pairs pooled over folds. TAR at FAR ``f`` is
  the highest TPR whose FPR <= ``f``. EER is where FNR = 1 - TPR crosses FPR on that curve,
  linearly interpolated between the two ROC points around the crossing. When there are fewer
  than ``1/f`` negative pairs, FAR ``f`` cannot be resolved and ``notes`` says so.
- Fixed thresholds 0.6 / 0.7 / 0.8 report accuracy, TAR and FAR at that cosine, comparable with
  the numbers the seed projects quoted.
- A pair is used only when both images have a usable embedding. Every other pair is counted in
  ``pairs_skipped`` with its reason (``not_in_store``: no row for the image; ``failed``: the row
  exists but its status is a failure, broken down by status) and a few examples; none is dropped
  silently. A pair with both problems counts as ``not_in_store``.
- Pair paths are matched to store rows (see ``_match``) by absolute path (relative pair paths
  joined to each candidate root: ``--root``, else the store's recorded root and the pair file's
  folder), then by the path relative to the store's root, then by the last two path components
  (``Name/Name_0001.jpg``) when that tail is unique in the store. A store row listed more than once
  (several faces of one image) contributes its first usable row.
- Memory: the store is streamed with ``iter_batches`` and only the embeddings of images named by
  a pair are kept.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceprobe.embed.store import USABLE_STATUSES, Store
from faceprobe.errors import ConfigError, FaceprobeError, StoreError
from faceprobe.identity.similarity import pairwise_cosine

FIXED_THRESHOLDS = (0.6, 0.7, 0.8)
FARS = {"1e-3": 1e-3, "1e-2": 1e-2}
AUTO_FOLDS = 10
_EXAMPLES = 5


class PairsError(FaceprobeError):
    """A pair list is missing, empty, or names no image of the store."""


# --------------------------------------------------------------------------------- protocol
def select_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The accuracy-maximising threshold on ``scores`` (see the module docstring for ties)."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if not len(scores):
        raise ValueError("select_threshold needs at least one pair")
    u, inv = np.unique(scores, return_inverse=True)
    m = len(u)
    pos = np.bincount(inv, weights=same, minlength=m)
    neg = np.bincount(inv, weights=~same, minlength=m)
    # Cut c (0..m) calls "same" every score >= u[c]: correct = negatives below + positives at/above.
    neg_below = np.concatenate([[0.0], np.cumsum(neg)])
    pos_at_or_above = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]])
    correct = neg_below + pos_at_or_above
    best = np.flatnonzero(correct == correct.max())
    # Cut c is the threshold interval (u[c-1], u[c]]; clip the open outer ends to cosine's range.
    lower = np.concatenate([[min(-1.0, u[0])], u])
    upper = np.concatenate([u, [max(1.0, u[-1])]])
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    widths = [upper[r[-1]] - lower[r[0]] for r in runs]
    run = runs[int(np.argmax(widths))]
    lo, hi = lower[run[0]], upper[run[-1]]
    threshold = (lo + hi) / 2.0
    if run[-1] == m and threshold <= u[-1]:
        # Every score is already 1.0: a threshold equal to it would call those pairs "same".
        threshold = float(np.nextafter(u[-1], np.inf))
    return float(threshold)


def accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((np.asarray(scores) >= threshold) == np.asarray(same, dtype=bool)))


def cross_validate(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> list[dict]:
    """Per fold: threshold chosen on the other folds, accuracy on this one."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    folds = np.asarray(folds)
    out = []
    for f in np.unique(folds):
        test = folds == f
        if test.all():
            raise ConfigError("cross-validation needs at least two folds")
        t = select_threshold(scores[~test], same[~test])
        out.append({"fold": _plain(f), "threshold": t,
                    "accuracy": accuracy_at(scores[test], same[test], t),
                    "n": int(test.sum()), "n_same": int(same[test].sum()),
                    "n_different": int((~same[test]).sum())})
    return out


def auto_folds(same: np.ndarray, k: int = AUTO_FOLDS) -> np.ndarray:
    """Round-robin fold ids 1..k, positives and negatives counted separately (balanced folds)."""
    same = np.asarray(same, dtype=bool)
    folds = np.empty(len(same), dtype=np.int64)
    for cls in (True, False):
        idx = np.flatnonzero(same == cls)
        folds[idx] = np.arange(len(idx)) % k + 1
    return folds


def roc_metrics(scores: np.ndarray, same: np.ndarray) -> dict[str, Any]:
    """ROC AUC, EER and TAR@FAR from sklearn's ROC curve (None when one class is absent)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    same = np.asarray(same, dtype=bool)
    if same.all() or not same.any():
        return {"roc_auc": None, "eer": None, "eer_threshold": None,
                "tar_at_far": {k: None for k in FARS},
                "tar_at_far_threshold": {k: None for k in FARS}, "roc": None}
    fpr, tpr, thr = roc_curve(same, scores, drop_intermediate=False)
    fnr = 1.0 - tpr
    # fpr rises and fnr falls along the curve; the first index where fnr <= fpr is past the
    # crossing, which lies on the segment from the previous point.
    i = int(np.argmax(fnr <= fpr))
    if i == 0:
        eer, eer_thr = float(fpr[0]), float(thr[0])
    else:
        d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
        w = d0 / (d0 - d1) if d0 != d1 else 0.0
        eer = float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))
        eer_thr = float(thr[i]) if math.isinf(thr[i - 1]) else \
            float(thr[i - 1] + w * (thr[i] - thr[i - 1]))
    tar, tar_thr = {}, {}
    for name, far in FARS.items():
        ok = np.flatnonzero(fpr <= far)
        j = ok[np.argmax(tpr[ok])]
        tar[name] = float(tpr[j])
        tar_thr[name] = None if math.isinf(thr[j]) else float(thr[j])
    return {"roc_auc": float(roc_auc_score(same, scores)), "eer": eer, "eer_threshold": eer_thr,
            "tar_at_far": tar, "tar_at_far_threshold": tar_thr, "roc": (fpr, tpr)}


def fixed_threshold_metrics(scores: np.ndarray, same: np.ndarray,
                            thresholds: Sequence[float] = FIXED_THRESHOLDS) -> dict[str, dict]:
    scores = np.asarray(scores)
    same = np.asarray(same, dtype=bool)
    out = {}
    for t in thresholds:
        pred = scores >= t
        out[f"{t:g}"] = {
            "accuracy": float(np.mean(pred == same)),
            "tar": float(pred[same].mean()) if same.any() else None,
            "far": float(pred[~same].mean()) if (~same).any() else None,
        }
    return out


# --------------------------------------------------------------------------------- pairs in
def _as_pairs(pairs: Any) -> tuple[list[tuple[Any, str, str, bool]], Path | None]:
    """Pair objects, tuples or a pair file -> [(fold, path_a, path_b, same)] and the file."""
    source = None
    if isinstance(pairs, str | os.PathLike):
        source = Path(pairs)
        pairs = load_pairs(source)
    out = []
    for p in pairs:
        if hasattr(p, "path_a"):
            out.append((getattr(p, "fold", None), str(p.path_a), str(p.path_b), bool(p.same)))
        elif len(p) == 4:
            out.append((p[0], str(p[1]), str(p[2]), bool(p[3])))
        elif len(p) == 3:
            out.append((None, str(p[0]), str(p[1]), bool(p[2])))
        else:
            raise ConfigError(f"a pair must be (path_a, path_b, same) or (fold, path_a, path_b, "
                              f"same), got {p!r}")
    return out, source


def load_pairs(path: str | os.PathLike) -> list:
    """``faceprobe.data.lfw.read_pairs`` with a clear error for a missing file."""
    path = Path(path)
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise PairsError(f"pairs file {path} {state}; pass LFW pairs.txt or a CSV written by "
                         "`faceprobe pairs`")
    from faceprobe.data.lfw import read_pairs

    return read_pairs(path)


def _norm(p: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(p)))


def _tail(p: str) -> str:
    parts = os.path.normpath(p).replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def _candidate_roots(store: Store, root: str | os.PathLike | None, source: Path | None
                     ) -> list[str]:
    if root is not None:
        roots = [os.fspath(root)]
    else:
        roots = [r for r in (store.meta.get("root"), source.parent if source else None) if r]
    from faceprobe.data.lfw import IMAGE_DIRS

    out: list[str] = []
    for r in roots:
        for form in (_norm(os.fspath(r)), os.path.realpath(os.fspath(r))):
            # read_pairs gives LFW pairs relative to the image folder inside the dataset root.
            for cand in (form, *(os.path.join(form, d) for d in IMAGE_DIRS)):
                if cand not in out and (cand == form or os.path.isdir(cand)):
                    out.append(cand)
    return out


def _match(store: Store, paths: Iterable[str], roots: Sequence[str], feature: str,
           transform: Callable | None = None) -> dict[str, tuple[np.ndarray | None, str | None]]:
    """Pair path -> (embedding or None, status or None); status None means not in the store.

    Streams the store once and keeps only rows some pair path can refer to."""
    paths = list(dict.fromkeys(paths))
    abs_want: dict[str, list[str]] = {}
    rel_want: dict[str, list[str]] = {}
    tail_want: dict[str, list[str]] = {}
    for p in paths:
        cands = [_norm(p)] if os.path.isabs(os.path.expanduser(p)) else \
            [_norm(os.path.join(r, p)) for r in roots]
        for c in cands:
            abs_want.setdefault(c, []).append(p)
        if not os.path.isabs(p):
            rel_want.setdefault(os.path.normpath(p), []).append(p)
        tail_want.setdefault(_tail(p), []).append(p)

    store_root = store.meta.get("root")
    store_root = _norm(store_root) if store_root else None
    found: dict[str, tuple[np.ndarray | None, str]] = {}   # store row abs path -> first row
    by_abs: dict[str, str] = {}        # pair path -> row key, per matching rule
    by_rel: dict[str, str] = {}
    tail_rows: dict[str, set[str]] = {}
    for batch in store.iter_batches(features=(feature,), tasks=(), usable_only=False):
        emb = batch.X[feature] if transform is None else transform(batch.X[feature])
        for i, (row_path, status) in enumerate(zip(batch.path, batch.status, strict=True)):
            key = _norm(row_path)
            hits_abs = abs_want.get(key)
            rel = key[len(store_root) + 1:] if store_root and \
                key.startswith(store_root + os.sep) else None
            hits_rel = rel_want.get(rel) if rel else None
            tail = _tail(key)
            hits_tail = tail_want.get(tail)
            if not (hits_abs or hits_rel or hits_tail):
                continue
            usable = status in USABLE_STATUSES
            prev = found.get(key)
            if prev is None or (prev[0] is None and usable):
                found[key] = (emb[i].copy() if usable else None, str(status))
            for p in hits_abs or ():
                by_abs.setdefault(p, key)
            for p in hits_rel or ():
                by_rel.setdefault(p, key)
            if hits_tail:
                tail_rows.setdefault(tail, set()).add(key)
    out: dict[str, tuple[np.ndarray | None, str | None]] = {}
    for p in paths:
        key = by_abs.get(p) or by_rel.get(p)
        if key is None:
            rows = tail_rows.get(_tail(p), set())
            key = next(iter(rows)) if len(rows) == 1 else None
        out[p] = found[key] if key is not None else (None, None)
    return out


# --------------------------------------------------------------------------------- verify
def verify(store: Store | str | os.PathLike, pairs: Any, *, root: str | os.PathLike | None = None,
           feature: str = "embedding", report_dir: str | os.PathLike | None = None,
           transform: Callable | None = None) -> dict:
    """Verification accuracy of the store's embeddings on a pair list.

    ``pairs``: a pair file (LFW ``pairs.txt`` or the CSV ``faceprobe pairs`` writes), or a list of
    ``faceprobe.data.lfw.Pair`` / ``(fold, path_a, path_b, same)`` / ``(path_a, path_b, same)``.
    ``root``: folder relative pair paths are resolved against (default: the store's dataset root,
    then the pair file's folder). ``report_dir``: also write ``verify.json`` and ``roc.png`` there.
    ``transform``: maps a batch of the group's vectors to the space compared in (a margin head's
    projection, ``faceprobe verify --model``).
    """
    store = store if isinstance(store, Store) else Store(store)
    plist, source = _as_pairs(pairs)
    if not plist:
        raise PairsError(f"pair list {source or ''} has no pairs".replace("  ", " "))
    if feature not in store.feature_dims:
        raise StoreError(f"store {store.path} has no feature group {feature!r} (it has "
                         f"{', '.join(store.feature_dims)})")
    roots = _candidate_roots(store, root, source)
    table = _match(store, (p for _, a, b, _ in plist for p in (a, b)), roots, feature, transform)

    used_a, used_b, same, folds = [], [], [], []
    skipped: Counter = Counter()
    failed_status: Counter = Counter()
    skipped_by_fold: Counter = Counter()
    examples: list[dict] = []
    for fold, a, b, is_same in plist:
        (ea, sa), (eb, sb) = table[a], table[b]
        if ea is not None and eb is not None:
            used_a.append(ea)
            used_b.append(eb)
            same.append(is_same)
            folds.append(fold)
            continue
        missing = [p for p, s in ((a, sa), (b, sb)) if s is None]
        reason = "not_in_store" if missing else "failed"
        skipped[reason] += 1
        skipped_by_fold[_plain(fold)] += 1
        if not missing:
            failed_status.update(s for s in (sa, sb) if s not in USABLE_STATUSES)
        if len(examples) < _EXAMPLES:
            examples.append({"path_a": a, "path_b": b, "reason": reason,
                             "status_a": sa, "status_b": sb})
    n_used = len(same)
    if n_used == 0:
        hint = (f"store root {store.meta.get('root')!r}, tried roots {roots}" if skipped[
            "not_in_store"] else "every pair has an image whose face was not found")
        raise PairsError(f"none of the {len(plist)} pairs can be scored with store {store.path} "
                         f"(first pair: {plist[0][1]}); {hint}; pass --root DIR if the pair "
                         "paths are relative to another folder")

    if n_used < 2:
        raise PairsError(f"only {n_used} pair can be scored; verification needs at least two")
    scores = pairwise_cosine(np.stack(used_a), np.stack(used_b))
    same_arr = np.asarray(same, dtype=bool)
    notes: list[str] = []
    fold_ids = [f for f in folds if f is not None]
    if len(fold_ids) < n_used or len(set(fold_ids)) < 2:
        k = min(AUTO_FOLDS, max(2, int(min(same_arr.sum(), (~same_arr).sum()))))
        fold_arr = auto_folds(same_arr, k)
        notes.append(f"the pair list has no folds; pairs were split round-robin into {k} folds")
    else:
        fold_arr = np.asarray(folds)
    fold_rows = cross_validate(scores, same_arr, fold_arr)
    for row in fold_rows:
        row["skipped"] = int(skipped_by_fold.get(row["fold"], 0))
    accs = np.array([r["accuracy"] for r in fold_rows])

    roc = roc_metrics(scores, same_arr)
    curve = roc.pop("roc")
    n_neg = int((~same_arr).sum())
    for name, far in FARS.items():
        if n_neg * far < 1:
            notes.append(f"TAR at FAR {name} is not resolvable with {n_neg} different-person "
                         f"pairs (needs {math.ceil(1 / far)})")
    if roc["roc_auc"] is None:
        notes.append("ROC metrics need both same- and different-person pairs")

    result = {
        "accuracy": float(accs.mean()), "accuracy_std": float(accs.std()),
        "folds": fold_rows, **roc,
        "fixed_thresholds": fixed_threshold_metrics(scores, same_arr),
        "pairs_total": len(plist), "pairs_used": n_used,
        "pairs_skipped": int(sum(skipped.values())),
        "skipped": {"not_in_store": int(skipped["not_in_store"]),
                    "failed": int(skipped["failed"]),
                    "failed_status": dict(sorted(failed_status.items())),
                    "examples": examples},
        "n_same": int(same_arr.sum()), "n_different": n_neg,
        "score_mean": {"same": _mean(scores[same_arr]), "different": _mean(scores[~same_arr])},
        "store": str(store.path), "backbone": store.meta.get("backbone"), "feature": feature,
        "pairs_file": str(source) if source else None,
        "protocol": "k-fold: threshold maximising accuracy on the other folds (middle of the best "
                    "interval), accuracy on the held-out fold; mean and population std over folds",
        "notes": notes,
    }
    if report_dir is not None:
        write_report(result, curve, report_dir)
    return result


def write_report(result: dict, curve: tuple[np.ndarray, np.ndarray] | None,
                 report_dir: str | os.PathLike) -> dict[str, str]:
    """``verify.json`` and (when both classes are present) ``roc.png`` into ``report_dir``."""
    out = Path(report_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create report folder {out} ({exc.strerror})") from None
    written = {"json": str(out / "verify.json")}
    (out / "verify.json").write_text(json.dumps(result, indent=1) + "\n")
    if curve is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fpr, tpr = curve
        fig, ax = plt.subplots(figsize=(5, 4.5), dpi=120)
        # A log FAR axis shows the low-FAR region the TAR@FAR numbers live in; FPR 0 has no log.
        floor = max(1.0 / max(result["n_different"], 1) / 2, 1e-5)
        ax.plot(np.maximum(fpr, floor), tpr, lw=1.5,
                label=f"AUC {result['roc_auc']:.4f}, EER {result['eer']:.4f}")
        for name, far in FARS.items():
            ax.axvline(far, color="grey", ls=":", lw=0.8)
            ax.annotate(f"TAR@{name} = {result['tar_at_far'][name]:.3f}",
                        (far, result["tar_at_far"][name]), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlim(floor, 1.0)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate")
        ax.set_title(f"{result.get('backbone')}: {result['accuracy']:.4f} ± "
                     f"{result['accuracy_std']:.4f} ({result['pairs_used']} pairs)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "roc.png")
        plt.close(fig)
        written["roc"] = str(out / "roc.png")
    return written


def _plain(v: Any) -> Any:
    """numpy scalars -> Python (JSON) values."""
    return v.item() if isinstance(v, np.generic) else v


def _mean(a: np.ndarray) -> float | None:
    return float(a.mean()) if len(a) else None
