"""Verification: fold-wise threshold selection by hand, metrics, skipped pairs, path matching."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from faceprobe.embed.store import Store, StoreWriter
from faceprobe.identity.verification import (
    PairsError,
    cross_validate,
    roc_metrics,
    select_threshold,
    verify,
)

DIM = 8
NAMES = ["Ann_A", "Bob_B", "Cid_C", "Dee_D", "Eve_E", "Fay_F"]


# ---------------------------------------------------------------- the hand-computed toy example
# Three folds of four pairs; "same" is called when score >= threshold.
#   fold 1: 0.9 S, 0.7 S, 0.5 D, 0.3 D
#   fold 2: 0.8 S, 0.4 S, 0.62 D, 0.2 D
#   fold 3: 0.85 S, 0.65 S, 0.55 D, 0.1 D
# Held-out fold 1, trained on folds 2+3, sorted: .1D .2D .4S .55D .62D .65S .8S .85S.
#   Correct per cut (negatives below + positives at/above): >=.1: 4, >=.2: 5, >=.4: 6, >=.55: 5,
#   >=.62: 6, >=.65: 7, >=.8: 6, >=.85: 5, none: 4. Best: (.62, .65] -> threshold .635.
#   Fold 1 at .635: all four right -> 1.0.
# Held-out fold 2, trained on 1+3: .1D .3D .5D .55D .65S .7S .85S .9S, separable: the best
#   interval is (.55, .65] -> .6. Fold 2 at .6: .8 S right, .4 S wrong, .62 D wrong, .2 D right
#   -> 0.5.
# Held-out fold 3, trained on 1+2: .2D .3D .4S .5D .62D .7S .8S .9S: cuts give
#   4, 5, 6, 5, 6, 7, 6, 5, 4 -> (.62, .7] -> .66. Fold 3 at .66: .85 right, .65 S wrong,
#   .55 right, .1 right -> 0.75.
# Mean (1 + .5 + .75) / 3 = .75; population std sqrt((.25^2 + .25^2 + 0) / 3) = .2041.
TOY_SCORES = [0.9, 0.7, 0.5, 0.3, 0.8, 0.4, 0.62, 0.2, 0.85, 0.65, 0.55, 0.1]
TOY_SAME = [1, 1, 0, 0] * 3
TOY_FOLDS = [1] * 4 + [2] * 4 + [3] * 4


def test_fold_thresholds_match_the_hand_computation():
    rows = cross_validate(np.array(TOY_SCORES), np.array(TOY_SAME, bool), np.array(TOY_FOLDS))
    assert [r["fold"] for r in rows] == [1, 2, 3]
    assert [r["threshold"] for r in rows] == pytest.approx([0.635, 0.6, 0.66])
    assert [r["accuracy"] for r in rows] == [1.0, 0.5, 0.75]
    assert [r["n"] for r in rows] == [4, 4, 4]
    accs = np.array([r["accuracy"] for r in rows])
    assert accs.mean() == pytest.approx(0.75)
    assert accs.std() == pytest.approx(0.2041, abs=1e-4)


@pytest.mark.parametrize("scores,same,expected", [
    # one best cut: half-way between the highest different and the lowest same score
    ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 0.5),
    # two best intervals (.1,.3] and (.5,.7] of equal width: the lower wins
    ([0.1, 0.3, 0.5, 0.7], [0, 1, 0, 1], 0.2),
    # two best intervals (.1,.2] and (.5,.9]: the wider wins
    ([0.1, 0.2, 0.5, 0.9], [0, 1, 0, 1], 0.7),
    # adjacent best cuts (.1,.4] and (.4,.8] merge into one interval (.1,.8]
    ([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1], 0.45),
    # every pair the same person: any threshold up to the lowest score; clipped to [-1, .3]
    ([0.3, 0.5], [1, 1], -0.35),
    # every pair different: above the highest score, clipped to (.5, 1]
    ([0.3, 0.5], [0, 0], 0.75),
])
def test_threshold_ties_take_the_middle_of_the_best_interval(scores, same, expected):
    assert select_threshold(np.array(scores), np.array(same, bool)) == pytest.approx(expected)


def test_roc_metrics_come_from_sklearn():
    rng = np.random.default_rng(0)
    same = rng.random(400) < 0.5
    scores = rng.normal(same * 1.0, 1.0)
    m = roc_metrics(scores, same)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(same, scores))
    assert 0.2 < m["eer"] < 0.4
    assert 0 <= m["tar_at_far"]["1e-3"] <= m["tar_at_far"]["1e-2"] <= 1
    perfect = roc_metrics(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1], bool))
    assert perfect["roc_auc"] == 1.0 and perfect["eer"] == 0.0
    assert perfect["tar_at_far"] == {"1e-3": 1.0, "1e-2": 1.0}
    assert roc_metrics(np.array([0.1, 0.2]), np.array([1, 1], bool))["roc_auc"] is None


# ---------------------------------------------------------------- on a synthetic LFW store
def _lfw_store(tmp_path, failed=("Cid_C", 2)):
    """tmp/lfw/lfw-deepfunneled/<Name>/<Name>_000i.jpg, 4 images each, tight clusters."""
    root = tmp_path / "lfw"
    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0][: len(NAMES)]
    rows = []
    for n, name in enumerate(NAMES):
        (root / "lfw-deepfunneled" / name).mkdir(parents=True)
        for i in range(1, 5):
            v = centres[n] + 0.15 * rng.standard_normal(DIM)
            status = "no_face" if (name, i) == failed else "ok"
            rows.append({"path": str(root / "lfw-deepfunneled" / name / f"{name}_{i:04d}.jpg"),
                         "dataset": "lfw", "identity": name, "status": status,
                         "features": {"embedding": v / np.linalg.norm(v)} if status == "ok"
                         else None})
    meta = {"backbone": "test.synthetic", "features": {"embedding": DIM}, "vocabularies": {},
            "shard_size": 10, "root": str(root), "dataset": "lfw"}
    with StoreWriter.open(tmp_path / "store", meta) as w:
        for s in range(0, len(rows), 10):
            w.write_shard(s // 10, rows[s:s + 10])
    return tmp_path / "store", root


PAIRS_TXT = """2\t4
Ann_A\t1\t2
Bob_B\t1\t3
Cid_C\t1\t2
Dee_D\t2\t9
Ann_A\t1\tBob_B\t1
Cid_C\t3\tDee_D\t1
Eve_E\t1\tFay_F\t1
Fay_F\t2\tAnn_A\t3
Eve_E\t1\t2
Fay_F\t1\t4
Ann_A\t3\t4
Bob_B\t2\t4
Bob_B\t2\tCid_C\t4
Dee_D\t3\tEve_E\t3
Fay_F\t3\tBob_B\t4
Ann_A\t4\tEve_E\t4
"""


def test_verify_lfw_pairs_counts_skipped_pairs(tmp_path):
    store, root = _lfw_store(tmp_path)
    (root / "pairs.txt").write_text(PAIRS_TXT)
    r = verify(store, root / "pairs.txt")
    # Cid_C 2 failed (no_face) and Dee_D 9 is not in the store: two pairs skipped, not dropped.
    assert r["pairs_total"] == 16 and r["pairs_used"] == 14 and r["pairs_skipped"] == 2
    assert r["skipped"]["not_in_store"] == 1 and r["skipped"]["failed"] == 1
    assert r["skipped"]["failed_status"] == {"no_face": 1}
    assert {e["reason"] for e in r["skipped"]["examples"]} == {"not_in_store", "failed"}
    assert [f["fold"] for f in r["folds"]] == [1, 2]
    assert [f["n"] for f in r["folds"]] == [6, 8] and [f["skipped"] for f in r["folds"]] == [2, 0]
    assert r["accuracy"] == 1.0 and r["accuracy_std"] == 0.0 and r["roc_auc"] == 1.0
    assert r["eer"] == 0.0
    for key in ("1e-3", "1e-2"):
        assert key in r["tar_at_far"]
    assert set(r["fixed_thresholds"]) == {"0.6", "0.7", "0.8"}
    assert any("not resolvable" in n for n in r["notes"])
    json.dumps(r)  # plain JSON, no numpy scalars


def test_verify_matches_paths_by_tail_when_root_differs(tmp_path):
    store, root = _lfw_store(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "pairs.txt").write_text(PAIRS_TXT)
    r = verify(store, tmp_path / "elsewhere" / "pairs.txt", root=tmp_path / "elsewhere")
    assert r["pairs_used"] == 14


def test_verify_with_pair_tuples_without_folds_assigns_folds(tmp_path):
    store, root = _lfw_store(tmp_path)
    img = root / "lfw-deepfunneled"
    pairs = [(str(img / a / f"{a}_000{i}.jpg"), str(img / b / f"{b}_000{j}.jpg"), a == b)
             for a, i, b, j in [("Ann_A", 1, "Ann_A", 2), ("Bob_B", 1, "Bob_B", 2),
                                ("Eve_E", 3, "Eve_E", 4), ("Ann_A", 1, "Bob_B", 1),
                                ("Eve_E", 1, "Fay_F", 1), ("Fay_F", 2, "Dee_D", 1)]]
    r = verify(store, pairs)
    assert r["pairs_used"] == 6 and len(r["folds"]) == 3
    assert any("no folds" in n for n in r["notes"])


def test_verify_report_writes_json_and_png(tmp_path):
    store, root = _lfw_store(tmp_path)
    (root / "pairs.txt").write_text(PAIRS_TXT)
    r = verify(Store(store), root / "pairs.txt", report_dir=tmp_path / "rep")
    assert json.loads((tmp_path / "rep" / "verify.json").read_text())["accuracy"] == r["accuracy"]
    assert (tmp_path / "rep" / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_verify_user_errors(tmp_path):
    store, root = _lfw_store(tmp_path)
    with pytest.raises(PairsError, match="does not exist"):
        verify(store, tmp_path / "nope.txt")
    (tmp_path / "other.csv").write_text("path_a,path_b,same\n/x/a.jpg,/x/b.jpg,1\n")
    with pytest.raises(PairsError, match="none of the 1 pairs"):
        verify(store, tmp_path / "other.csv")
