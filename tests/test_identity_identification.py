"""Identification: top-k against per-identity templates on a synthetic store."""

import numpy as np
import pytest

from faceprobe.embed.store import StoreWriter
from faceprobe.errors import ConfigError, StoreError
from faceprobe.identity.identification import identify

DIM = 16


def _store(tmp_path, noise=2.0, with_identity=True):
    """Identities 0-5 in train (3 images) and test (3 images); 6 only in test (open-set), 7 only
    in train, 8 only in val; one failed test row; one test row without identity."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((9, DIM))
    rows = []
    for ident in range(9):
        splits = ["train"] * 3 + ["test"] * 3 if ident < 6 else \
            [{6: "test", 7: "train", 8: "val"}[ident]] * 3
        for k, split in enumerate(splits):
            v = centres[ident] + noise * rng.standard_normal(DIM)
            rows.append({"path": f"/celeba/{ident}_{k}.jpg", "split": split, "status": "ok",
                         "identity": str(ident) if with_identity else None,
                         "features": {"embedding": v / np.linalg.norm(v)}})
    rows.append({"path": "/celeba/failed.jpg", "split": "test",
                 "identity": "0" if with_identity else None,
                 "status": "no_face"})
    rows.append({"path": "/celeba/anon.jpg", "split": "test", "status": "ok",
                 "features": {"embedding": rng.standard_normal(DIM)}})
    meta = {"backbone": "test.synthetic", "features": {"embedding": DIM}, "vocabularies": {},
            "shard_size": 7}
    with StoreWriter.open(tmp_path / "s", meta) as w:
        for s in range(0, len(rows), 7):
            w.write_shard(s // 7, rows[s:s + 7])
    return tmp_path / "s", rows


def _reference(rows, per_identity_all):
    """Brute force: templates from train, rank for every closed-set test probe."""
    emb = {r["path"]: r["features"]["embedding"] for r in rows if r["status"] == "ok"}
    gallery: dict[str, list] = {}
    for r in rows:
        if r["split"] == "train" and r.get("identity") and r["status"] == "ok":
            if per_identity_all or r["identity"] not in gallery:
                gallery.setdefault(r["identity"], []).append(emb[r["path"]])
    ids = sorted(gallery)
    t = np.stack([np.mean(gallery[i], axis=0) for i in ids])
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    ranks = []
    for r in rows:
        if r["split"] == "test" and r.get("identity") in gallery and r["status"] == "ok":
            sims = t @ emb[r["path"]]
            ranks.append(int((sims > sims[ids.index(r["identity"])]).sum()) + 1)
    return np.array(ranks), len(ids)


@pytest.mark.parametrize("per_identity", ["one", "all"])
def test_topk_matches_brute_force(tmp_path, per_identity):
    store, rows = _store(tmp_path)
    r = identify(store, "train", "test", per_identity)
    ranks, n_ids = _reference(rows, per_identity == "all")
    assert r["probes"] == len(ranks) == 18
    assert r["gallery_identities"] == n_ids == 7
    assert r["gallery_images"] == (21 if per_identity == "all" else 7)
    for k in (1, 2, 3, 5):
        assert r["accuracy"][f"top{k}"] == pytest.approx(np.mean(ranks <= k))
    assert 0 < r["top1"] < 1  # noisy enough that the check means something
    assert r["probes_open_set"] == 3 and r["probes_failed"] == 1 and r["probes_no_identity"] == 1
    assert r["mode"] == "cross-split"


def test_clean_clusters_identify_perfectly_and_all_beats_nothing(tmp_path):
    store, _ = _store(tmp_path, noise=0.05)
    r = identify(store, "train", "test", "all")
    assert r["accuracy"] == {"top1": 1.0, "top2": 1.0, "top3": 1.0, "top5": 1.0}


def test_same_split_enrols_first_images_and_probes_the_rest(tmp_path):
    store, _ = _store(tmp_path, noise=0.05)
    r = identify(store, "test", "test", 1)
    # test identities 0-5 and 6 have 3 usable images each: 1 enrolled, 2 probes
    assert r["gallery_identities"] == 7 and r["gallery_images"] == 7
    assert r["probes"] == 14 and r["probes_open_set"] == 0 and r["top1"] == 1.0
    assert r["mode"] == "same-split"
    r2 = identify(store, "test", "test", 2)
    assert r2["gallery_images"] == 14 and r2["probes"] == 7
    with pytest.raises(ConfigError, match="leaves no probe"):
        identify(store, "test", "test", "all")


def test_user_errors(tmp_path):
    store, _ = _store(tmp_path)
    with pytest.raises(ConfigError, match="share no identity"):
        identify(store, "val", "test")
    with pytest.raises(StoreError, match="no rows with an identity in split 'dev'.*test: 22, train: 21, val: 3"):
        identify(store, "dev", "test")
    with pytest.raises(ConfigError, match="per_identity"):
        identify(store, per_identity="some")
    anon, _ = _store(tmp_path / "anon", with_identity=False)
    with pytest.raises(StoreError, match="has no identity labels"):
        identify(anon)
