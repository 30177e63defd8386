"""Splits: official when present, else seeded and stratified, identity-disjoint when known."""

import numpy as np
import pytest

from faceprobe.embed.store import StoreData
from faceprobe.heads.splits import make_split, split_from_description


def fake(n, identity=None, split=None, seed=0):
    rng = np.random.default_rng(seed)
    obj = np.empty(n, dtype=object)
    ident = obj.copy()
    ident[:] = identity if identity is not None else ""
    sp = obj.copy()
    sp[:] = split if split is not None else ""
    return StoreData(
        X={"embedding": rng.standard_normal((n, 4)).astype(np.float32)},
        y={"gender": rng.integers(0, 2, n).astype(np.int16),
           "race": rng.choice(5, n, p=(0.5, 0.2, 0.15, 0.1, 0.05)).astype(np.int16)},
        path=np.array([f"/x/{i}.jpg" for i in range(n)], dtype=object), split=sp, identity=ident,
        status=np.array(["ok"] * n, dtype=object), dataset=obj.copy(), box=np.zeros((n, 4)),
        score=np.zeros(n), landmarks_detected=np.zeros((n, 5, 2)),
        landmarks_dataset=np.zeros((n, 5, 2)),
        row_id=np.stack([np.zeros(n), np.arange(n)], axis=1).astype(np.int64))


def test_identity_disjoint_and_deterministic():
    n = 2000
    ident = np.array([f"p{i % 300}" for i in np.random.default_rng(1).permutation(n)], dtype=object)
    d = fake(n, identity=ident)
    s = make_split(d, seed=4)
    sides = [set(ident[s.train]), set(ident[s.val]), set(ident[s.test])]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert len(s.train) + len(s.val) + len(s.test) == n
    assert 0.1 < len(s.test) / n < 0.2 and 0.1 < len(s.val) / n < 0.2
    assert s.description["identity_disjoint"] and "identity-disjoint" in s.description["text"]
    again = split_from_description(d, s.description)
    np.testing.assert_array_equal(again.test, s.test)
    assert again.description["test_sha256"] == s.description["test_sha256"]
    other = make_split(d, seed=5)
    assert not np.array_equal(other.test, s.test)


def test_stratified_without_identities():
    d = fake(3000, seed=2)
    s = make_split(d, seed=0, stratify="race")
    share = lambda idx: np.bincount(d.y["race"][idx], minlength=5) / len(idx)  # noqa: E731
    np.testing.assert_allclose(share(s.test), share(s.train), atol=0.02)
    assert not s.description["identity_disjoint"]
    assert "no identities known" in s.description["text"]


def test_official_train_val_test():
    sp = np.array(["train"] * 60 + ["valid"] * 20 + ["test"] * 20, dtype=object)
    s = make_split(fake(100, split=sp))
    assert s.description["official"]
    assert (len(s.train), len(s.val), len(s.test)) == (60, 20, 20)


def test_official_train_test_carves_validation_by_identity():
    sp = np.array(["train"] * 800 + ["test"] * 200, dtype=object)
    ident = np.array([f"p{i // 4}" for i in range(1000)], dtype=object)
    s = make_split(fake(1000, identity=ident, split=sp))
    assert set(s.test) == set(range(800, 1000))
    assert not set(ident[s.train]) & set(ident[s.val])
    assert "validation carved from train" in s.description["text"]


def test_lfw_folds():
    sp = np.array([f"fold{1 + i % 10}" for i in range(1000)], dtype=object)
    s = make_split(fake(1000, split=sp))
    assert set(sp[s.test]) == {"fold10"} and set(sp[s.val]) == {"fold9"}
    assert len(s.train) == 800


def test_bad_fraction():
    from faceprobe.errors import ConfigError

    with pytest.raises(ConfigError, match="test_fraction must be"):
        make_split(fake(10), test_fraction=1.5)
