"""``faceprobe landmarks evaluate``: predicted vs. ground-truth 5-point landmarks of a store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceprobe.embed.store import Store
from faceprobe.errors import StoreError
from faceprobe.landmarks.nme import FAILURE_THRESHOLD, nme

SOURCES = ("detected", "rcnn")


def load_points(store: Store, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, object]:
    """(pred, true, boxes, rows) for every row of the store, failed detections included."""
    data = store.load(features=(), tasks=[], usable_only=False)
    if source == "detected":
        pred = data.landmarks_detected
    elif source == "rcnn":
        from faceprobe.landmarks.extra import read_extra

        pred = read_extra(store, "landmarks_rcnn", data.row_id)
    else:
        raise StoreError(f"unknown landmark source {source!r}; choose one of {', '.join(SOURCES)}")
    return pred, data.landmarks_dataset, data.box, data


def evaluate_landmarks(store_path: str | Path, source: str = "detected",
                       norm: str = "interocular", report_dir: str | Path | None = None,
                       n_overlays: int = 12) -> dict:
    store = Store(store_path)
    pred, true, boxes, data = load_points(store, source)
    if not np.isfinite(true).all(axis=(1, 2)).any():
        raise StoreError(
            f"store {store.path} has no ground-truth landmarks; embed a dataset that has them "
            "(mtfl, celeba with its landmark file)")
    result = nme(pred, true, norm=norm, boxes=boxes)
    face_errors, rows = result.pop("face_errors"), result.pop("rows")
    result["source"] = source
    result["failure_threshold"] = FAILURE_THRESHOLD
    result["per_dataset"] = {}
    for ds in sorted(set(data.dataset)):
        m = data.dataset == ds
        sub = nme(pred[m], true[m], norm=norm, boxes=boxes[m])
        result["per_dataset"][ds] = {k: sub[k] for k in
                                     ("nme", "median", "per_point", "failure_rate", "evaluated",
                                      "missing")}
    if report_dir is not None:
        _write_report(Path(report_dir), result, face_errors, rows, pred, true, data, n_overlays)
    return result


def _write_report(out, result, face_errors, rows, pred, true, data, n_overlays):
    from faceprobe.embed.images import load_image
    from faceprobe.errors import ImageError
    from faceprobe.report import plots
    from faceprobe.report.html import ReportWriter, img, table

    w = ReportWriter("faceprobe landmarks", f"source: {result['source']}, norm: {result['norm']}")
    rows_html = [["all", result["nme"], result["median"], result["failure_rate"],
                  result["evaluated"], result["missing"]]]
    w.section("Summary", table(["", "NME", "median", "failure rate", "evaluated", "missing"],
                               rows_html)
              + table(list(result["point_names"]), [result["per_point"]]))
    figs = plots.ced_png(face_errors, "Cumulative error distribution")
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
