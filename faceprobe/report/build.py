"""``faceprobe evaluate MODEL STORE --report DIR``: metrics, fairness, plots, one HTML page.

Decisions:
- The rows and tasks evaluated are chosen by ``heads.evaluate.choose_rows``: on the bundle's
  training store its recorded test split re-derived (refused when the store's rows changed since
  training); on another store every labelled row; ``split`` names one explicitly. Tasks whose
  class vocabulary differs from the bundle's are skipped with the reason (listed in the JSON
  under ``skipped`` and in a report section), unless a label map declares how they correspond.
- True labels are compared in the bundle's class codes; the per-group (fairness) breakdowns use
  the store's own labels, so a mapped task is still broken down by the store's classes.
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


def evaluate(bundle, store: Store, split: str | None = None, n_boot: int = 500,
             label_map: dict | None = None) -> tuple[dict, dict]:
    """(metrics, context) where context keeps the arrays the plots need. ``split`` None: the
    test split on the training store, every labelled row on another (``choose_rows``)."""
    from faceprobe.heads.evaluate import choose_rows, result_header

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
    return out, {"data": sub, "outputs": outputs, "bundle": bundle, "truth": truth}


def _worst(task, y, outputs, vocab, n=N_WORST):
    """Rows with the most confident wrong answers (largest age errors for age)."""
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
    truth = context.get("truth") or sub.y
    w = ReportWriter(
        title or f"faceprobe report: {Path(str(bundle.path)).name}",
        f"head {metrics['head']} on {metrics['backbone']} ({', '.join(metrics['features'])}); "
        f"store {metrics['store']}; {metrics['rows']} rows: {metrics['rows_described']}")
    for heading, body_html in extra_sections:
        w.section(heading, body_html)
    notes = [[t, why] for t, why in (metrics.get("label_notes") or {}).items()]
    notes += [[t, f"skipped: {why}"] for t, why in (metrics.get("skipped") or {}).items()]
    notes += [["", n] for n in metrics.get("notes") or ()]
    if notes:
        w.section("Rows and tasks", table(["task", "note"], notes),
                  markdown_table(["task", "note"], notes))
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
        y, proba = truth[task], outputs[task]
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
            truth[AGE], outputs[AGE], "predicted vs. true age"), "age scatter"))

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
        picks = _worst(task, truth[task], outputs, vocab)
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


def evaluate_to_report(bundle_path, store_path, out_dir=None, split: str | None = None,
                       n_boot: int = 500, label_map: dict | None = None) -> dict:
    from faceprobe.heads.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    store = Store(store_path)
    metrics, ctx = evaluate(bundle, store, split=split, n_boot=n_boot, label_map=label_map)
    if out_dir is not None:
        metrics["report"] = str(write_report(metrics, ctx, out_dir))
    return metrics
