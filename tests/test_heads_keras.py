"""The Keras head's estimator contract, masked loss, class weights, determinism, age modes."""

import numpy as np
import pytest

from faceprobe.errors import ConfigError
from faceprobe.heads.common import class_weights
from faceprobe.heads.keras_head import KerasHead
from faceprobe.heads.synthetic import synthetic_arrays

TASKS = ["gender", "race", "age"]
FAST = {"hidden": (32,), "epochs": 25, "patience": 4, "batch_size": 128}


@pytest.fixture(scope="module")
def data():
    a = synthetic_arrays(1600, 16, seed=0, noise=0.7)
    b = synthetic_arrays(600, 16, seed=9, noise=0.7)
    return ({"embedding": a["X"]}, {t: a[t] for t in TASKS}), \
        ({"embedding": b["X"]}, {t: b[t] for t in TASKS})


def test_fit_returns_self_and_learned_state(data):
    (X, y), (Xt, yt) = data
    head = KerasHead(tasks=TASKS, **FAST)
    assert not any(k.endswith("_") for k in vars(head))
    assert head.fit((X, y), vocabularies={"gender": ["male", "female"]}) is head
    for attr in ("model_", "vocabularies_", "scalers_", "history_", "feature_groups_"):
        assert hasattr(head, attr)
    assert head.vocabularies_["gender"] == ["male", "female"]
    assert head.feature_groups_ == {"embedding": 16}
    proba = head.predict_proba(Xt)
    assert set(proba) == {"gender", "race"}
    assert proba["race"].shape == (600, 5)
    np.testing.assert_allclose(proba["race"].sum(axis=1), 1, atol=1e-5)
    pred = head.predict(Xt)
    assert (pred["gender"] == yt["gender"]).mean() > 0.8  # the Keras copy of the torch weights works
    assert np.abs(pred["age"] - yt["age"]).mean() < 12


@pytest.mark.parametrize("param,value,message", [
    ("dropout", 1.5, "KerasHead: dropout must be a number >= 0.0 and <= 0.95, got 1.5"),
    ("hidden", [0], "KerasHead: hidden must be a list of positive integers"),
    ("class_weighting", "balanced", "KerasHead: class_weighting must be one of 'inverse', 'none'"),
    ("age_mode", "bins", "KerasHead: age_mode must be one of 'regression', 'expected'"),
    ("lr", 0, "KerasHead: lr must be a number > 0.0"),
    ("loss_weights", {"smiling": 1.0}, "KerasHead: loss_weights must be keyed by the fitted tasks"),
])
def test_bad_params_are_uniform_config_errors(data, param, value, message):
    (X, y), _ = data
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace("[", r"\[")):
        KerasHead(tasks=TASKS, **{param: value}).fit((X, y))


def test_class_weight_formula():
    w = class_weights(np.array([0, 0, 0, 1, -1, -1]), 3)
    # counts 3, 1, 0: w ∝ 1/n over present classes, mean 1 over them; absent class 0
    np.testing.assert_allclose(w, [0.5, 1.5, 0.0])
    codes = np.array([0] * 70 + [1] * 20 + [2] * 10)
    w = class_weights(codes, 3)
    assert w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(w * np.array([70, 20, 10]), (w * np.array([70, 20, 10]))[0])
    np.testing.assert_array_equal(class_weights(codes, 3, "none"), [1, 1, 1])


