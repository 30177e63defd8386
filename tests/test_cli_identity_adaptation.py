"""`faceprobe train --head arcface`, `verify/identify --model` and `faceprobe finetune` through
faceprobe.cli.main."""

import json
from pathlib import Path

import numpy as np
import pytest

from faceprobe.cli import main
from faceprobe.embed.store import Store, StoreWriter
from faceprobe.files import file_sha256

DIM = 16
WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def identities(tmp_path):
    """24 people x 8 images: identity in the first 4 dimensions, a strong shared nuisance in the
    rest (what a margin head learns to drop); official-style splits by identity."""
    root = tmp_path / "faces"
    rng = np.random.default_rng(0)
    rows = []
    for ident in range(24):
        centre = np.zeros(DIM)
        centre[:4] = rng.standard_normal(4)
        split = "train" if ident < 16 else ("val" if ident < 20 else "test")
        for k in range(8):
            v = centre + 0.15 * rng.standard_normal(DIM)
            v[4:] += 1.5 * rng.standard_normal(DIM - 4)
            rows.append({"path": str(root / f"{ident}_{k}.jpg"), "identity": f"p{ident}",
                         "split": split, "status": "ok",
                         "features": {"embedding": v / np.linalg.norm(v)}})
    meta = {"backbone": "test.synthetic", "features": {"embedding": DIM}, "shard_size": 256,
            "vocabularies": {}, "root": str(root)}
    with StoreWriter.open(tmp_path / "s", meta) as w:
        w.write_shard(0, rows)
    return tmp_path / "s"


def test_margin_head_then_identify_and_verify_in_its_space(identities, tmp_path, capsys):
    code, out, err = run(capsys, "train", identities, "--tasks", "identity", "--head", "arcface",
                         "--out", tmp_path / "m")
    assert code == 0, err
    assert "validation identification top-1" in out
    code, out, _ = run(capsys, "identify", identities, "--gallery-split", "test",
                       "--probe-split", "test", "--per-identity", "2", "--json")
    raw = json.loads(out)["accuracy"]["top1"]
    code, out, err = run(capsys, "identify", identities, "--gallery-split", "test",
                         "--probe-split", "test", "--per-identity", "2", "--model",
                         tmp_path / "m", "--json")
    assert code == 0, err
    mapped = json.loads(out)["accuracy"]["top1"]
    assert mapped > raw + 0.1, (raw, mapped)  # identities never trained on, nuisance removed
    run(capsys, "pairs", identities, "--out", tmp_path / "p.csv", "--n", "200",
        "--split", "test")
    code, out, err = run(capsys, "verify", identities, "--pairs", tmp_path / "p.csv",
                         "--model", tmp_path / "m", "--json")
    assert code == 0, err
    assert json.loads(out)["pairs_used"] > 0


def test_an_attribute_bundle_is_refused_by_identify(identities, tmp_path, capsys):
    meta = {"backbone": "test.synthetic", "features": {"embedding": DIM}, "shard_size": 64,
            "vocabularies": {"gender": ["female", "male"]}}
    rng = np.random.default_rng(1)
    rows = [{"path": f"/x/{i}.jpg", "status": "ok", "labels": {"gender": ["female", "male"][i % 2]},
             "features": {"embedding": rng.standard_normal(DIM)}} for i in range(40)]
    with StoreWriter.open(tmp_path / "g", meta) as w:
        w.write_shard(0, rows)
    assert run(capsys, "train", tmp_path / "g", "--tasks", "gender", "--head", "logreg",
               "--out", tmp_path / "lr")[0] == 0
    code, _, err = run(capsys, "identify", identities, "--gallery-split", "test",
                       "--probe-split", "test", "--per-identity", "2", "--model", tmp_path / "lr")
    assert code == 1 and "no identity space" in err and err.count("\n") == 1


def test_identity_with_another_head_is_refused(identities, tmp_path, capsys):
    code, _, err = run(capsys, "train", identities, "--tasks", "identity", "--head", "mlp",
                       "--out", tmp_path / "m")
    assert code == 1 and "--head arcface" in err


@pytest.mark.skipif(not (WEIGHTS / "mobilefacenet-foamliu.pt").is_file(),
                    reason=f"needs the real MobileFaceNet weights in {WEIGHTS}")
def test_finetune_writes_weights_that_embed_uses(fixtures_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FACEPROBE_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "weights").mkdir(parents=True)
    for f in ("mobilefacenet-foamliu.pt", "mobilefacenet-foamliu.onnx"):
        (tmp_path / "home" / "weights" / f).symlink_to(WEIGHTS / f)
    lfw = fixtures_dir / "lfw"
    code, _, err = run(capsys, "embed", "lfw", "--root", lfw, "--out", tmp_path / "s",
                       "--backbone", "arcface.mobilefacenet", "--features", "embedding,chips",
                       "--workers", "0", "--no-progress")
    assert code == 0, err
    code, out, err = run(capsys, "finetune", tmp_path / "s", "--out", tmp_path / "ft.pt",
                         "--splits", "all", "--epochs", "1", "--batch-size", "4",
                         "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert (tmp_path / "ft.pt").is_file() and (tmp_path / "ft.pt.run").is_dir()
    code, _, err = run(capsys, "embed", "lfw", "--root", lfw, "--out", tmp_path / "t",
                       "--backbone", "arcface.mobilefacenet", "--weights", tmp_path / "ft.pt",
                       "--workers", "0", "--no-progress")
    assert code == 0, err
    assert Store(tmp_path / "t").meta["weights_sha256"] == file_sha256(tmp_path / "ft.pt")
    # a store of another backbone's chips is refused in one line naming the fix
    run(capsys, "embed", "lfw", "--root", lfw, "--out", tmp_path / "d", "--backbone",
        "dlib.resnet", "--features", "embedding,chips", "--workers", "0", "--no-progress",
        "--limit", "3")
    code, _, err = run(capsys, "finetune", tmp_path / "d", "--out", tmp_path / "x.pt",
                       "--splits", "all", "--epochs", "1")
    assert code == 1 and "--backbone arcface.mobilefacenet --features embedding,chips" in err


def test_tune_searches_the_margin_head_and_resumes(identities, tmp_path, capsys):
    argv = ["tune", identities, "--tasks", "identity", "--head", "arcface", "--trials", "2",
            "--dir", tmp_path / "search", "--out", tmp_path / "m"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "2 trials (2 this run)" in out
    from faceprobe.heads.bundle import load_bundle
    assert load_bundle(tmp_path / "m").is_identity_space
    code, out, err = run(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert "2 trials (0 this run)" in out
