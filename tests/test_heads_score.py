"""Scoring streams every row (failed ones with empty predictions) in bounded batches."""

import csv

import numpy as np
import pytest

from faceprobe.embed.store import Store
from faceprobe.errors import ConfigError
from faceprobe.heads.bundle import load_bundle
from faceprobe.heads.score import score_images, score_store
from faceprobe.heads.synthetic import write_synthetic_store
from faceprobe.heads.train import train_store


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    store = write_synthetic_store(root / "s", 1000, 8, shard_size=300, failed_every=10)
    res = train_store(store, "gender,race,age", "logreg", out=root / "m")
    return root, store, load_bundle(res.bundle)


def test_every_row_scored_and_failed_rows_kept(setup, tmp_path):
    root, store, bundle = setup
    stats = score_store(bundle, store, tmp_path / "p.csv", batch_size=128)
    assert stats["rows"] == 1000 and stats["failed"] == 100 and stats["scored"] == 900
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="")))
    assert len(rows) == 1000
    assert len({r["path"] for r in rows}) == 1000
    failed = [r for r in rows if r["status"] == "no_face"]
    assert len(failed) == 100 and all(r["gender"] == "" and r["age"] == "" for r in failed)
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["gender"] for r in ok} <= {"male", "female"}
    p = np.array([[float(r[f"race_p_{c}"]) for c in bundle.vocabularies["race"]] for r in ok])
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-3)
    # the CSV agrees with the model
    d = Store(store).load()
    expect = bundle.predict_outputs(d.X)
    got = np.array([float(r["age"]) for r in ok])
    np.testing.assert_allclose(got, expect["age"], atol=0.051)
    labels = np.array(bundle.vocabularies["gender"])[expect["gender"].argmax(axis=1)]
    assert [r["gender"] for r in ok] == labels.tolist()


def test_parquet_without_pyarrow_is_a_clear_error(setup, tmp_path, monkeypatch):
    import builtins

    root, store, bundle = setup
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ConfigError, match="needs pyarrow.*--out preds.csv"):
        score_store(bundle, store, tmp_path / "p.parquet")
    with pytest.raises(ConfigError, match="must end in .csv or .parquet"):
        score_store(bundle, store, tmp_path / "p.txt")


def test_score_images_uses_embed_stage(setup, tmp_path, monkeypatch):
    import faceprobe.embed.pipeline as pipeline
    import faceprobe.embed.recipe as recipe

    root, store, bundle = setup
    d = Store(store).load()
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i},x.jpg").write_bytes(b"")
    calls = []

    def fake_embed(paths, backbone, **kw):
        calls.append((list(paths), backbone))
        return [{"path": p, "status": "ok" if i else "no_face", "face": 0,
                 "features": {"embedding": d.X["embedding"][i]} if i else None}
                for i, p in enumerate(paths)]
    built = []
    monkeypatch.setattr(pipeline, "embed_images", fake_embed)
    monkeypatch.setattr(recipe, "build_backbones",
                        lambda r, **kw: built.append(r) or ["the recipe's backbones"])
    stats = score_images(bundle, [tmp_path / "imgs"], tmp_path / "p.csv")
    assert built[0]["backbones"][0]["name"] == "test.synthetic"
    assert calls[0][1] == ["the recipe's backbones"] and len(calls[0][0]) == 3
    assert stats["rows"] == 3 and stats["failed"] == 1
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="")))
    assert rows[0]["path"].endswith("0,x.jpg")  # quoted path with a comma survives
    assert rows[0]["gender"] == "" and rows[1]["gender"] in ("male", "female")


def test_awkward_paths_survive_csv_and_parquet(setup, tmp_path):
    """Paths go from the HDF5 file to the output as bytes: commas, quotes and non-ASCII must
    come back exactly, in both formats, with the shard boundaries and failed rows in between."""
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root, _, bundle = setup
    store = write_synthetic_store(tmp_path / "s", 700, 8, shard_size=300, failed_every=10,
                                  path_template='/syn/"café", №{ident}/{i}.jpg')
    want = Store(store).load(usable_only=False)
    score_store(bundle, store, tmp_path / "p.csv")
    score_store(bundle, store, tmp_path / "p.parquet")
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="", encoding="utf-8")))
    table = pq.read_table(tmp_path / "p.parquet").to_pydict()
    assert [r["path"] for r in rows] == want.path.tolist() == table["path"]
    assert [r["status"] for r in rows] == want.status.tolist() == table["status"]
    assert [r["gender"] or None for r in rows] == table["gender"]
    ok = want.status == "ok"
    np.testing.assert_allclose([float(r["age"]) for r in rows if r["age"]],
                               np.array(table["age"], dtype=float)[ok], atol=0.051)
