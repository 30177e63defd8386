"""Store extra fields: roundtrip, NaN where absent, built-in names refused, shards untouched,
stale files detected after a shard is re-embedded."""

import numpy as np
import pytest

from faceprobe.embed.store import Store, StoreWriter, file_sha256, shard_name
from faceprobe.errors import StoreError
from faceprobe.landmarks.extra import (
    extra_file_name,
    extra_shards,
    is_current,
    list_extras,
    read_extra,
    read_extra_attrs,
    write_extra,
)

META = {"backbone": "test.random", "features": {"embedding": 2},
        "vocabularies": {"gender": ["male", "female"]}, "shard_size": 3,
        "weights_sha256": "x", "alignment": "crop", "precision": "fp32", "records_sha256": "r",
        "num_shards": 2}


def rows(shard, n=3):
    return [{"path": f"/img/{shard}-{i}.jpg", "status": "ok", "features": {"embedding": [i, 0]},
             "landmarks_dataset": np.full((5, 2), i)} for i in range(n)]


def make(path, sizes=(3, 2)):
    with StoreWriter.open(path, META) as w:
        for s, n in enumerate(sizes):
            w.write_shard(s, rows(s, n))
    return Store(path)


def test_roundtrip_nan_where_absent_and_shards_untouched(tmp_path):
    st = make(tmp_path / "s")
    before = [file_sha256(st.path / shard_name(i)) for i in (0, 1)]
    manifest = (st.path / "manifest.json").read_bytes()
    pts = np.arange(3 * 5 * 2, dtype=np.float32).reshape(3, 5, 2)
    pts[1] = np.nan  # a row without a prediction
    out = write_extra(st.path, "landmarks_rcnn", 0, pts, {"model": "m"})
    assert out.name == extra_file_name("landmarks_rcnn", 0) == "extra-landmarks_rcnn-shard-00000.h5"
    assert not list(st.path.glob("*.tmp"))
    d = st.load(features=(), tasks=[], usable_only=False)
    got = read_extra(st, "landmarks_rcnn", d.row_id)
    assert got.shape == (5, 5, 2) and got.dtype == np.float32
    assert np.array_equal(got[[0, 2]], pts[[0, 2]])
    assert np.isnan(got[1]).all() and np.isnan(got[3:]).all()  # shard 1 has no file yet
    # any row order, and a path instead of a Store
    assert np.array_equal(read_extra(st.path, "landmarks_rcnn", d.row_id[[2, 0]]), pts[[2, 0]])
    assert extra_shards(st.path, "landmarks_rcnn") == [0]
    assert list_extras(st.path) == {"landmarks_rcnn": [0]}
    assert read_extra_attrs(st.path, "landmarks_rcnn", 0) == {"model": "m"}
    assert [file_sha256(st.path / shard_name(i)) for i in (0, 1)] == before
    assert (st.path / "manifest.json").read_bytes() == manifest
    assert st.verify()["ok"] and len(st.load(features=())) == 5  # the store still reads as before


def test_builtin_and_bad_names_are_refused(tmp_path):
    st = make(tmp_path / "s")
    for name in ("landmarks_detected", "landmarks_dataset", "box", "score", "status", "path",
                 "features", "labels", "row_id", "Bad-Name", "../x", ""):
        with pytest.raises(StoreError):
            write_extra(st.path, name, 0, np.zeros(3))
    assert not list_extras(st.path)


def test_wrong_rows_unknown_shard_and_absent_field(tmp_path):
    st = make(tmp_path / "s")
    with pytest.raises(StoreError, match="rows"):
        write_extra(st.path, "landmarks_rcnn_score", 0, np.zeros((2, 5)))
    with pytest.raises(StoreError, match="shard 7"):
        write_extra(st.path, "landmarks_rcnn_score", 7, np.zeros((3, 5)))
    with pytest.raises(StoreError, match="landmarks predict"):
        read_extra(st, "landmarks_rcnn", np.array([[0, 0]]))


def test_rewritten_shard_makes_extra_stale(tmp_path):
    st = make(tmp_path / "s")
    write_extra(st.path, "rcnn_box_score", 0, np.ones(3))
    assert is_current(st.path, "rcnn_box_score", 0)
    with StoreWriter.open(st.path, META) as w:  # shard 0 re-embedded (e.g. --repair)
        w.write_shard(0, rows(0, 3)[::-1])
    assert not is_current(st.path, "rcnn_box_score", 0)
    with pytest.raises(StoreError, match="older version"):
        read_extra(st, "rcnn_box_score", np.array([[0, 0]]))
    with StoreWriter.open(st.path, META, overwrite=True):  # a new store drops old extras
        pass
    assert not list(st.path.glob("extra-*"))
