"""scikit-learn baselines: the same contract as the Keras head, one model per task."""

import numpy as np
import pytest

from faceprobe.errors import ConfigError
from faceprobe.heads.baselines import KINDS, SklearnHead, make_head
from faceprobe.heads.synthetic import synthetic_arrays

TASKS = ["gender", "race", "age"]


@pytest.fixture(scope="module")
def data():
    a = synthetic_arrays(500, 8, seed=0, noise=0.6)
    b = synthetic_arrays(200, 8, seed=1, noise=0.6)
    return ({"embedding": a["X"]}, {t: a[t] for t in TASKS}), \
        ({"embedding": b["X"]}, {t: b[t] for t in TASKS})


@pytest.mark.parametrize("kind", KINDS)
def test_contract(kind, data):
    (X, y), (Xt, yt) = data
    head = SklearnHead(kind, tasks=TASKS, max_iter=30)
    assert head.fit((X, y)) is head
    assert set(head.models_) == set(TASKS)
    proba = head.predict_proba(Xt)
    assert proba["race"].shape == (200, 5) and proba["gender"].shape == (200, 2)
    np.testing.assert_allclose(proba["race"].sum(axis=1), 1, atol=1e-5)
    pred = head.predict(Xt)
    assert (pred["gender"] == yt["gender"]).mean() > 0.75
    assert pred["age"].shape == (200,) and (pred["age"] >= 0).all()


def test_missing_labels_dropped_and_absent_class_kept_in_vocab():
    a = synthetic_arrays(400, 8, seed=2)
    race = a["race"].copy()
    race[race == 4] = 3  # no row of class 4 ("Others")
    race[::3] = -1
    head = SklearnHead("logreg", tasks=["race"]).fit(({"embedding": a["X"]}, {"race": race}))
    p = head.predict_proba({"embedding": a["X"][:5]})["race"]
    assert p.shape == (5, 4)  # vocabulary inferred from codes 0..3
    head = SklearnHead("logreg", tasks=["race"]).fit(
        ({"embedding": a["X"]}, {"race": race}),
        vocabularies={"race": ["White", "Black", "Asian", "Indian", "Others"]})
    p = head.predict_proba({"embedding": a["X"][:5]})["race"]
    assert p.shape == (5, 5) and (p[:, 4] == 0).all()


def test_missing_label_rows_are_not_trained_on():
    a = synthetic_arrays(1200, 8, seed=3, noise=0.6)
    g = a["gender"].copy()
    g[np.flatnonzero(g == 1)[: (g == 1).sum() * 3 // 4]] = -1
    head = SklearnHead("logreg", tasks=["gender"]).fit(({"embedding": a["X"]}, {"gender": g}))
    assert set(head.models_["gender"].classes_) == {0, 1}
    b = synthetic_arrays(400, 8, seed=4, noise=0.6)
    pred = head.predict({"embedding": b["X"]})["gender"]
    assert (pred[b["gender"] == 1] == 1).mean() > 0.7


def test_inverse_weighting_raises_balanced_accuracy():
    from sklearn.metrics import balanced_accuracy_score

    a = synthetic_arrays(3000, 16, seed=5, noise=1.3)
    b = synthetic_arrays(2000, 16, seed=6, noise=1.3)
    res = {}
    for cw in ("inverse", "none"):
        head = SklearnHead("logreg", tasks=["race"], class_weighting=cw)
        pred = head.fit(({"embedding": a["X"]}, {"race": a["race"]})).predict(
            {"embedding": b["X"]})["race"]
        res[cw] = balanced_accuracy_score(b["race"], pred)
    assert res["inverse"] > res["none"] + 0.01


@pytest.mark.parametrize("params,message", [
    ({"kind": "forest"}, "SklearnHead: kind must be one of 'logreg'"),
    ({"C": -1}, "SklearnHead: C must be a number > 0.0, got -1"),
    ({"n_neighbors": 0}, "SklearnHead: n_neighbors must be an integer >= 1, got 0"),
    ({"gamma": "big"}, "SklearnHead: gamma must be 'scale', 'auto' or a positive number"),
    ({"task_params": {"race": {"kind": "knn"}}},
     r"SklearnHead: task_params\['race'\] sets 'kind'; per task only C, gamma"),
    ({"task_params": {"smiling": {"C": 2}}},
     "SklearnHead: task_params names task.s. smiling that are not fitted"),
    ({"task_params": {"race": {"C": 0}}},
     r"SklearnHead: C must be a number > 0.0, got 0 \(in task_params\['race'\]\)"),
])
def test_bad_params(params, message, data):
    (X, y), _ = data
    kind = params.pop("kind", "svm")
    with pytest.raises(ConfigError, match="^" + message):
        SklearnHead(kind, tasks=TASKS, **params).fit((X, y))


def test_make_head_names_choices():
    with pytest.raises(ConfigError, match="head must be one of mlp, logreg"):
        make_head("xgboost")


def test_task_params_set_one_task_and_survive_a_bundle(data, tmp_path):
    from faceprobe.heads.bundle import load_bundle, save_bundle

    (X, y), (Xt, _) = data
    head = SklearnHead("svm", tasks=TASKS, C=1.0, task_params={"race": {"C": 0.05}}).fit((X, y))
    assert head.models_["race"][-1].C == 0.05
    assert head.models_["gender"][-1].C == 1.0 and head.models_["age"][-1].C == 1.0
    plain = SklearnHead("svm", tasks=TASKS, C=1.0).fit((X, y))
    same = plain.predict_outputs(Xt)
    got = head.predict_outputs(Xt)
    np.testing.assert_allclose(got["gender"], same["gender"], atol=1e-6)
    assert not np.allclose(got["race"], same["race"], atol=1e-3)
    loaded = load_bundle(save_bundle(head, tmp_path / "m")).model
    assert loaded.task_params == {"race": {"C": 0.05}}
    np.testing.assert_allclose(loaded.predict_outputs(Xt)["race"], got["race"], atol=1e-6)
