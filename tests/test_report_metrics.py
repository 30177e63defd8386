"""Report metrics: equal to independent sklearn recomputation; CIs shrink with more data."""

import numpy as np
from sklearn import metrics as skm

from faceprobe.report.metrics import (
    bootstrap_ci,
    classification_metrics,
    demographic_groups,
    fairness,
    regression_metrics,
)


def synthetic(n, k=3, seed=0, acc=0.8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    correct = rng.random(n) < acc
    pred = np.where(correct, y, (y + 1 + rng.integers(0, k - 1, n)) % k)
    proba = np.full((n, k), 0.1 / (k - 1))
    proba[np.arange(n), pred] = 0.9
    return y, proba


def test_classification_matches_sklearn():
    y, p = synthetic(500)
    y[:7] = -1  # missing labels are dropped, not scored
    m = classification_metrics(y, p, ["a", "b", "c"], n_boot=50)
    keep = y >= 0
    pred = p.argmax(1)[keep]
    assert m["n"] == 493
    assert m["accuracy"] == skm.accuracy_score(y[keep], pred)
    assert m["balanced_accuracy"] == skm.balanced_accuracy_score(y[keep], pred)
    assert m["cohen_kappa"] == skm.cohen_kappa_score(y[keep], pred)
    assert m["confusion_matrix"] == skm.confusion_matrix(y[keep], pred).tolist()
    assert np.isclose(m["roc_auc"], skm.roc_auc_score(y[keep], p[keep], multi_class="ovr"))
    f1 = skm.f1_score(y[keep], pred, average="macro")
    assert np.isclose(m["macro_avg"]["f1-score"], f1)
    lo, hi = m["ci"]["accuracy"]
    assert lo < m["accuracy"] < hi


def test_binary_auc_uses_positive_column():
    y = np.array([0, 0, 1, 1, 1, 0])
    p1 = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.2])
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), ["no", "yes"], n_boot=10)
    assert m["roc_auc"] == skm.roc_auc_score(y, p1)


def test_regression_matches_sklearn():
    rng = np.random.default_rng(1)
    y = rng.uniform(1, 80, 300)
    pred = y + rng.normal(0, 6, 300)
    y[0] = np.nan
    m = regression_metrics(y, pred, n_boot=50)
    k = np.isfinite(y)
    assert m["n"] == 299
    assert m["mae"] == skm.mean_absolute_error(y[k], pred[k])
    assert np.isclose(m["rmse"], np.sqrt(skm.mean_squared_error(y[k], pred[k])))
    assert m["cs5"] == np.mean(np.abs(y[k] - pred[k]) <= 5)
    assert sum(g["n"] for g in m["mae_per_age_group"].values()) == 299


def test_confidence_intervals_shrink_with_more_data():
    widths = []
    for n in (100, 1000, 10000):
        y, p = synthetic(n, seed=n)
        lo, hi = bootstrap_ci(skm.accuracy_score, [y, p.argmax(1)], n_boot=300)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.5 * widths[0]


def test_fairness_breakdown_and_gap():
    y = np.array([0, 1, 0, 1] * 25)
    gender = np.array([0] * 50 + [1] * 50)
    pred = y.copy()
    pred[50:60] = 1 - pred[50:60]  # errors only for women
    proba = np.eye(2)[pred]
    groups = demographic_groups({"gender": gender, "race": np.array([0, 1] * 50)},
                                {"gender": ["male", "female"], "race": ["A", "B"]})
    assert "gender x race" in groups
    out = fairness("smiling", y, proba, groups)
    g = out["by"]["gender"]
    assert g["groups"]["male"]["value"] == 1.0 and g["groups"]["female"]["value"] == 0.8
    assert np.isclose(g["gap"], 0.2) and g["lowest"] == "female"
    assert set(out["by"]["gender x race"]["groups"]) == {"male x A", "male x B",
                                                         "female x A", "female x B"}


def test_celeba_groups_by_male_and_young_without_duplicating_gender():
    y = {"gender": np.array([0, 1, 0, 1]), "Male": np.array([1, 0, 1, 0]),
         "Young": np.array([1, 1, 0, 0])}
    vocab = {"gender": ["male", "female"], "Male": ["no", "yes"], "Young": ["no", "yes"]}
    groups = demographic_groups(y, vocab)
    assert set(groups) == {"Male", "Young", "Male x Young"}


def test_labels_outside_the_classes_are_a_clear_error_not_an_index_error():
    import pytest

    from faceprobe.errors import ConfigError

    y = np.array([0, 1, 6, 3])  # a 7-class store's codes against a 5-class head
    proba = np.full((4, 5), 0.2)
    with pytest.raises(ConfigError, match="do not fit the 5 classes"):
        classification_metrics(y, proba, list("abcde"), n_boot=5)
