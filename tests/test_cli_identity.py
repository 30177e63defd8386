"""`faceprobe verify | pairs | identify` through faceprobe.cli.main."""

import json

import numpy as np
import pytest

from faceprobe.cli import main
from faceprobe.embed.store import StoreWriter

DIM = 8


@pytest.fixture
def celeba_store(tmp_path):
    root = tmp_path / "celeba"
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, DIM))
    rows = []
    for ident in range(6):
        for k in range(6):
            v = centres[ident] + 0.2 * rng.standard_normal(DIM)
            rows.append({"path": str(root / f"{ident}_{k}.jpg"), "identity": f"p{ident}",
                         "split": "train" if k < 3 else "test", "status": "ok",
                         "labels": {"Eyeglasses": "yes" if k % 2 else "no"},
                         "features": {"embedding": v / np.linalg.norm(v)}})
    meta = {"backbone": "test.synthetic", "features": {"embedding": DIM}, "shard_size": 64,
            "vocabularies": {"Eyeglasses": ["no", "yes"]}, "root": str(root)}
    with StoreWriter.open(tmp_path / "s", meta) as w:
        w.write_shard(0, rows)
    return str(tmp_path / "s")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_pairs_then_verify_json(tmp_path, capsys, celeba_store):
    pairs = str(tmp_path / "pairs.csv")
    code, out, _ = run(capsys, "pairs", celeba_store, "--out", pairs, "--n", "40", "--folds",
                       "4", "--attribute", "Eyeglasses", "--seed", "3", "--json")
    assert code == 0 and json.loads(out)["pairs"] == 40
    code, out, _ = run(capsys, "verify", celeba_store, "--pairs", pairs, "--json",
                       "--report", str(tmp_path / "rep"))
    r = json.loads(out)
    assert code == 0
    for key in ("accuracy", "accuracy_std", "folds", "roc_auc", "eer", "tar_at_far",
                "fixed_thresholds", "pairs_used", "pairs_skipped"):
        assert key in r
    assert r["pairs_used"] == 40 and len(r["folds"]) == 4
    assert (tmp_path / "rep" / "roc.png").exists()
    code, out, _ = run(capsys, "verify", celeba_store, "--pairs", pairs)
    assert code == 0 and "fold 4: accuracy" in out and "ROC AUC" in out


def test_identify_json_and_text(capsys, celeba_store):
    code, out, _ = run(capsys, "identify", celeba_store, "--per-identity", "all", "--json")
    r = json.loads(out)
    assert code == 0 and r["gallery_identities"] == 6 and r["gallery_images"] == 18
    assert r["probes"] == 18 and r["accuracy"]["top1"] == 1.0
    code, out, _ = run(capsys, "identify", celeba_store, "--gallery-split", "test")
    assert code == 0 and "same-split" in out and "gallery: 6 identities" in out


def test_user_mistakes_are_one_line_errors(tmp_path, capsys, celeba_store):
    code, _, err = run(capsys, "verify", celeba_store, "--pairs", str(tmp_path / "none.txt"))
    assert code == 1 and "pairs file" in err and "does not exist" in err
    code, _, err = run(capsys, "pairs", celeba_store, "--out", str(tmp_path / "p.csv"),
                       "--attribute", "Wearing_Hat")
    assert code == 1 and "no attribute 'Wearing_Hat'" in err
    code, _, err = run(capsys, "identify", str(tmp_path / "missing"))
    assert code == 1 and "does not exist" in err
    code, _, err = run(capsys, "identify", celeba_store, "--per-identity", "x")
    assert code == 1 and "per_identity" in err
