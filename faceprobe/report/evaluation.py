"""The evaluation report page of one head: headline metrics, per-task plots, fairness, training
curves and the worst errors, as index.html (+ metrics.json, summary.md).

Everything here takes plain data: the metrics dict and the context that
``faceprobe.heads.report.evaluate`` returns (rows, outputs, the bundle's vocabularies and
history, and a ``thumbnail(path, box)`` callable for the worst-error grids), so this package
never reads a store or a bundle itself.

Decisions:
- Headline metrics carry 95% bootstrap intervals; per-group numbers are listed for every group but
  the "gap" only uses groups with >= 10 rows (``report.metrics``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceprobe.data.vocab import AGE

N_WORST = 12


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


def write_report(metrics: dict, context: dict, out_dir: str | Path, *, title: str | None = None,
                 extra_sections: list[tuple[str, str]] = ()) -> Path:
    """Write index.html (+ metrics.json, summary.md); ``extra_sections`` go first. ``context``
    holds ``data`` (the rows: ``y``, ``path``, ``box``), ``outputs``, ``bundle`` (``path``,
    ``meta``, ``vocabularies``), optionally ``truth`` and ``thumbnail(path, box)`` (an image
    array or None; without it the worst-error grids are left out)."""
    from faceprobe.report import plots
    from faceprobe.report.html import Markup, ReportWriter, fmt_ci, img, markdown_table, table

    sub, outputs, bundle = context["data"], context["outputs"], context["bundle"]
    truth = context.get("truth") or sub.y
    thumbnail = context.get("thumbnail")
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
    shown = list(classification) + (["age"] if "age" in metrics else [])
    for task in shown if thumbnail is not None else ():
        vocab = bundle.vocabularies.get(task)
        picks = _worst(task, truth[task], outputs, vocab)
        thumbs, caps = [], []
        for i, cap in picks:
            t = thumbnail(sub.path[i], sub.box[i])
            if t is not None:
                thumbs.append(t)
                caps.append(cap)
        if thumbs:
            grids.append(img(plots.error_grid_png(thumbs, caps, f"{task}: worst errors"),
                             f"{task} worst errors"))
    if grids:
        w.section("Worst errors", "".join(grids))
    return w.write(out_dir, metrics)