def test_missing_labels_are_masked_not_learned_as_class_zero():
    # Half the rows look like gender 1 but have no label. If they were not masked out they would
    # be learned as code 0 (or poison the loss) and gender-1 faces would come out as 0.
    a = synthetic_arrays(2400, 16, seed=3, noise=0.6)
    g = a["gender"].copy()
    unlabeled = np.flatnonzero(g == 1)[: (g == 1).sum() * 3 // 4]
    g[unlabeled] = -1
    y = {"gender": g}
    head = KerasHead(tasks=["gender"], **FAST).fit(({"embedding": a["X"]}, y))
    b = synthetic_arrays(600, 16, seed=4, noise=0.6)
    pred = head.predict({"embedding": b["X"]})["gender"]
    assert (pred[b["gender"] == 1] == 1).mean() > 0.7


def test_two_fits_are_identical(data):
    (X, y), (Xt, _) = data
    p1 = KerasHead(tasks=TASKS, seed=3, **FAST).fit((X, y)).predict_proba(Xt)
    p2 = KerasHead(tasks=TASKS, seed=3, **FAST).fit((X, y)).predict_proba(Xt)
    for t in p1:
        np.testing.assert_array_equal(p1[t], p2[t])


def test_expected_age_from_age_group(data):
    (X, y), (Xt, yt) = data
    head = KerasHead(tasks=["age"], age_mode="expected", **FAST).fit((X, y))
    assert head.outputs_ == ["age_group"]
    assert len(head.age_bin_means_) == 9
    out = head.predict(Xt)
    assert set(out) == {"age"}
    assert np.abs(out["age"] - yt["age"]).mean() < 14


def test_weighting_raises_minority_recall(data):
    """On a 9:1 skewed task the unweighted head mostly answers the majority class; inverse
    weighting must raise balanced accuracy clearly (about 0.61 -> 0.78 here over seeds 0-2), so
    a loss that ignored the weights fails."""
    from sklearn.metrics import balanced_accuracy_score

    (X, y), (Xt, yt) = data
    g = y["gender"]
    keep = (g == 0) | (np.arange(len(g)) % 12 == 0)  # one in 12 of the gender-1 rows
    Xs, ys = {"embedding": X["embedding"][keep]}, {"gender": g[keep]}
    assert ys["gender"].mean() < 0.15
    scores = {}
    for cw in ("inverse", "none"):
        head = KerasHead(tasks=["gender"], class_weighting=cw, **FAST).fit((Xs, ys))
        scores[cw] = balanced_accuracy_score(yt["gender"], head.predict(Xt)["gender"])
    assert head.class_weights_["gender"] == [1.0, 1.0]
    assert scores["inverse"] >= scores["none"] + 0.08, scores


def _capture_torch_net(monkeypatch):
    """Keep the torch module fit() trains before its weights are copied into Keras."""
    from faceprobe.heads import keras_head

    nets = []
    real = keras_head._copy_weights

    def spy(net, model, head):
        nets.append(net)
        return real(net, model, head)

    monkeypatch.setattr(keras_head, "_copy_weights", spy)
    return nets


@pytest.mark.parametrize("norm,hidden,age_mode", [("batch", (32, 16), "expected"),
                                                  ("layer", (24,), "regression"),
                                                  ("none", (), "regression")])
def test_keras_model_reproduces_the_torch_trained_network(monkeypatch, tmp_path, norm, hidden,
                                                          age_mode):
    """Training runs in torch and _copy_weights moves the weights into the Keras model: Keras'
    own predict (and the saved, reloaded model.keras) must give the torch module's outputs on
    real rows, two feature groups each standardised on its own."""
    import keras
    import torch

    from faceprobe.heads.keras_torch import _standardised

    nets = _capture_torch_net(monkeypatch)
    a = synthetic_arrays(800, 12, seed=5, noise=0.8)
    X = {"embedding": a["X"], "extra": a["X"][:, :4] * 7 - 3}
    head = KerasHead(tasks=TASKS, hidden=hidden, norm=norm, age_mode=age_mode, epochs=8,
                     features=["embedding", "extra"], seed=1).fit((X, {t: a[t] for t in TASKS}))
    (net,) = nets
    b = synthetic_arrays(300, 12, seed=6, noise=0.8)
    Xt = {"embedding": b["X"], "extra": b["X"][:, :4] * 7 - 3}
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(_standardised(head, Xt)))
    want = {t: (z.numpy() if t == "age" else torch.softmax(z, 1).numpy())
            for t, z in zip(head.outputs_, logits, strict=True)}
    head.model_.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    for model in (head.model_, loaded):
        got = model.predict(Xt, verbose=0)
        for t in head.outputs_:
            assert got[t].shape == want[t].shape
            np.testing.assert_allclose(got[t], want[t], rtol=1e-4, atol=1e-5, err_msg=t)


