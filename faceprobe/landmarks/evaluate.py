"""``faceprobe landmarks evaluate``: predicted vs. ground-truth 5-point landmarks of a store.

Which detected face is evaluated: every annotated face (rows of one image with the same
ground-truth points) is matched to the row whose face box overlaps most (IoU) with the box
derived from the annotated points (:func:`annotation_boxes`, the detector-style box of
``faceprobe.embed.detect.box_from_landmarks``). A row's box is its detector box, or, for rows
without one, the box derived from its predicted points. Only rows with predicted points are
candidates. An annotated face whose best IoU is below ``min_iou`` is ``unmatched`` (the detector
found another face): it is counted, not folded into the NME, like a ``missing`` face (no row with
predicted points). With ``--multi-face all`` this picks the right face among an image's rows.
The default ``min_iou`` 0 keeps every face that has predicted points (one row per image: the
same faces as without matching); e.g. 0.3 also sets aside rows where the face policy chose
another face, and the median IoU is reported to show whether that matters.

Reported beside the chosen normaliser: NME normalised by the annotation box's sqrt(w * h)
(``box_size``, which does not collapse on profiles as the eye distance does), the CED and
AUC@0.10 of both, failure rate (NME > 0.10), per point, per dataset and, when the store has a
``pose`` task (MTFL), per pose.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faceprobe.embed.store import Store
from faceprobe.errors import ConfigError, StoreError
from faceprobe.landmarks.nme import CED_LIMIT, FAILURE_THRESHOLD, ced, nme

SOURCES = ("detected", "rcnn")
MIN_IOU = 0.0  # any overlap: every face with predicted points is evaluated, as before
SECOND_NORM = "box_size"
_SUMMARY_KEYS = ("nme", "median", "failure_rate", "auc", "evaluated")


def load_points(store: Store, source: str, tasks: tuple[str, ...] = (),
                splits: Sequence[str] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, object, int]:
    """(pred, true, boxes, rows, left_out) for the store's rows (of ``splits``), failed
    detections included; for ``rcnn`` the rows whose image the model trained on are left out
    (``left_out`` counts them)."""
    data = store.load(features=(), tasks=list(tasks), splits=splits, usable_only=False)
    if source == "detected":
        return data.landmarks_detected, data.landmarks_dataset, data.box, data, 0
    if source != "rcnn":
        raise StoreError(f"unknown landmark source {source!r}; choose one of {', '.join(SOURCES)}")
    from faceprobe.landmarks.extra import read_extra

    pred = read_extra(store, "landmarks_rcnn", data.row_id)
    try:
        trained = read_extra(store, "rcnn_trained", data.row_id)
    except StoreError:  # predicted by a version that did not record it: unknown
        trained = np.full(len(data), np.nan, np.float32)
    keep = trained != 1
    data, pred = data.subset(keep), pred[keep]
    return pred, data.landmarks_dataset, data.box, data, int((~keep).sum())


def annotation_boxes(points: np.ndarray) -> np.ndarray:
    """(n, 4) detector-style boxes of (n, 5, 2) points (``box_from_landmarks``); NaN rows where
    the points are not all finite."""
    from faceprobe.embed.align import box_from_landmarks

    points = np.asarray(points, np.float64)
    out = np.full((len(points), 4), np.nan, np.float32)
    for i in np.flatnonzero(np.isfinite(points).all(axis=(1, 2))):
        out[i] = box_from_landmarks(points[i])
    return out


def _area(x: np.ndarray) -> np.ndarray:
    return np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (n, 4) x1 y1 x2 y2 arrays (NaN where a box is missing)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    union = _area(a) + _area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0) * np.where(
            np.isfinite(a).all(1) & np.isfinite(b).all(1), 1.0, np.nan)


def match_faces(pred: np.ndarray, true: np.ndarray, boxes: np.ndarray, data,
                min_iou: float = MIN_IOU) -> dict:
    """One row per annotated face: ``chosen`` (row index), ``state`` (matched, unmatched,
    missing), ``iou`` (best IoU, NaN when missing), ``ann_boxes`` (per row) and counts."""
    has_true = np.isfinite(true).all(axis=(1, 2))
    has_pred = np.isfinite(pred).all(axis=(1, 2))
    ann = annotation_boxes(true)
    cand = np.where(np.isfinite(boxes).all(axis=1)[:, None], boxes, annotation_boxes(pred))
    iou = np.where(has_pred, box_iou(cand, ann), np.nan)
    groups: dict[tuple, list[int]] = {}
    for i in np.flatnonzero(has_true):
        key = (str(data.dataset[i]), str(data.path[i]), np.asarray(true[i], np.float32).tobytes())
        groups.setdefault(key, []).append(int(i))
    chosen, state, best = [], [], []
    for rows in groups.values():
        r = np.asarray(rows)
        ok = r[np.isfinite(iou[r])]
        if not len(ok):
            chosen.append(r[0])
            state.append("missing")
            best.append(np.nan)
            continue
        j = ok[np.argmax(iou[ok])]
        chosen.append(j)
        best.append(float(iou[j]))
        state.append("matched" if iou[j] >= min_iou else "unmatched")
    state_arr = np.asarray(state, dtype=object)
    return {
        "chosen": np.asarray(chosen, dtype=np.int64), "state": state_arr,
        "iou": np.asarray(best, dtype=np.float64), "ann_boxes": ann,
        "annotated_faces": len(groups),
        "matched": int((state_arr == "matched").sum()),
        "unmatched": int((state_arr == "unmatched").sum()),
        "missing": int((state_arr == "missing").sum()),
        "images_with_several_rows": int(sum(len(g) > 1 for g in groups.values())),
        "rows_not_chosen": int(sum(len(g) - 1 for g in groups.values())),
    }


def _norm_boxes(norm: str, boxes: np.ndarray, ann: np.ndarray) -> np.ndarray:
    """Boxes the normaliser uses: the annotation's for ``box_size`` (the same whatever the model),
    the row's detector box for ``box`` (as before)."""
    return ann if norm == SECOND_NORM else boxes


