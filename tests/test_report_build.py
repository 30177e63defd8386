"""evaluate --json / --report: numbers equal an independent recomputation from the scored
predictions; the HTML page is self-contained and renders with every image in Chromium."""

import csv
import json
import shutil

import numpy as np
import pytest
from browser import image_widths_in_chromium
from sklearn import metrics as skm

from faceprobe.cli import main
from faceprobe.embed.store import Store
from faceprobe.heads.synthetic import write_synthetic_store


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    store = write_synthetic_store(root / "store", 900, dim=16, seed=3, failed_every=50)
    assert main(["train", str(store), "--tasks", "gender,race,age", "--head", "logreg",
                 "--out", str(root / "model")]) == 0
    return root, store, root / "model"


def test_json_metrics_equal_recomputation_from_predictions(trained, capsys):
    root, store, model = trained
    capsys.readouterr()
    assert main(["evaluate", str(model), str(store), "--split", "all", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert main(["score", str(model), str(store), "--out", str(root / "p.csv")]) == 0
    with open(root / "p.csv") as f:
        preds = {r["path"]: r for r in csv.DictReader(f) if r["status"] == "ok"}
    data = Store(store).load(tasks=["gender", "race", "age"])
    vocab = Store(store).vocabularies
    assert metrics["rows"] == len(data) == len(preds)
    for task in ("gender", "race"):
        truth = [vocab[task][c] for c in data.y[task]]
        pred = [preds[p][task] for p in data.path]
        got = metrics["tasks"][task]
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(truth, pred), abs=1e-12)
        assert got["balanced_accuracy"] == pytest.approx(
            skm.balanced_accuracy_score(truth, pred), abs=1e-12)
        assert got["confusion_matrix"] == skm.confusion_matrix(truth, pred,
                                                               labels=vocab[task]).tolist()
        proba = np.array([[float(preds[p][f"{task}_p_{c}"]) for c in vocab[task]]
                          for p in data.path])
        if task == "gender":
            auc = skm.roc_auc_score(data.y[task], proba[:, 1])
        else:
            proba = proba / proba.sum(axis=1, keepdims=True)
            auc = skm.roc_auc_score(data.y[task], proba, multi_class="ovr")
        assert got["roc_auc"] == pytest.approx(auc, abs=2e-3)  # CSV keeps 4 decimals
    ages = np.array([float(preds[p]["age"]) for p in data.path])
    assert metrics["age"]["mae"] == pytest.approx(
        skm.mean_absolute_error(data.y["age"], ages), abs=0.05)  # CSV keeps 0.1 year
    assert metrics["tasks"]["age"]["mae"] == metrics["age"]["mae"]
    lo, hi = metrics["tasks"]["gender"]["ci"]["accuracy"]
    assert lo <= metrics["tasks"]["gender"]["accuracy"] <= hi


def test_report_has_fairness_by_gender_and_race(trained):
    root, store, model = trained
    assert main(["evaluate", str(model), str(store), "--report", str(root / "report")]) == 0
    m = json.loads((root / "report" / "metrics.json").read_text())
    by = m["fairness"]["age"]["by"]
    assert {"gender", "race", "gender x race"} <= set(by)
    assert "race" in m["fairness"]["gender"]["by"]
    page = (root / "report" / "index.html").read_text()
    assert "data:image/png;base64," in page and "src=\"http" not in page
    assert (root / "report" / "summary.md").read_text().startswith("# ")


def test_compare_puts_reports_side_by_side(trained, capsys, tmp_path):
    root, store, model = trained
    report = root / "report"
    if not report.exists():
        main(["evaluate", str(model), str(store), "--report", str(report)])
    other = tmp_path / "other"
    shutil.copytree(report, other)
    capsys.readouterr()
    assert main(["compare", str(report), str(other), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["reports"] == ["report", "other"]
    row = next(r for r in table["rows"] if r[0] == "gender.accuracy")
    assert row[1] == row[2]


def test_report_renders_in_chromium_with_every_image(trained):
    root, store, model = trained
    report = root / "report"
    if not report.exists():
        main(["evaluate", str(model), str(store), "--report", str(report)])
    sizes = image_widths_in_chromium(report / "index.html")
    assert len(sizes) >= 5
    assert all(w > 0 for w in sizes), sizes
