"""Pair generation: seeded, balanced, valid, attribute-restricted, readable by read_pairs."""

import numpy as np
import pytest

from faceprobe.data.lfw import read_pairs
from faceprobe.embed.store import StoreWriter
from faceprobe.errors import ConfigError, StoreError
from faceprobe.identity.pairs import generate_pairs, write_pairs
from faceprobe.identity.verification import verify

DIM = 8


def _celeba_store(tmp_path, identities=10, per=8):
    """Every third image wears glasses; image 0 of identity 0 failed; a row without identity."""
    root = tmp_path / "celeba"
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((identities, DIM))
    rows = []
    for ident in range(identities):
        for k in range(per):
            v = centres[ident] + 0.3 * rng.standard_normal(DIM)
            glasses = "yes" if (ident * per + k) % 3 == 0 else "no"
            failed = ident == 0 and k == 0
            rows.append({"path": str(root / "img_align_celeba" / f"{ident:03d}{k:03d}.jpg"),
                         "dataset": "celeba", "identity": str(100 + ident),
                         "split": "train" if ident < identities // 2 else "test",
                         "labels": {"Eyeglasses": glasses, "eyeglasses": glasses},
                         "status": "no_face" if failed else "ok",
                         "features": None if failed else {"embedding": v / np.linalg.norm(v)}})
    rows.append({"path": str(root / "img_align_celeba" / "anon.jpg"), "status": "ok",
                 "labels": {"Eyeglasses": "yes"}, "features": {"embedding": np.ones(DIM)}})
    meta = {"backbone": "test.synthetic", "features": {"embedding": DIM}, "shard_size": 16,
            "vocabularies": {"Eyeglasses": ["no", "yes"], "eyeglasses": ["no", "yes"],
                             "age": None}, "root": str(root), "dataset": "celeba"}
    with StoreWriter.open(tmp_path / "s", meta) as w:
        for s in range(0, len(rows), 16):
            w.write_shard(s // 16, rows[s:s + 16])
    by_path = {r["path"]: r for r in rows}
    return tmp_path / "s", by_path


def test_pairs_are_seeded_balanced_and_valid(tmp_path):
    store, rows = _celeba_store(tmp_path)
    pairs = generate_pairs(store, 60, seed=1)
    assert pairs == generate_pairs(store, 60, seed=1)
    assert pairs != generate_pairs(store, 60, seed=2)
    assert sum(s for _, _, s in pairs) == 30 and len(pairs) == 60
    assert len({frozenset((a, b)) for a, b, _ in pairs}) == 60
    for a, b, same in pairs:
        assert a != b
        assert (rows[a]["identity"] == rows[b]["identity"]) == same
        assert rows[a]["status"] == rows[b]["status"] == "ok"  # never a failed image
        assert rows[a].get("identity") and rows[b].get("identity")


def test_attribute_restriction_holds_on_one_side(tmp_path):
    store, rows = _celeba_store(tmp_path)
    for name in ("Eyeglasses", "EYEGLASSES", "Eyeglasses=yes"):
        pairs = generate_pairs(store, 40, seed=0, attribute=name)
        assert len(pairs) == 40
        assert all(rows[a]["labels"]["Eyeglasses"] == "yes" for a, _, _ in pairs)
    no = generate_pairs(store, 40, seed=0, attribute="Eyeglasses=no")
    assert all(rows[a]["labels"]["Eyeglasses"] == "no" for a, _, _ in no)
    test_only = generate_pairs(store, 20, seed=0, split="test")
    assert all(rows[p]["split"] == "test" for a, b, _ in test_only for p in (a, b))


def test_too_few_distinct_pairs_returns_fewer_balanced(tmp_path):
    store, _ = _celeba_store(tmp_path, identities=2, per=3)
    pairs = generate_pairs(store, 100, seed=0)
    same = sum(s for _, _, s in pairs)
    # identity 100 has 2 usable images, 101 has 3: 1 + 3 distinct same-person pairs
    assert same == 4 and len(pairs) == 8


def test_pairs_user_errors(tmp_path):
    store, _ = _celeba_store(tmp_path)
    with pytest.raises(ConfigError, match="no attribute 'Hat'.*Eyeglasses"):
        generate_pairs(store, 10, attribute="Hat")
    with pytest.raises(ConfigError, match="numeric"):
        generate_pairs(store, 10, attribute="age")
    with pytest.raises(ConfigError, match="no value 'maybe'"):
        generate_pairs(store, 10, attribute="Eyeglasses=maybe")
    with pytest.raises(StoreError, match="no usable images with an identity in split 'val'"):
        generate_pairs(store, 10, split="val")


def test_written_csv_reads_back_with_balanced_folds_and_verifies(tmp_path):
    store, rows = _celeba_store(tmp_path)
    pairs = generate_pairs(store, 40, seed=0)
    info = write_pairs(pairs, tmp_path / "out" / "pairs.csv", folds=4,
                       root=tmp_path / "celeba")
    assert info["relative_to"] == str(tmp_path / "celeba") and info["pairs"] == 40
    back = read_pairs(tmp_path / "out" / "pairs.csv")
    assert len(back) == 40 and not back[0].path_a.startswith("/")
    for f in (1, 2, 3, 4):
        in_fold = [p for p in back if p.fold == f]
        assert len(in_fold) == 10 and sum(p.same for p in in_fold) == 5
    r = verify(store, tmp_path / "out" / "pairs.csv")
    assert r["pairs_used"] == 40 and r["pairs_skipped"] == 0 and len(r["folds"]) == 4
    assert r["accuracy"] > 0.9
