"""Feature groups beside the embedding: geometry68, geometry5, hog; --add-features; heads."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from faceprobe.data.records import FaceRecord
from faceprobe.embed import features as F
from faceprobe.embed.store import Store

FIXTURES = Path(__file__).resolve().parent / "data"
EXTRA = ("geometry68", "geometry5", "hog")

pytest.importorskip("dlib")
pytest.importorskip("skimage")


def _records(tmp_path: Path, n: int = 5) -> list[FaceRecord]:
    paths = sorted((FIXTURES / "mtfl" / "lfw_5590").glob("*.jpg"))[:n]
    if len(paths) < n:
        pytest.skip("not enough MTFL fixture images")
    recs = [FaceRecord(path=str(p), dataset="mtfl", identity=p.stem.rsplit("_", 1)[0],
                       labels={"gender": "male" if k % 2 else "female"})
            for k, p in enumerate(paths)]
    recs.insert(2, FaceRecord(path=str(tmp_path / "gone.jpg"), dataset="mtfl"))  # a failed row
    return recs


@pytest.fixture(scope="module")
def dlib_bb():
    from faceprobe.embed.backbones import create_backbone
    try:
        return create_backbone("dlib.resnet", device="cpu")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"dlib.resnet unavailable: {exc}")


def _embed(recs, out, bb, features, **kw):
    from faceprobe.embed.pipeline import embed_dataset
    return embed_dataset(recs, out, bb, shard_size=4, batch_size=3, features=features,
                         show_progress=False, **kw)


def _columns(store: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(store.glob("shard-*.h5")):
        with h5py.File(p, "r") as f:
            def visit(name, obj, p=p):
                if isinstance(obj, h5py.Dataset):
                    a = obj[...]
                    out[f"{p.name}/{name}"] = (a.tolist() if a.dtype == object
                                               else (a.dtype.str, a.shape, a.tobytes()))
            f.visititems(visit)
    return out


def test_normalise_points_frame():
    pts = np.array([[10.0, 20.0], [30.0, 40.0], [20.0, 30.0]])
    v = F.normalise_points(pts, pts[0], pts[1]).reshape(-1, 2)
    assert np.allclose(v[0], [-0.5, 0]) and np.allclose(v[1], [0.5, 0]) and np.allclose(v[2], 0)
    # invariant to translation, rotation and scale of the face
    th = 0.7
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    moved = 3.0 * pts @ rot.T + [100, -5]
    assert np.allclose(F.normalise_points(moved, moved[0], moved[1]), v.reshape(-1), atol=1e-5)
    assert not F.geometry5(None).any() and F.geometry5(None).shape == (10,)


def test_groups_computed_in_the_embed_pass(tmp_path, dlib_bb):
    recs = _records(tmp_path)
    s = _embed(recs, tmp_path / "all", dlib_bb, ("embedding", *EXTRA), workers=1)
    assert s["status"]["missing"] == 1
    store = Store(tmp_path / "all")
    assert store.feature_dims == {"embedding": 128, "geometry68": 136, "geometry5": 10,
                                  "hog": F.EXTRA_DIMS["hog"]}
    assert set(store.meta["feature_provenance"]) == set(EXTRA)
    d = store.load(features=("embedding", *EXTRA))
    assert len(d) == 5
    for g in EXTRA:
        assert np.isfinite(d.X[g]).all(), g
    g5 = d.X["geometry5"].reshape(-1, 5, 2)
    assert np.allclose(g5[:, 0], [-0.5, 0], atol=1e-5) and np.allclose(g5[:, 1], [0.5, 0], atol=1e-5)
    g68 = d.X["geometry68"].reshape(-1, 68, 2)
    eyes = np.stack([g68[:, 36:42].mean(1), g68[:, 42:48].mean(1)], 1)
    assert np.allclose(eyes, [[-0.5, 0], [0.5, 0]], atol=1e-4)
    # mouth below the eyes, nose tip between them
    assert (g68[:, 48:68, 1] > 0.3).all() and (np.abs(g68[:, 30, 0]) < 0.4).all()
    # the embedding is the same as an embedding-only run's
    _embed(recs, tmp_path / "emb", dlib_bb, ("embedding",), workers=1)
    e = Store(tmp_path / "emb").load()
    assert e.X["embedding"].tobytes() == d.X["embedding"].tobytes()
    assert "feature_provenance" not in Store(tmp_path / "emb").meta


def test_add_features_equals_computing_them_at_once(tmp_path, dlib_bb):
    from faceprobe.embed.add_features import add_features

    recs = _records(tmp_path)
    _embed(recs, tmp_path / "once", dlib_bb, ("embedding", "geometry68", "hog"), workers=0)
    _embed(recs, tmp_path / "later", dlib_bb, ("embedding",), workers=0)
    before = _columns(tmp_path / "later")
    s = add_features(tmp_path / "later", ["geometry68"], workers=1, show_progress=False)
    assert s["shards_written"] == 2 and s["added"] == ["geometry68"]
    after = _columns(tmp_path / "later")
    assert all(after[k] == v for k, v in before.items())  # existing columns untouched
    # a run killed after rewriting shard 0 only: the next run skips it
    later = tmp_path / "later"
    manifest = json.loads((later / "manifest.json").read_text())
    snap = (later / "shard-00000.h5").read_bytes()
    s = add_features(later, ["hog"], workers=0, show_progress=False)
    assert s["shards_written"] == 2 and s["shards_skipped"] == 0
    assert (later / "shard-00000.h5").read_bytes() != snap
    (later / "manifest.json").write_text(json.dumps(manifest))  # as if killed before the end
    s = add_features(later, ["hog"], workers=0, show_progress=False)
    assert s["shards_written"] == 0 and s["shards_skipped"] == 2
    a, b = Store(later), Store(tmp_path / "once")
    assert a.feature_dims == b.feature_dims
    assert a.meta["feature_provenance"] == b.meta["feature_provenance"]
    assert _columns(later) == _columns(tmp_path / "once")
    assert a.verify()["ok"]
    # nothing to add: a no-op
    assert add_features(later, ["hog"], show_progress=False)["shards_written"] == 0


def test_add_features_refusals(tmp_path, dlib_bb):
    from faceprobe.embed.add_features import add_features
    from faceprobe.errors import ConfigError

    _embed(_records(tmp_path, 3), tmp_path / "s", dlib_bb, ("embedding",), workers=0)
    with pytest.raises(ConfigError, match="from the backbone"):
        add_features(tmp_path / "s", ["pooled"], show_progress=False)
    with pytest.raises(ConfigError, match="not facenet"):
        add_features(tmp_path / "s", ["hog"], backbone="facenet.vggface2", show_progress=False)
    with pytest.raises(ConfigError, match="unknown feature group"):
        _embed(_records(tmp_path, 3), tmp_path / "t", dlib_bb, ("embedding", "nope"), workers=0)


def test_heads_default_to_every_group_and_bundle_names_missing_group(tmp_path, dlib_bb):
    from faceprobe.embed.add_features import add_features
    from faceprobe.errors import BundleError
    from faceprobe.heads.bundle import load_bundle
    from faceprobe.heads.train import load_rows, train_store

    recs = _records(tmp_path, 8)
    _embed(recs, tmp_path / "s", dlib_bb, ("embedding",), workers=0)
    add_features(tmp_path / "s", ["geometry5", "hog"], workers=0, show_progress=False)
    store = Store(tmp_path / "s")
    d = load_rows(store, ["gender"], None)
    assert set(d.X) == {"embedding", "geometry5", "hog"}
    res = train_store(store, "gender", "logreg", out=tmp_path / "m", val_fraction=0.25,
                      test_fraction=0.25)
    bundle = load_bundle(tmp_path / "m")
    assert set(bundle.features) == {"embedding", "geometry5", "hog"}
    assert set(res.model.feature_groups_) == set(bundle.features)
    _embed(recs, tmp_path / "plain", dlib_bb, ("embedding",), workers=0)
    with pytest.raises(BundleError, match=r"'geometry5'.*--add-features geometry5"):
        bundle.check_store(Store(tmp_path / "plain"))


def test_cli_features_and_add_features(tmp_path, capsys, dlib_bb):
    from faceprobe.cli import main

    root = FIXTURES / "mtfl"
    base = ["embed", "mtfl", "--root", str(root), "--backbone", "dlib.resnet", "--limit", "3",
            "--shard-size", "2", "--workers", "0", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a"), "--features", "embedding,geometry5"]) == 0
    assert main([*base, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "b"), "--add-features", "geometry5"]) == 0
    assert "added geometry5" in capsys.readouterr().out
    assert _columns(tmp_path / "a") == _columns(tmp_path / "b")
    assert main([*base, "--out", str(tmp_path / "c"), "--features", "embedding,hog",
                 "--engine", "ray"]) == 1
    assert "--add-features hog" in capsys.readouterr().err
