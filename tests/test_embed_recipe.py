"""Several backbones in one detection pass, the recorded recipe, and image scoring that
reproduces the store (real images; FaceNet with seeded random weights, dlib's real model)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from faceprobe.data.registry import get_reader
from faceprobe.embed.add_features import add_features
from faceprobe.embed.pipeline import embed_dataset, embed_images
from faceprobe.embed.recipe import build_backbones, recipe_of
from faceprobe.embed.store import Store
from faceprobe.errors import BundleError, ConfigError, StoreError
from faceprobe.heads.bundle import load_bundle
from faceprobe.heads.score import score_images, score_store
from faceprobe.heads.train import train_store

pytest.importorskip("dlib")
TWO = "dlib.resnet,facenet.vggface2"


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="module")
def mtfl(fixtures_dir, tmp_path_factory):
    """The MTFL fixture embedded once with dlib (workers: dlib runs in them) and FaceNet."""
    root = tmp_path_factory.mktemp("recipe")
    reader = get_reader("mtfl", fixtures_dir / "mtfl")
    records = list(reader.records())
    summary = embed_dataset(records, root / "two", TWO, weights=[None, "random"], workers=1,
                            show_progress=False, vocabularies=reader.vocabularies())
    return root, records, reader, Store(root / "two"), summary


def test_one_pass_holds_each_backbone_as_its_own_group(mtfl, tmp_path):
    root, records, reader, store, summary = mtfl
    assert store.feature_dims == {"embedding": 128, "facenet.vggface2": 512}
    recipe = store.meta["recipe"]
    assert [(b["name"], b["group"]) for b in recipe["backbones"]] == [
        ("dlib.resnet", "embedding"), ("facenet.vggface2", "facenet.vggface2")]
    # every preprocessing value is in the manifest, per backbone
    cfg = recipe["backbones"][1]["config"]
    assert (cfg["input_size"], cfg["mean"], cfg["std"], cfg["alignment"], cfg["channel_order"],
            cfg["layout"]) == (160, 127.5, 128.0, "crop", "RGB", "NCHW")
    assert recipe["detection"]["multi_face"] == "central"
    d = store.load(features=("embedding", "facenet.vggface2"), tasks=())
    # each group equals what that backbone alone gives on the same faces (each aligned on its
    # own: dlib's chip for dlib, FaceNet's margin crop for FaceNet); dlib here ran inline
    alone = embed_images(d.path, "facenet.vggface2", weights="random")
    assert _cos(np.stack([r["features"]["embedding"] for r in alone]),
                d.X["facenet.vggface2"]).min() > 0.99999
    inline = embed_images(d.path, "dlib.resnet")
    assert _cos(np.stack([r["features"]["embedding"] for r in inline]),
                d.X["embedding"]).min() > 0.99999


def test_add_features_adds_a_backbone_without_detecting_again(mtfl, tmp_path, monkeypatch):
    root, records, reader, store, _ = mtfl
    embed_dataset(records, tmp_path / "one", "dlib.resnet", workers=0, show_progress=False,
                  vocabularies=reader.vocabularies())
    import faceprobe.embed.prepare as prepare

    monkeypatch.setattr(prepare, "get_detector", lambda *a: pytest.fail("detected again"))
    s = add_features(tmp_path / "one", ["facenet.vggface2"], backbone="dlib.resnet",
                     weights="random", workers=0, show_progress=False)
    assert s["added"] == ["facenet.vggface2"] and s["shards_written"] == 1
    one = Store(tmp_path / "one")
    assert one.feature_dims == store.feature_dims
    assert [b["name"] for b in one.meta["recipe"]["backbones"]] == TWO.split(",")
    a = one.load(features=("facenet.vggface2",), tasks=())
    b = store.load(features=("facenet.vggface2",), tasks=())
    assert list(a.path) == list(b.path)
    assert _cos(a.X["facenet.vggface2"], b.X["facenet.vggface2"]).min() > 0.9999
    with pytest.raises(ConfigError, match="come from the backbone"):
        add_features(tmp_path / "one", ["pooled"], workers=0, show_progress=False)


def test_scoring_images_equals_scoring_their_store(mtfl, tmp_path):
    root, records, reader, store, _ = mtfl
    res = train_store(store, "gender,smiling", "logreg", out=tmp_path / "m",
                      features=["embedding", "facenet.vggface2"])
    bundle = load_bundle(res.bundle)
    assert [b["group"] for b in bundle.recipe["backbones"]] == ["embedding", "facenet.vggface2"]
    score_store(bundle, store, tmp_path / "store.csv")
    paths = sorted({r.path for r in records})
    score_images(bundle, paths, tmp_path / "images.csv")

    def read(p):
        return {(r["path"], r["face"]): r for r in csv.DictReader(open(p, newline=""))}
    a, b = read(tmp_path / "store.csv"), read(tmp_path / "images.csv")
    usable = [k for k, r in a.items() if r["gender"]]
    assert len(usable) >= 20
    for k in usable:
        assert a[k]["gender"] == b[k]["gender"] and a[k]["smiling"] == b[k]["smiling"]
        for col in a[k]:
            if "_p_" in col:
                assert abs(float(a[k][col]) - float(b[k][col])) <= 1e-4, (k, col)


def test_other_weights_are_refused_naming_both_hashes(mtfl, tmp_path):
    root, records, reader, store, _ = mtfl
    recipe = recipe_of(store.meta)
    recipe["backbones"][0]["weights_sha256"] = "0" * 64
    with pytest.raises(BundleError) as err:
        build_backbones(recipe, what="bundle X")
    msg = str(err.value)
    assert "0" * 64 in msg and store.meta["weights_sha256"] in msg and "\n" not in msg


def test_resume_with_another_recipe_is_refused(mtfl, tmp_path):
    root, records, reader, store, _ = mtfl
    out = tmp_path / "s"
    embed_dataset(records[:4], out, TWO, weights=",random", workers=0, show_progress=False,
                  vocabularies=reader.vocabularies())
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["recipe"]["backbones"][1]["config"]["margin"] = 0.0
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="recipe"):
        embed_dataset(records[:4], out, TWO, weights=",random", workers=0, show_progress=False,
                      vocabularies=reader.vocabularies())


def test_bad_backbone_lists_are_one_line_errors(fixtures_dir, tmp_path):
    paths = [str(p) for p in sorted(Path(fixtures_dir / "lfw").rglob("*.jpg"))[:1]]
    with pytest.raises(ConfigError, match="twice"):
        embed_images(paths, "dlib.resnet,dlib.resnet")
    with pytest.raises(ConfigError, match="2 backbones"):
        embed_images(paths, TWO, weights="a,b,c")


WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
FOAMLIU = WEIGHTS / "mobilefacenet-foamliu.onnx"
PADDLE = WEIGHTS / "mobilefacenet-arcface-paddle.onnx"
needs_weights = pytest.mark.skipif(not FOAMLIU.is_file() or not PADDLE.is_file(),
                                   reason=f"real MobileFaceNet weights not found in {WEIGHTS}")


@needs_weights
def test_real_two_backbone_bundle_scores_images_as_its_store(mtfl, tmp_path):
    root, records, reader, _, _ = mtfl
    embed_dataset(records, tmp_path / "s", "dlib.resnet,arcface.mobilefacenet",
                  weights=[None, str(FOAMLIU)], workers=1, show_progress=False,
                  vocabularies=reader.vocabularies())
    store = Store(tmp_path / "s")
    cfg = store.meta["recipe"]["backbones"][1]["config"]
    assert (cfg["channel_order"], cfg["mean"], cfg["layout"]) == (
        "RGB", [123.675, 116.28, 103.53], "NCHW")
    res = train_store(store, "gender,smiling", "logreg", out=tmp_path / "m",
                      features=["embedding", "arcface.mobilefacenet"])
    bundle = load_bundle(res.bundle)
    score_store(bundle, store, tmp_path / "store.csv")
    score_images(bundle, sorted({r.path for r in records}), tmp_path / "images.csv")
    a = {(r["path"], r["face"]): r for r in csv.DictReader(open(tmp_path / "store.csv"))}
    b = {(r["path"], r["face"]): r for r in csv.DictReader(open(tmp_path / "images.csv"))}
    assert a.keys() == b.keys()
    for k, r in a.items():
        assert r["gender"] == b[k]["gender"]
        for col in r:
            if "_p_" in col and r[col]:
                assert abs(float(r[col]) - float(b[k][col])) <= 1e-4, (k, col)


@needs_weights
def test_arcface_onnx_bundle_scores_images_and_follows_moved_weights(mtfl, tmp_path):
    import shutil

    root, records, reader, _, _ = mtfl
    model = tmp_path / "w" / "user-model.onnx"
    model.parent.mkdir()
    shutil.copy(PADDLE, model)
    embed_dataset(records, tmp_path / "s", "arcface.onnx", weights=str(model), workers=0,
                  show_progress=False, vocabularies=reader.vocabularies())
    store = Store(tmp_path / "s")
    res = train_store(store, "gender", "logreg", out=tmp_path / "m")
    bundle = load_bundle(res.bundle)
    paths = sorted({r.path for r in records})[:6]
    s = score_images(bundle, paths, tmp_path / "a.csv")  # the recorded file, found by its hash
    assert s["scored"] >= 5
    moved = tmp_path / "elsewhere.onnx"
    model.rename(moved)
    with pytest.raises(ConfigError, match="--weights"):
        score_images(bundle, paths, tmp_path / "b.csv")
    score_images(bundle, paths, tmp_path / "b.csv", weights=str(moved))
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    with pytest.raises(BundleError, match=store.meta["weights_sha256"]):
        score_images(bundle, paths, tmp_path / "c.csv", weights=str(FOAMLIU))
