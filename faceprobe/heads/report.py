"""``faceprobe evaluate MODEL STORE --report DIR``: a bundle evaluated on a store, into metrics and
the HTML page ``faceprobe.report.evaluation`` writes.

This is the part of the report that reads a store and a bundle; what it hands on is plain data
(rows, outputs, truth, a thumbnail loader), so the report package depends on no stage.

Decisions:
- The rows and tasks evaluated are chosen by ``heads.evaluate.choose_rows``: on the bundle's
  training store its recorded test split re-derived (refused when the store's rows changed since
  training); on another store every labelled row; ``split`` names one explicitly. Tasks whose
  class vocabulary differs from the bundle's are skipped with the reason (listed in the JSON
  under ``skipped`` and in a report section), unless a label map declares how they correspond.
- True labels are compared in the bundle's class codes; the per-group (fairness) breakdowns use
  the store's own labels, so a mapped task is still broken down by the store's classes.
"""

from __future__ import annotations

import numpy as np

from faceprobe.data.vocab import AGE
from faceprobe.embed.store import Store
from faceprobe.heads.evaluate import choose_rows, result_header
from faceprobe.report import metrics as M
from faceprobe.report.evaluation import write_report


def evaluate(bundle, store: Store, split: str | None = None, n_boot: int = 500,
             label_map: dict | None = None) -> tuple[dict, dict]:
    """(metrics, context) where context keeps what ``write_report`` needs: the rows, outputs,
    truth and a thumbnail loader. ``split`` None: the test split on the training store, every
    labelled row on another (``choose_rows``)."""
    choice = choose_rows(bundle, store, split, label_map)
    sub = choice.data
    outputs = bundle.predict_outputs({g: sub.X[g] for g in bundle.features})
    truth = choice.truth()  # in the bundle's codes (age_group derived from age, as in training)
    groups = M.demographic_groups(sub.y, store.vocabularies)
    out: dict = result_header(choice, store, bundle)
    out.update({"backbone": bundle.backbone, "features": bundle.features, "tasks": {},
                "fairness": {}})
    for task in choice.alignment.tasks:
        y = truth[task]
        if task == AGE:
            out["age"] = M.regression_metrics(y, outputs[task], n_boot=n_boot)
            out["tasks"][task] = out["age"]  # also under tasks, as `evaluate --json` promises
        else:
            out["tasks"][task] = M.classification_metrics(
                y, outputs[task], bundle.vocabularies[task], n_boot=n_boot)
            if task in choice.alignment.notes:
                out["tasks"][task]["labels"] = choice.alignment.notes[task]
        out["fairness"][task] = M.fairness(task, y, outputs[task], groups)
    return out, {"data": sub, "outputs": outputs, "bundle": bundle, "truth": truth,
                 "thumbnail": face_thumbnail}


def face_thumbnail(path: str, box: np.ndarray) -> np.ndarray | None:
    """The row's image cropped to its box plus 15%; None when the image cannot be read."""
    from faceprobe.embed.images import load_image
    from faceprobe.errors import ImageError

    try:
        im = load_image(path)
    except ImageError:
        return None
    if np.isfinite(box).all():
        x1, y1, x2, y2 = box
        m = 0.15 * max(x2 - x1, y2 - y1)
        h, w = im.shape[:2]
        x1, y1 = int(max(0, x1 - m)), int(max(0, y1 - m))
        x2, y2 = int(min(w, x2 + m)), int(min(h, y2 + m))
        if x2 > x1 and y2 > y1:
            im = im[y1:y2, x1:x2]
    return im


def evaluate_to_report(bundle_path, store_path, out_dir=None, split: str | None = None,
                       n_boot: int = 500, label_map: dict | None = None) -> dict:
    from faceprobe.heads.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    store = Store(store_path)
    metrics, ctx = evaluate(bundle, store, split=split, n_boot=n_boot, label_map=label_map)
    if out_dir is not None:
        metrics["report"] = str(write_report(metrics, ctx, out_dir))
    return metrics
