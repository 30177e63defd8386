"""The ArcFace identity-space head: quality on clustered embeddings, numpy inference, bundles,
parameter checks, the search space, and a real-data run (skipped without ../shared)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from faceprobe.errors import BundleError, ConfigError
from faceprobe.heads.bundle import load_bundle, save_bundle
from faceprobe.heads.margin import MarginHead
from faceprobe.heads.margin_train import identification_accuracy, train_margin_store
from faceprobe.heads.synthetic import write_synthetic_store

DIM = 32


def clustered(n_id: int, per_id: int, dim: int = DIM, *, seed: int = 0, first: int = 0,
              nuisance: float = 0.4, noise: float = 0.2):
    """Unit-norm embeddings: identity centres on the sphere + a nuisance (pose, light) in a
    low-rank subspace shared by every person + isotropic noise. Raw cosine identification is
    mediocre (the nuisance dominates); a learned space can project the nuisance out, also for
    people it never saw."""
    rank = dim // 8
    basis = np.linalg.qr(np.random.default_rng(99).standard_normal((dim, rank)))[0]
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_id, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_id), per_id)
    x = (centres[y] + nuisance * rng.standard_normal((len(y), rank)) @ basis.T
         + noise * 4 / np.sqrt(dim) * rng.standard_normal((len(y), dim)))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.array([f"id{first + i}" for i in y], dtype=object)


@pytest.fixture(scope="module")
def data():
    X, y = clustered(200, 10, seed=0)
    train = np.arange(len(y)) % 10 < 8  # 8 images per person to train on, 2 held out
    Xnew, ynew = clustered(80, 5, seed=1, first=10_000)  # people the head never saw
    return X[train], y[train], Xnew, ynew, X[~train], y[~train]


@pytest.fixture(scope="module")
def fitted(data):
    Xtr, ytr = data[:2]
    return MarginHead(out_dim=32, epochs=40, seed=0).fit(Xtr, ytr)


def centre_accuracy(Z_gallery, y_gallery, Z_probe, y_probe) -> float:
    """Nearest class centre (mean of unit rows, cosine)."""
    names = sorted(set(y_gallery))
    idx = {c: i for i, c in enumerate(names)}
    g = np.array([idx[v] for v in y_gallery])
    C = np.zeros((len(names), Z_gallery.shape[1]))
    np.add.at(C, g, Z_gallery / np.linalg.norm(Z_gallery, axis=1, keepdims=True))
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    pred = (Z_probe @ C.T).argmax(axis=1)
    return float(np.mean(pred == np.array([idx[v] for v in y_probe])))


def test_learned_space_identifies_better_than_the_raw_embeddings(data, fitted):
    Xtr, ytr, Xnew, ynew, Xh, yh = data
    # unseen identities: first image enrols, the others probe (measured: 0.50 -> 0.93)
    raw = identification_accuracy(Xnew, ynew)["top1"]
    ours = identification_accuracy(fitted.transform(Xnew), ynew)["top1"]
    assert raw < 0.6 and ours > raw + 0.2, (raw, ours)
    # held-out images of the training identities against their training images' centres
    raw_c = centre_accuracy(Xtr, ytr, Xh, yh)
    ours_c = centre_accuracy(fitted.transform(Xtr), ytr, fitted.transform(Xh), yh)
    assert ours_c > raw_c + 0.1, (raw_c, ours_c)
    # early stopping looked at held-out images of the training identities and kept its best
    h = fitted.history_
    assert fitted.n_val_rows_ + fitted.n_train_rows_ == 1600 and fitted.n_identities_ == 200
    assert 110 < fitted.n_val_rows_ < 210  # val_fraction 0.1 of each person's 8, rounded
    assert 1 <= fitted.best_epoch_ <= len(h["loss"]) <= 40
    assert h["val_loss"][fitted.best_epoch_ - 1] == min(h["val_loss"])


def test_transform_is_unit_norm_float32_and_deterministic(data, fitted):
    Xtr, ytr, Xnew = data[:3]
    Z = fitted.transform(Xnew)
    assert Z.shape == (len(Xnew), 32) and Z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(Z, fitted.transform(Xnew))
    # the batch size changes a row only by BLAS rounding
    np.testing.assert_allclose(Z[:7], fitted.transform(Xnew, batch_size=3)[:7], atol=1e-6)
    again = MarginHead(out_dim=32, epochs=40, seed=0).fit(Xtr, ytr)
    np.testing.assert_array_equal(again.transform(Xnew), Z)


def test_numpy_transform_reproduces_the_torch_network(data):
    """BatchNorm and the input scaler are folded into matrices for numpy inference; this checks
    the folding against the torch module it was exported from (with non-trivial BN stats)."""
    import torch

    from faceprobe.heads import margin_torch as margin

    Xtr, ytr, Xnew = data[:3]
    head = MarginHead(out_dim=8, hidden=(16, 12), epochs=1).fit(Xtr[:200], ytr[:200])
    torch.manual_seed(3)
    net = margin._torch_net(head, DIM, 5)
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    net.eval()
    head.layers_ = margin._export(net)
    head._folded = None
    with torch.no_grad():
        want = net.embed(torch.from_numpy(head._prepare({"embedding": Xnew}))).numpy()
    np.testing.assert_allclose(head.transform(Xnew), want, atol=2e-5)


def test_arcface_logits_add_the_margin_on_the_true_class_only():
    import math

    import torch

    from faceprobe.heads.margin_torch import arcface_logits

    cos = torch.tensor([[0.5, 0.2, -0.1], [0.9, -0.99, 0.3]])
    y = torch.tensor([0, 1])
    out = arcface_logits(cos, y, s=10.0, m=0.3)
    theta = math.acos(0.5)
    assert out[0, 0].item() == pytest.approx(10 * math.cos(theta + 0.3), abs=1e-5)
    # theta + m past pi: the monotone fallback cos(theta) - m sin(m)... stays below cos(theta)
    assert out[1, 1].item() == pytest.approx(10 * (-0.99 - math.sin(math.pi - 0.3) * 0.3),
                                             abs=1e-4)
    np.testing.assert_allclose(out[0, 1:].numpy(), [2.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(out[1, [0, 2]].numpy(), [9.0, 3.0], atol=1e-6)


def test_rows_without_identity_are_ignored_and_counted(data):
    Xtr, ytr = data[:2]
    ids = ytr[:300].copy()
    ids[[0, 5, 9]] = None
    ids[[1, 2]] = ""
    ids[3] = float("nan")
    said = []
    head = MarginHead(out_dim=8, epochs=2).fit(Xtr[:300], ids, log=said.append)
    assert head.rows_ignored_ == 6
    assert said == ["MarginHead: 6 of 300 rows have no identity; not used"]
    assert head.n_train_rows_ + head.n_val_rows_ == 294


def test_explicit_validation_drops_unknown_identities(data):
    Xtr, ytr, Xnew, ynew, Xh, yh = data
    said = []
    val = (np.concatenate([Xh[:16], Xnew[:4]]), np.concatenate([yh[:16], ynew[:4]]))
    head = MarginHead(out_dim=8, epochs=2).fit(Xtr, ytr, validation=val, log=said.append)
    assert head.validation_ignored_ == 4 and head.n_val_rows_ == 16
    assert "4 validation rows have no identity seen in training" in said[0]


@pytest.mark.parametrize("params, message", [
    ({"s": 0}, "MarginHead: s must be a number > 0.0 and <= 256.0, got 0"),
    ({"m": -0.1}, "MarginHead: m must be a number >= 0.0 and <= 1.5, got -0.1"),
    ({"out_dim": 0}, "MarginHead: out_dim must be an integer >= 1, got 0"),
    ({"hidden": (64, -1)}, "MarginHead: hidden must be a list of positive integers (empty for a "
                           "linear projection), got (64, -1)"),
    ({"val_fraction": 0.9}, "MarginHead: val_fraction must be a number >= 0.0 and <= 0.5, "
                            "got 0.9"),
    ({"batch_size": 1}, "MarginHead: batch_size must be an integer >= 2, got 1"),
])
def test_parameters_are_checked_at_fit(data, params, message):
    Xtr, ytr = data[:2]
    head = MarginHead(**params)  # constructing never fails (scikit-learn's convention)
    with pytest.raises(ConfigError) as e:
        head.fit(Xtr[:50], ytr[:50])
    assert str(e.value) == message


def test_user_mistakes_are_one_line_errors(data):
    Xtr, ytr = data[:2]
    with pytest.raises(ConfigError, match="at least 2 identities with images, got 1"):
        MarginHead().fit(Xtr[:8], ytr[:8])
    with pytest.raises(ConfigError, match="fit needs identities"):
        MarginHead().fit(Xtr[:8])
    with pytest.raises(ConfigError, match="one label per row"):
        MarginHead().fit(Xtr[:8], ytr[:7])
    with pytest.raises(ConfigError, match="not fitted yet"):
        MarginHead().transform(Xtr)
    head = MarginHead(out_dim=8, epochs=1).fit(Xtr[:64], ytr[:64])
    with pytest.raises(ConfigError, match=r"expects embeddings of dimension 32 \(embedding 32\), "
                                          r"got an array of shape \(3, 31\)"):
        head.transform(Xtr[:3, :31])
    with pytest.raises(ConfigError, match="predicts no attributes"):
        head.predict(Xtr[:3])


def test_feature_groups_concatenate_in_a_stable_order_and_survive_a_bundle(data, tmp_path):
    Xtr, ytr, Xnew = data[:3]
    groups = {"zeta": Xtr[:, :20], "alpha": Xtr[:, 20:]}
    head = MarginHead(out_dim=8, epochs=2).fit(groups, ytr)
    assert list(head.feature_groups_) == ["alpha", "zeta"]  # no "embedding": sorted
    named = MarginHead(out_dim=8, epochs=2, features=["zeta", "alpha"]).fit(groups, ytr)
    assert list(named.feature_groups_) == ["zeta", "alpha"]  # named: that order
    new = {"alpha": Xnew[:, 20:], "zeta": Xnew[:, :20]}
    Z = named.transform(new)
    np.testing.assert_array_equal(Z, named.transform(Xnew))  # one array = groups in fit order
    save_bundle(named, tmp_path / "b")
    b = load_bundle(tmp_path / "b")
    assert list(b.model.feature_groups_) == ["zeta", "alpha"]  # not bundle.json's sorted keys
    np.testing.assert_array_equal(b.transform(new), Z)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(tmp_path_factory.mktemp("margin") / "s", 900, 16,
                                 identities=90, split="official")


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "arc"
    said: list[str] = []
    res = train_margin_store(store, out=out, params={"out_dim": 16, "epochs": 30},
                             log=said.append)
    return res, said


def test_train_store_writes_a_margin_bundle_that_transforms_the_same(store, trained):
    from faceprobe.embed.store import Store

    res, said = trained
    b = load_bundle(res.bundle)
    assert b.kind == "margin" and b.is_identity_space and b.out_dim == 16
    assert b.features == {"embedding": 16} and b.backbone == "test.synthetic"
    assert b.meta["serialization"] == "npz" and b.meta["files"] == {"model": "weights.npz"}
    assert "weights.npz" in json.loads((res.bundle / "checksums.json").read_text())
    assert b.meta["state"]["n_identities"] == res.model.n_identities_
    m = b.meta["metrics"]["val"]
    assert m["identification_top1"] is not None and m["raw_identification_top1"] is not None
    assert b.meta["split"]["refit"] == "train+val"
    assert any("validation identification top-1" in s for s in said)
    data = Store(store).load()
    np.testing.assert_array_equal(b.transform(data), res.model.transform(data))
    np.testing.assert_array_equal(b.transform(data.X["embedding"]),
                                  res.model.transform(data.X["embedding"]))
    b.check_store(Store(store))


def test_bundle_refuses_embeddings_of_another_size(trained, tmp_path):
    res, _ = trained
    b = load_bundle(res.bundle)
    with pytest.raises(BundleError) as e:
        b.transform(np.zeros((4, 512), np.float32))
    msg = str(e.value)
    assert str(res.bundle) in msg and "expects embeddings of dimension 16" in msg
    assert "input has 512" in msg and "\n" not in msg
    with pytest.raises(BundleError, match="expects 'embedding' of dimension 16 but the input "
                                          "has 128"):
        b.transform({"embedding": np.zeros((2, 128), np.float32)})
    other = write_synthetic_store(tmp_path / "d", 40, 12)
    from faceprobe.embed.store import Store
    with pytest.raises(BundleError, match="expects 'embedding' of dimension 16 but store"):
        b.check_store(Store(other))


def test_tampered_or_inconsistent_weights_are_refused(trained, tmp_path):
    res, _ = trained
    copy = tmp_path / "m"
    shutil.copytree(res.bundle, copy)
    data = bytearray((copy / "weights.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="weights.npz does not match its checksum"):
        load_bundle(copy)
    # matrices that do not chain from the declared input width (checksums recomputed, as a
    # careless hand edit would): refused at load, in one line
    from faceprobe.files import file_sha256
    shutil.rmtree(copy)
    shutil.copytree(res.bundle, copy)
    arrays = dict(res.model.get_arrays())
    arrays["W0"] = arrays["W0"][:-1]
    with open(copy / "weights.npz", "wb") as f:
        np.savez(f, **arrays)
    sums = json.loads((copy / "checksums.json").read_text())
    sums["weights.npz"] = file_sha256(copy / "weights.npz")
    (copy / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(BundleError, match=r"weights.npz does not match bundle.json \(MarginHead: "
                                          r"layer 0 has shape \(15, 16\)"):
        load_bundle(copy)


def test_attribute_bundles_have_no_transform(tmp_path):
    from faceprobe.heads.bundle import Bundle

    b = Bundle(tmp_path / "lr", {"head": "logreg", "features": {"embedding": 16}}, None)
    assert not b.is_identity_space and b.out_dim is None
    with pytest.raises(BundleError, match="holds a 'logreg' head, which predicts attributes"):
        b.transform(np.zeros((2, 16), np.float32))


def test_search_space_and_a_short_search(store, tmp_path):
    from faceprobe.heads.search_space import head_params, search_space
    from faceprobe.heads.tune import tune_store

    space = search_space("margin", ["identity"], 10)
    assert [s["name"] for s in space] == ["out_dim", "depth", "width", "s", "m"]
    defaults = head_params("margin", {s["name"]: s["default"] for s in space}, ["identity"], 16)
    ref = MarginHead()
    assert defaults == {"out_dim": ref.out_dim, "hidden": list(ref.hidden), "s": ref.s,
                        "m": ref.m}  # the first trial is the untuned head
    assert head_params("margin", {"out_dim": 64, "depth": 1, "width": 256, "s": 20.0, "m": 0.2},
                       [], 16) == {"out_dim": 64, "hidden": [256], "s": 20.0, "m": 0.2}
    res = tune_store(store, "identity", head="arcface", trials=2, directory=tmp_path / "d",
                     out=tmp_path / "best", max_epochs=3)
    assert res.trials == 2 and 0 <= res.best_score <= 1
    assert res.metrics["identification_top1"] is not None
    b = load_bundle(tmp_path / "best")
    assert b.kind == "margin" and b.meta["tuning"]["trials"] == 2
    with pytest.raises(ConfigError, match="--tasks must be identity"):
        tune_store(store, "gender", head="margin", trials=1, directory=tmp_path / "e")


def test_real_celeba_identities(shared_data, tmp_path):
    """CelebA faces (../shared/data) through the real MobileFaceNet: the head trains on real
    embeddings and keeps held-out images of its identities identifiable. Skipped without
    ../shared; ~10 s (MTCNN + ONNX on ~100 images)."""
    pytest.importorskip("onnxruntime")
    weights = shared_data.parent / "weights" / "mobilefacenet-arcface-paddle.onnx"
    if not weights.is_file():
        pytest.skip(f"{weights} is absent")
    from faceprobe.embed import embed_images

    root = shared_data / "celeba"
    by_id: dict[str, list[str]] = {}
    for line in (root / "identity_CelebA.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and (root / "img_align_celeba" / parts[0]).is_file():
            by_id.setdefault(parts[1], []).append(parts[0])
    people = sorted((k for k, v in by_id.items() if len(v) >= 8), key=lambda k: (len(k), k))[:12]
    if len(people) < 6:
        pytest.skip("too few CelebA identities with 8 images in ../shared")
    paths = [str(root / "img_align_celeba" / f) for p in people for f in sorted(by_id[p])[:8]]
    rows = embed_images(paths, "arcface.mobilefacenet-paddle", weights=str(weights),
                        device="cpu")
    ok = [(r["features"]["embedding"], r["path"]) for r in rows
          if r.get("features")]
    ident = {str(root / "img_align_celeba" / f): p for p in people for f in by_id[p]}
    X = np.stack([np.asarray(e, np.float32) for e, _ in ok])
    y = np.array([ident[p] for _, p in ok], dtype=object)
    assert X.shape[1] == 128 and len(X) >= 60
    # the first 6 images of each person train the head and make the class centres; the rest
    # are probes it never saw, scored by nearest centre in both spaces
    first = np.zeros(len(y), bool)
    for p in people:
        first[np.flatnonzero(y == p)[:6]] = True
    head = MarginHead(out_dim=32, epochs=40).fit(X[first], y[first])
    Z = head.transform(X)
    assert Z.shape == (len(X), 32)
    ours = centre_accuracy(Z[first], y[first], Z[~first], y[~first])
    raw = centre_accuracy(X[first], y[first], X[~first], y[~first])
    assert ours >= raw - 0.1 and ours > 0.6, (raw, ours)
    # and it learnt the people: its held-out images are classified right by the class weights
    best = head.history_["val_accuracy"][head.best_epoch_ - 1]
    assert head.n_val_rows_ >= 4 and best > 0.6, (head.n_val_rows_, best)
    print(f"CelebA: raw {raw:.3f} head {ours:.3f} val_accuracy {best:.3f}")
