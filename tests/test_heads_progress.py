"""`faceprobe train` and `faceprobe score` report progress (tqdm on stderr, --no-progress turns it
off) and a summary line per fit (issue 17, item 6)."""

import numpy as np
import pytest

from faceprobe.cli import main
from faceprobe.embed.store import Store
from faceprobe.heads.bundle import load_bundle
from faceprobe.heads.score import score_images
from faceprobe.heads.synthetic import write_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(tmp_path_factory.mktemp("prog") / "s", 400, 8, shard_size=128,
                                 failed_every=20)


def test_train_sklearn_bars_and_summary_lines(store, tmp_path, capsys):
    assert main(["train", str(store), "--tasks", "gender,race,age", "--head", "logreg",
                 "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "fit logreg (" in err and "3/3" in err and "task/s" in err  # a bar per task
    assert "refit logreg (" in err
    fitted = next(line for line in err.splitlines() if line.startswith("fitted logreg on "))
    assert "s (gender " in fitted and "; validation: gender acc " in fitted
    assert "race acc" in fitted and "age MAE" in fitted
    assert any(line.startswith("refitted (train+val) logreg on ") for line in err.splitlines())
    assert main(["train", str(store), "--tasks", "gender", "--head", "logreg", "--no-progress",
                 "--out", str(tmp_path / "m2")]) == 0
    err = capsys.readouterr().err
    assert "fit logreg (" not in err and "task/s" not in err
    assert "fitted logreg on " in err and "validation: gender acc" in err


def test_train_mlp_bar_per_epoch(store, tmp_path, capsys):
    assert main(["train", str(store), "--tasks", "gender", "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "fit mlp (" in err and "epoch" in err and "val_loss=" in err
    fitted = next(line for line in err.splitlines() if line.startswith("fitted mlp on "))
    epochs = len(load_bundle(tmp_path / "m").meta["history"]["loss"])
    assert f", {epochs} epochs" in fitted and "validation: gender acc" in fitted
    meta = load_bundle(tmp_path / "m").meta
    best = meta["history"]["refit_loss"]
    assert f"{len(best)}/{len(best)} [" in err  # the refit's bar runs to the chosen epoch count
    both = meta["split"]["counts"]["train"] + meta["split"]["counts"]["val"]
    assert f"refitted (train+val) mlp on {both} rows in " in err
    assert f", {len(best)} epochs" in err.split("refitted (train+val) mlp")[1]


def test_score_store_bar(store, tmp_path, capsys):
    assert main(["train", str(store), "--tasks", "gender", "--head", "logreg", "--no-progress",
                 "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert main(["score", str(tmp_path / "m"), str(store), "--out", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert "score: 100%" in err and "400/400" in err and "row/s" in err
    assert main(["score", str(tmp_path / "m"), str(store), "--out", str(tmp_path / "p.csv"),
                 "--no-progress"]) == 0
    assert "score:" not in capsys.readouterr().err


def test_score_images_bar_counts_images_and_rows(store, tmp_path, monkeypatch, capsys):
    import faceprobe.embed.pipeline as pipeline
    import faceprobe.embed.recipe as recipe
    from faceprobe.heads.train import train_store

    bundle = load_bundle(train_store(store, "gender", "logreg", out=tmp_path / "m").bundle)
    X = Store(store).load().X["embedding"]
    (tmp_path / "imgs").mkdir()
    for i in range(7):
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(b"")
    calls = []

    def fake_embed(paths, backbone, **kw):  # two faces per image
        calls.append(len(paths))
        return [{"path": p, "status": "ok", "face": f, "features": {"embedding": X[i]}}
                for i, p in enumerate(paths) for f in (0, 1)]
    monkeypatch.setattr(pipeline, "embed_images", fake_embed)
    monkeypatch.setattr(recipe, "build_backbones", lambda r, **kw: ["bb"])
    capsys.readouterr()
    stats = score_images(bundle, [tmp_path / "imgs"], tmp_path / "p.csv", batch_size=3,
                         show_progress=True)
    err = capsys.readouterr().err
    assert calls == [3, 3, 1] and stats["rows"] == 14 and stats["images"] == 7
    assert "embed+score" in err and "7/7" in err and "img" in err
    assert "rows=14" in err and "scored=14" in err
    np.testing.assert_equal(stats["scored"], 14)
