"""``faceprobe evaluate MODEL STORE --report DIR``: metrics, fairness, plots, one HTML page.

Decisions:
- The rows evaluated are chosen by ``heads.evaluate.select_rows``: the bundle's recorded split
  re-derived on the store (refused when the store's rows changed since training), or ``all``.
- Headline metrics carry 95% bootstrap intervals; per-group numbers are listed for every group but
  the "gap" only uses groups with >= 10 rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceprobe.data.vocab import AGE
from faceprobe.embed.store import Store
from faceprobe.report import metrics as M

N_WORST = 12


def evaluate(bundle, store: Store, split: str = "test", n_boot: int = 500) -> tuple[dict, dict]:
    """(metrics, context) where context keeps the arrays the plots need."""
    from faceprobe.heads.common import task_labels
    from faceprobe.heads.evaluate import select_rows

    sub, described = select_rows(bundle, store, split)
    outputs = bundle.predict_outputs({g: sub.X[g] for g in bundle.features})
    if "age_group" in bundle.tasks and "age_group" not in sub.y and AGE in sub.y:
        sub.y["age_group"] = task_labels("age_group", sub.y)  # derived from age, as in training
    vocab = store.vocabularies
    groups = M.demographic_groups(sub.y, vocab)
    out: dict = {"split": split, "rows": int(len(sub)), "rows_described": described,
                 "bundle": str(bundle.path), "head": bundle.kind, "backbone": bundle.backbone,
                 "features": bundle.features, "store": str(store.path), "tasks": {},
                 "fairness": {}}
    for task in bundle.tasks:
        if task not in sub.y:
            continue
        if task == AGE:
            out["age"] = M.regression_metrics(sub.y[task], outputs[task], n_boot=n_boot)
            out["tasks"][task] = out["age"]  # also under tasks, as `evaluate --json` promises
            out["fairness"][task] = M.fairness(task, sub.y[task], outputs[task], groups)
        else:
            out["tasks"][task] = M.classification_metrics(
                sub.y[task], outputs[task], bundle.vocabularies[task], n_boot=n_boot)
            out["fairness"][task] = M.fairness(task, sub.y[task], outputs[task], groups)
    return out, {"data": sub, "outputs": outputs, "bundle": bundle}


def _worst(task, sub, outputs, vocab, n=N_WORST):
    """Rows with the most confident wrong answers (largest age errors for age)."""
    y = sub.y[task]
    if task == AGE:
        keep = np.isfinite(y)
        err = np.where(keep, np.abs(outputs[task] - np.nan_to_num(y)), -1)
        order = [i for i in np.argsort(-err) if err[i] >= 0][:n]
        return [(i, f"true {y[i]:.0f} / pred {outputs[task][i]:.0f}") for i in order]
    proba = outputs[task]
    pred = proba.argmax(1)
    wrong = (y >= 0) & (pred != y)
    order = [i for i in np.argsort(-proba.max(1)) if wrong[i]][:n]
    return [(i, f"true {vocab[y[i]]}\npred {vocab[pred[i]]} {proba[i].max():.2f}") for i in order]


def _thumb(path: str, box: np.ndarray) -> np.ndarray | None:
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


def write_report(metrics: dict, context: dict, out_dir: str | Path, *, title: str | None = None,
                 extra_sections: list[tuple[str, str]] = ()) -> Path:
    """Write index.html (+ metrics.json, summary.md); ``extra_sections`` go first."""
    from faceprobe.report import plots
    from faceprobe.report.html import Markup, ReportWriter, fmt_ci, img, markdown_table, table

    sub, outputs, bundle = context["data"], context["outputs"], context["bundle"]
    w = ReportWriter(
        title or f"faceprobe report: {Path(str(bundle.path)).name}",
        f"head {metrics['head']} on {metrics['backbone']} ({', '.join(metrics['features'])}); "
        f"store {metrics['store']}; {metrics['rows']} rows, {metrics['rows_described']}")
    for heading, body_html in extra_sections:
        w.section(heading, body_html)
    head = ["task", "n", "accuracy [95% CI]", "balanced acc. [95% CI]", "macro F1", "kappa",
            "ROC AUC"]
    rows, md_rows = [], []
    classification = {t: m for t, m in metrics["tasks"].items() if "mae" not in m and m.get("n")}
    for task, m in classification.items():
        ci = m["ci"]
        rows.append([task, m["n"], Markup(fmt_ci(m["accuracy"], ci["accuracy"])),
                     Markup(fmt_ci(m["balanced_accuracy"], ci["balanced_accuracy"])),
                     m["macro_avg"]["f1-score"], m["cohen_kappa"], m["roc_auc"]])
        md_rows.append([task, m["n"], fmt_ci(m["accuracy"], ci["accuracy"]),
                        fmt_ci(m["balanced_accuracy"], ci["balanced_accuracy"]),
                        m["macro_avg"]["f1-score"], m["cohen_kappa"], m["roc_auc"]])
    body = table(head, rows) if rows else ""
    md = markdown_table(head, md_rows) if md_rows else ""
    if "age" in metrics and metrics["age"].get("n"):
        a = metrics["age"]
        body += table(["age", "n", "MAE [95% CI]", "RMSE", "CS(5)"],
                      [["age", a["n"], Markup(fmt_ci(a["mae"], a["ci"]["mae"])), a["rmse"],
                        a["cs5"]]])
        md += "\n\n" + markdown_table(["age", "n", "MAE [95% CI]", "RMSE", "CS(5)"],
                                      [["age", a["n"], fmt_ci(a["mae"], a["ci"]["mae"]),
                                        a["rmse"], a["cs5"]]])
    w.section("Headline metrics", body, md)

    for task, m in classification.items():
        vocab = m["classes"]
        y, proba = sub.y[task], outputs[task]
        figs = [img(plots.confusion_matrix_png(m["confusion_matrix"], vocab, f"{task}: confusion"),
                    f"{task} confusion matrix")]
        if np.isfinite(m["roc_auc"]):
            figs.append(img(plots.roc_png(y, proba, vocab, f"{task}: ROC"), f"{task} ROC"))
        figs.append(img(plots.calibration_png(y, proba, f"{task}: calibration"),
                        f"{task} calibration"))
        per_class = table(["class", "precision", "recall", "F1", "support"],
                          [[c, v["precision"], v["recall"], v["f1-score"], int(v["support"])]
                           for c, v in m["per_class"].items()])
        w.section(f"Task: {task}", per_class + f"<div class='figs'>{''.join(figs)}</div>")
    if "age" in metrics and metrics["age"].get("n"):
        a = metrics["age"]
        grp = table(["age group", "n", "MAE"], [[g, v["n"], v["mae"]]
                                                for g, v in a["mae_per_age_group"].items()])
        w.section("Task: age", grp + img(plots.age_scatter_png(
            sub.y[AGE], outputs[AGE], "predicted vs. true age"), "age scatter"))

    fair_html, fair_md = "", []
    for task, f in metrics["fairness"].items():
        if not f["by"]:
            continue
        rows = []
        for by, e in f["by"].items():
            rows.append([by, ", ".join(f"{k}: {v['value']:.3f} (n={v['n']})"
                                       for k, v in e["groups"].items()),
                         e.get("gap", float("nan")), e.get("lowest", "") if f["metric"] !=
                         "mae" else e.get("highest", "")])
            fair_md.append([task, by, f"{e.get('gap', float('nan')):.3f}"])
        fair_html += f"<h3>{task} ({f['metric']})</h3>" + table(
            ["by", "groups", "largest gap", "worst group"], rows)
        fair_html += img(plots.group_bars_png(f["by"], f["metric"], f"{task} by group"),
                         f"{task} by group")
    if fair_html:
        w.section("Fairness: metrics per demographic group", fair_html,
                  markdown_table(["task", "by", "largest gap"], fair_md))

    hist = bundle.meta.get("history") or {}
    if hist.get("loss"):
        w.section("Training curves", img(plots.history_png(hist, "training history"), "history"))

    grids = []
    for task in list(classification) + (["age"] if "age" in metrics else []):
        vocab = bundle.vocabularies.get(task)
        picks = _worst(task, sub, outputs, vocab)
        thumbs, caps = [], []
        for i, cap in picks:
            t = _thumb(sub.path[i], sub.box[i])
            if t is not None:
                thumbs.append(t)
                caps.append(cap)
        if thumbs:
            grids.append(img(plots.error_grid_png(thumbs, caps, f"{task}: worst errors"),
                             f"{task} worst errors"))
    if grids:
        w.section("Worst errors", "".join(grids))
    return w.write(out_dir, metrics)


def evaluate_to_report(bundle_path, store_path, out_dir=None, split: str = "test",
                       n_boot: int = 500) -> dict:
    from faceprobe.heads.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    store = Store(store_path)
    metrics, ctx = evaluate(bundle, store, split=split, n_boot=n_boot)
    if out_dir is not None:
        metrics["report"] = str(write_report(metrics, ctx, out_dir))
    return metrics
