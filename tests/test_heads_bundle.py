"""Bundles: roundtrip, checksum refusal, version refusal, store compatibility."""

import json

import numpy as np
import pytest

from faceprobe.embed.store import Store
from faceprobe.errors import BundleError
from faceprobe.heads.bundle import load_bundle, save_bundle
from faceprobe.heads.synthetic import write_synthetic_store
from faceprobe.heads.train import train_store


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    return {
        "s": write_synthetic_store(root / "s", 900, 8, shard_size=300),
        "other_backbone": write_synthetic_store(root / "o", 60, 8, backbone="other.net"),
        "other_dim": write_synthetic_store(root / "d", 60, 12),
        "root": root,
    }


@pytest.fixture(scope="module")
def bundles(stores):
    root = stores["root"]
    mlp = train_store(stores["s"], "gender,age,race", "mlp", out=root / "mlp",
                      params={"hidden": (16,), "epochs": 8})
    lr = train_store(stores["s"], "gender,race,age", "logreg", out=root / "logreg")
    return {"mlp": mlp, "logreg": lr}


@pytest.mark.parametrize("kind", ["mlp", "logreg"])
def test_roundtrip_predicts_the_same(stores, bundles, kind):
    res = bundles[kind]
    b = load_bundle(res.bundle)
    assert b.kind == kind and b.backbone == "test.synthetic"
    assert b.features == {"embedding": 8}
    assert b.vocabularies["race"][0] == "White"
    assert b.meta["split"]["text"] and "gender" in b.meta["metrics"]["val"]["tasks"]
    assert b.meta["store"]["weights_sha256"] == "synthetic"
    X = Store(stores["s"]).load().X
    before, after = res.model.predict_outputs(X), b.predict_outputs(X)
    for t in before:
        np.testing.assert_allclose(before[t], after[t], rtol=1e-5, atol=1e-5)
    files = set(json.loads((res.bundle / "checksums.json").read_text()))
    assert "bundle.json" in files
    if kind == "mlp":
        assert "model.keras" in files and b.meta["scalers"]["embedding"]["mean"]


@pytest.mark.parametrize("target", ["model.keras", "bundle.json"])
def test_tampered_file_refused(stores, bundles, tmp_path, target):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(bundles["mlp"].bundle, copy)
    data = bytearray((copy / target).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / target).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{target} does not match its checksum") as e:
        load_bundle(copy)
    assert "\n" not in str(e.value)


def test_tampered_sklearn_model_refused(bundles, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(bundles["logreg"].bundle, copy)
    victim = sorted(p for p in copy.iterdir() if p.name.startswith("model-"))[0]
    victim.write_bytes(victim.read_bytes() + b"x")
    with pytest.raises(BundleError, match=f"{victim.name} does not match its checksum"):
        load_bundle(copy)


def test_newer_format_refused(bundles, tmp_path):
    import hashlib
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(bundles["logreg"].bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    meta["format_version"] = 99
    (copy / "bundle.json").write_text(json.dumps(meta))
    sums = json.loads((copy / "checksums.json").read_text())
    sums["bundle.json"] = hashlib.sha256((copy / "bundle.json").read_bytes()).hexdigest()
    (copy / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(BundleError, match="newer than this faceprobe .* upgrade faceprobe"):
        load_bundle(copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="not a faceprobe model bundle"):
        load_bundle(tmp_path)


def test_wrong_store_refused(stores, bundles):
    b = load_bundle(bundles["mlp"].bundle)
    with pytest.raises(BundleError, match="trained on 'test.synthetic' embeddings but store .* "
                                          "holds 'other.net'"):
        b.check_store(Store(stores["other_backbone"]))
    with pytest.raises(BundleError, match="expects 'embedding' of dimension 8 but store .* has 12"):
        b.check_store(Store(stores["other_dim"]))


def test_existing_out_needs_overwrite(bundles):
    res = bundles["logreg"]
    with pytest.raises(BundleError, match="use --overwrite"):
        save_bundle(res.model, res.bundle)
    save_bundle(res.model, res.bundle, overwrite=True)
    load_bundle(res.bundle)


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_group_order_survives_the_bundle(tmp_path, kind):
    """bundle.json is written with sorted keys: a head fitted on groups (zeta, alpha) of equal
    width must still concatenate them as zeta, alpha after loading (two 128-d backbones)."""
    from faceprobe.heads.baselines import make_head
    from faceprobe.heads.bundle import load_bundle, save_bundle

    rng = np.random.default_rng(0)
    X = {"zeta": rng.normal(size=(300, 4)).astype(np.float32),
         "alpha": rng.normal(size=(300, 4)).astype(np.float32)}
    y = {"gender": (X["zeta"][:, 0] > 0).astype(np.int64)}
    params = {"epochs": 5} if kind == "mlp" else {}
    head = make_head(kind, tasks=["gender"], features=["zeta", "alpha"], **params)
    head.fit(X, y, vocabularies={"gender": ["male", "female"]})
    before = head.predict_outputs(X)["gender"]
    loaded = load_bundle(save_bundle(head, tmp_path / "b"))
    assert list(loaded.model.feature_groups_) == ["zeta", "alpha"]
    np.testing.assert_allclose(loaded.predict_outputs(X)["gender"], before, atol=1e-5)