def _summaries(pred, true, boxes, ann, norm: str, second: str) -> tuple[dict, dict, dict]:
    """(nme() with ``norm``, nme() with ``second``, by_norm: both summarised)."""
    first = nme(pred, true, norm=norm, boxes=_norm_boxes(norm, boxes, ann))
    other = nme(pred, true, norm=second, boxes=_norm_boxes(second, boxes, ann))
    by_norm = {norm: {k: first[k] for k in _SUMMARY_KEYS},
               second: {k: other[k] for k in _SUMMARY_KEYS}}
    return first, other, by_norm


def evaluate_landmarks(store_path: str | Path, source: str = "detected",
                       norm: str = "interocular", report_dir: str | Path | None = None,
                       n_overlays: int = 12, min_iou: float = MIN_IOU,
                       splits: Sequence[str] | None = None) -> dict:
    """NME, CED, failures, per point / pose / dataset of ``source``'s points against the
    dataset's, on the rows of ``splits`` (all by default) that the model did not train on."""
    if not 0 <= min_iou <= 1:
        raise ConfigError(f"min_iou={min_iou}; choose a value in [0, 1]")
    store = Store(store_path)
    pose_vocab = store.vocabularies.get("pose")
    tasks = ("pose",) if pose_vocab else ()
    pred, true, boxes, data, left_out = load_points(store, source, tasks, splits)
    if left_out and not len(data):
        raise StoreError(f"every row of store {store.path} ({left_out}) shows an image the "
                         "KeypointRCNN trained on; evaluate it on other images, or train with "
                         "--holdout so some are kept out")
    if not np.isfinite(true).all(axis=(1, 2)).any():
        raise StoreError(
            f"store {store.path} has no ground-truth landmarks; embed a dataset that has them "
            "(mtfl, celeba with its landmark file)")
    m = match_faces(pred, true, boxes, data, min_iou)
    ev = m["chosen"][m["state"] != "unmatched"]  # matched faces, plus one row per missing face
    second = SECOND_NORM if norm != SECOND_NORM else "interocular"
    result, other, by_norm = _summaries(pred[ev], true[ev], boxes[ev], m["ann_boxes"][ev],
                                        norm, second)
    face_errors, rows = result.pop("face_errors"), ev[result.pop("rows")]
    thresholds, fractions = ced(face_errors)
    result["source"] = source
    result["splits"] = list(splits) if splits else "all"
    result["rows_trained_on_left_out"] = left_out
    result["failure_threshold"] = FAILURE_THRESHOLD
    result["auc_limit"] = CED_LIMIT
    result["second_norm"] = second
    result[f"nme_{second}"] = other["nme"]
    result["by_norm"] = by_norm
    result["ced"] = {"thresholds": [float(t) for t in thresholds],
                     norm: [float(v) for v in fractions],
                     second: [float(v) for v in ced(other["face_errors"])[1]]}
    result["matched"], result["unmatched"] = m["matched"], m["unmatched"]
    iou = m["iou"][np.isfinite(m["iou"])]
    result["matching"] = {
        "min_iou": min_iou, "annotated_faces": m["annotated_faces"], "matched": m["matched"],
        "unmatched": m["unmatched"], "missing": m["missing"],
        "images_with_several_rows": m["images_with_several_rows"],
        "rows_not_chosen": m["rows_not_chosen"],
        "median_iou": float(np.median(iou)) if len(iou) else float("nan"),
    }

    def part(mask: np.ndarray) -> dict:
        """Summary of the annotated faces selected by ``mask`` (over m['chosen'])."""
        sel = m["chosen"][mask & (m["state"] != "unmatched")]
        sub, sub2, _ = _summaries(pred[sel], true[sel], boxes[sel], m["ann_boxes"][sel],
                                  norm, second)
        out = {k: sub[k] for k in ("nme", "median", "per_point", "failure_rate", "auc",
                                   "evaluated", "missing")}
        out[f"nme_{second}"] = sub2["nme"]
        out["unmatched"] = int((mask & (m["state"] == "unmatched")).sum())
        return out

    datasets = data.dataset[m["chosen"]]
    result["per_dataset"] = {ds: part(datasets == ds) for ds in sorted(set(datasets))}
    if pose_vocab:
        codes = np.asarray(data.y["pose"])[m["chosen"]]
        result["per_pose"] = {name: part(codes == k) for k, name in enumerate(pose_vocab)
                              if (codes == k).any()}
    if report_dir is not None:
        _write_report(Path(report_dir), result, face_errors, rows, pred, true, data, n_overlays)
    return result