def test_saved_model_declares_the_l2_the_training_applied(monkeypatch, tmp_path, data):
    """Training adds weight_decay * sum(W**2) over _decayed_kernels (every Linear: trunk and
    output heads); the saved model must declare L2(weight_decay) on exactly those Dense layers."""
    import keras

    from faceprobe.heads.keras_torch import _decayed_kernels

    (X, y), _ = data
    nets = _capture_torch_net(monkeypatch)
    head = KerasHead(tasks=TASKS, weight_decay=3e-3,
                     **{**FAST, "hidden": (32, 16), "epochs": 2}).fit((X, y))
    head.model_.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    dense = [layer for layer in loaded.layers if isinstance(layer, keras.layers.Dense)]
    trained = sorted(tuple(k.shape)[::-1] for k in _decayed_kernels(nets[0]))
    declared = sorted(tuple(layer.kernel.shape) for layer in dense
                      if layer.kernel_regularizer is not None)
    assert declared == trained and len(declared) == len(dense) == 3 + 2
    for layer in dense:
        reg = layer.kernel_regularizer
        assert isinstance(reg, keras.regularizers.L2), layer.name
        assert reg.l2 == pytest.approx(3e-3), layer.name
    plain = KerasHead(tasks=TASKS, weight_decay=0.0, **{**FAST, "epochs": 1}).fit((X, y))
    assert all(layer.kernel_regularizer is None for layer in plain.model_.layers
               if isinstance(layer, keras.layers.Dense))
@pytest.mark.parametrize("norm,hidden", [("batch", (32, 16)), ("none", ()), ("layer", (8,))])
def test_fused_inference_matches_the_keras_model(norm, hidden):
    a = synthetic_arrays(500, 6, seed=2)
    X = {"embedding": a["X"], "extra": a["X"][:, :3] * 10 + 5}
    head = KerasHead(tasks=TASKS, hidden=hidden, norm=norm, features=["embedding", "extra"],
                     epochs=3).fit((X, {t: a[t] for t in TASKS}))
    fast, slow = head.predict_outputs(X), head.predict_outputs(X, fused=False)
    for t in TASKS:
        np.testing.assert_allclose(fast[t], slow[t], rtol=1e-4, atol=1e-4)


def test_age_loss_weight_drives_the_age_group_output_in_expected_mode(data):
    """Expected age is read from the age_group softmax, so the weight given for ``age`` must
    train that output: with weight 0 its softmax stays untrained and age is far worse."""
    (X, y), (Xt, yt) = data
    mae = {}
    for w in (0.0, 1.0):
        head = KerasHead(tasks=TASKS, loss_weights={"age": w}, **FAST).fit((X, y))
        assert head.outputs_ == ["gender", "race", "age_group"]
        mae[w] = np.abs(head.predict(Xt)["age"] - yt["age"]).mean()
    assert mae[1.0] < 0.7 * mae[0.0], mae


def test_without_early_stopping_every_row_trains_for_exactly_epochs(data):
    (X, y), _ = data
    head = KerasHead(tasks=TASKS, early_stopping=False, **{**FAST, "epochs": 7}).fit((X, y))
    assert len(head.history_["loss"]) == 7 and head.best_epoch_ == 7
    assert head.history_["val_loss"] == []  # nothing was held out


def test_refit_retrains_on_all_rows_for_the_chosen_epochs(data):
    (X, y), (Xt, _) = data
    # a high learning rate over-fits the 10% hold-out early, so early stopping picks an epoch
    head = KerasHead(tasks=TASKS, **{**FAST, "epochs": 60, "lr": 0.03, "hidden": (128,)}).fit((X, y))
    chosen, curve = head.best_epoch_, list(head.history_["val_loss"])
    assert 0 < chosen < 60
    assert head.refit((X, y)) is head
    assert head.get_params()["epochs"] == chosen and head.early_stopping is False
    assert head.best_epoch_ == chosen and head.history_["val_loss"] == curve
    assert len(head.history_["refit_loss"]) == chosen
    # the recorded parameters reproduce the refitted model
    again = KerasHead(**head.get_params()).fit((X, y))
    for t, p in again.predict_proba(Xt).items():
        np.testing.assert_array_equal(p, head.predict_proba(Xt)[t])