def plot_ced(curves: dict, path: str | Path, title: str = "Cumulative error distribution",
             limit: float = CED_LIMIT) -> Path:
    """Draw CED curves, ``name -> (thresholds, fractions)``, on one set of axes (several models
    side by side), each labelled with its AUC@limit; writes a PNG to ``path``."""
    from matplotlib.figure import Figure
    from sklearn.metrics import auc as area

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for name, (t, f) in curves.items():
        t, f = np.asarray(t, np.float64), np.asarray(f, np.float64)
        keep = t <= limit + 1e-12
        a = area(t[keep], f[keep]) / limit if keep.sum() > 1 and np.isfinite(f).all() \
            else float("nan")
        ax.plot(t, f, label=f"{name} (AUC@{limit:g} {a:.3f})")
    ax.axvline(FAILURE_THRESHOLD, color="k", ls=":", lw=0.8)
    ax.set_xlim(0, limit)
    ax.set_ylim(0, 1)
    ax.set_xlabel("NME")
    ax.set_ylabel("fraction of faces with NME <= x")
    ax.set_title(title)
    if curves:
        ax.legend(loc="lower right", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=90, bbox_inches="tight")
    return path


def _write_report(out, result, face_errors, rows, pred, true, data, n_overlays):
    from faceprobe.embed.images import load_image
    from faceprobe.errors import ImageError
    from faceprobe.report import plots
    from faceprobe.report.html import ReportWriter, img, table

    w = ReportWriter("faceprobe landmarks", f"source: {result['source']}, norm: {result['norm']}")
    sn = result["second_norm"]
    rows_html = [["all", result["nme"], result[f"nme_{sn}"], result["median"], result["auc"],
                  result["failure_rate"], result["evaluated"], result["missing"],
                  result["unmatched"]]]
    rows_html += [[f"pose {k}", v["nme"], v[f"nme_{sn}"], v["median"], v["auc"],
                   v["failure_rate"], v["evaluated"], v["missing"], v["unmatched"]]
                  for k, v in result.get("per_pose", {}).items()]
    w.section("Summary", table(["", "NME", f"NME ({sn})", "median", "AUC@0.10", "failure rate",
                                "evaluated", "missing", "unmatched"], rows_html)
              + table(list(result["point_names"]), [result["per_point"]]))
    out.mkdir(parents=True, exist_ok=True)
    t = result["ced"]["thresholds"]
    plot_ced({f"{result['source']}, {n}": (t, result["ced"][n])
              for n in (result["norm"], result["second_norm"])}, out / "ced.png")
    figs = (out / "ced.png").read_bytes()
    # overlays: the worst faces and a few typical ones, so failures are seen, not averaged away
    order = np.argsort(face_errors)[::-1]
    pick = list(order[: n_overlays // 2]) + list(order[len(order) // 2:][: n_overlays // 2])
    ims, ts, ps, caps = [], [], [], []
    for j in pick:
        i = rows[j]
        try:
            ims.append(load_image(data.path[i]))
        except ImageError:
            continue
        ts.append(true[i])
        ps.append(pred[i])
        caps.append(f"NME {face_errors[j]:.3f}")
    body = img(figs, "CED")
    if ims:
        body += img(plots.landmark_overlay_png(ims, ts, ps, caps, "Worst and median faces"),
                    "overlays")
    w.section("Plots", f"<div class='figs'>{body}</div>")
    w.write(out, result)
