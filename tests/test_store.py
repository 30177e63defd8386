"""The HDF5 shard store: atomic shards, resume, locking, label encoding, bounded reads."""

import json
import multiprocessing as mp
import os

import h5py
import numpy as np
import pytest

from faceprobe.embed.store import (
    Store,
    StoreWriter,
    build_vocabularies,
    shard_name,
    stats_name,
)
from faceprobe.errors import StoreError, StoreLockedError

DIM = 8
VOCAB = {"gender": ["male", "female"], "age": None}


def meta(**over):
    m = {"backbone": "test.random", "features": {"embedding": DIM}, "vocabularies": VOCAB,
         "shard_size": 4, "weights_sha256": "x", "alignment": "crop", "precision": "fp32",
         "records_sha256": "r", "num_shards": 3}
    m.update(over)
    return m


def row(i, status="ok", **over):
    rng = np.random.default_rng(i)
    r = {"path": f"/img/{i}.jpg", "dataset": "t", "split": "train" if i % 2 else "test",
         "identity": f"id{i % 3}", "status": status, "error": "",
         "labels": {"gender": "female" if i % 2 else "male", "age": float(i)},
         "features": {"embedding": rng.standard_normal(DIM)} if status == "ok" else None,
         "box": [1, 2, 3, 4], "score": 0.9, "landmarks_detected": np.ones((5, 2)) * i}
    r.update(over)
    return r


def write_all(path, shards=3, per=4):
    with StoreWriter.open(path, meta(num_shards=shards)) as w:
        for s in range(shards):
            rows = [row(s * per + k) for k in range(per)]
            rows[-1] = row(s * per + per - 1, status="no_face")
            rows[-1]["error"] = "no face found"
            w.write_shard(s, rows)


def test_roundtrip_and_info(tmp_path):
    write_all(tmp_path / "s")
    st = Store(tmp_path / "s")
    info = st.info()
    assert info["rows"] == 12 and info["status"] == {"ok": 9, "no_face": 3}
    assert info["dim"] == DIM and info["backbone"] == "test.random" and info["complete"]
    d = st.load(tasks=["gender", "age"])
    assert len(d) == 9 and d.X["embedding"].shape == (9, DIM)
    assert set(d.status) == {"ok"}
    expected = np.random.default_rng(0).standard_normal(DIM).astype(np.float32)
    assert np.array_equal(d.X["embedding"][0], expected)
    assert d.y["gender"][0] == 0 and d.y["gender"][1] == 1  # codes into the vocabulary
    assert d.y["age"][1] == 1.0
    everything = st.load(usable_only=False)
    assert len(everything) == 12
    assert np.isnan(everything.X["embedding"][3]).all()
    assert everything.extra["error"][3] == "no face found"
    assert st.load(splits=["test"]).split.tolist() == ["test"] * 6


def test_missing_labels_are_marked(tmp_path):
    with StoreWriter.open(tmp_path / "s", meta(num_shards=1)) as w:
        w.write_shard(0, [row(0, labels={}), row(1, labels={"age": 30.0})])
    d = Store(tmp_path / "s").load()
    assert d.y["gender"].tolist() == [-1, -1]
    assert np.isnan(d.y["age"][0]) and d.y["age"][1] == 30.0


def test_unexpected_label_is_refused(tmp_path):
    with StoreWriter.open(tmp_path / "s", meta()) as w, \
            pytest.raises(StoreError, match=r"gender='unknown'.*vocabulary"):
        w.write_shard(0, [row(0, labels={"gender": "unknown"})])


def test_wrong_dimension_is_refused(tmp_path):
    with StoreWriter.open(tmp_path / "s", meta()) as w, \
            pytest.raises(StoreError, match="dimension 3, the store expects 8"):
        w.write_shard(0, [row(0, features={"embedding": np.zeros(3)})])


def test_iter_batches_is_bounded_and_complete(tmp_path):
    write_all(tmp_path / "s", shards=3, per=4)
    batches = list(Store(tmp_path / "s").iter_batches(batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 1]
    paths = np.concatenate([b.path for b in batches])
    assert len(set(paths)) == 9


def test_resume_skips_done_shards_and_ignores_partial(tmp_path):
    p = tmp_path / "s"
    with StoreWriter.open(p, meta()) as w:
        w.write_shard(0, [row(0)])
    # a kill between the two renames leaves an .h5 without stats, and stray temp files
    (p / shard_name(1)).write_bytes(b"partial")
    (p / (stats_name(2) + ".tmp")).write_bytes(b"{")
    with StoreWriter.open(p, meta()) as w:
        assert w.done_shards() == {0}
        assert not list(p.glob("*.tmp"))
        w.write_shard(1, [row(1)])
    assert Store(p).shards() == [0, 1]
    assert Store(p).load().path.tolist() == ["/img/0.jpg", "/img/1.jpg"]


def test_resume_with_other_settings_is_refused(tmp_path):
    p = tmp_path / "s"
    StoreWriter.open(p, meta()).close()
    with pytest.raises(StoreError, match="backbone differ.*--overwrite"):
        StoreWriter.open(p, meta(backbone="other"))
    with StoreWriter.open(p, meta(backbone="other"), overwrite=True) as w:
        assert w.done_shards() == set()


def _hold_lock(path, ready, release):
    w = StoreWriter.open(path, meta())
    ready.set()
    release.wait(30)
    w.close()


def test_second_writer_refused_and_dead_owner_taken_over(tmp_path):
    p = tmp_path / "s"
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(p, ready, release))
    proc.start()
    assert ready.wait(30)
    with pytest.raises(StoreLockedError, match=rf"pid {proc.pid}"):
        StoreWriter.open(p, meta())
    proc.kill()  # dies holding the lock: the kernel drops it
    proc.join()
    with StoreWriter.open(p, meta()) as w:
        w.write_shard(0, [row(0)])


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(StoreError, match="not a faceprobe store"):
        Store(tmp_path / "d")
    newer = meta() | {"format": "faceprobe-store", "format_version": 99}
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(newer))
    with pytest.raises(StoreError, match="upgrade faceprobe"):
        Store(tmp_path / "d")


def test_missing_group_names_the_fix(tmp_path):
    write_all(tmp_path / "s")
    with pytest.raises(StoreError, match="--add-features geometry68"):
        Store(tmp_path / "s").load(features=["geometry68"])
    with pytest.raises(StoreError, match="no labels for task 'race'"):
        Store(tmp_path / "s").load(tasks=["race"])


def test_verify_names_damaged_shard(tmp_path):
    p = tmp_path / "s"
    write_all(p)
    assert Store(p).verify()["ok"]
    data = bytearray((p / shard_name(1)).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (p / shard_name(1)).write_bytes(bytes(data))
    os.remove(p / shard_name(2))
    report = Store(p).verify()
    assert not report["ok"]
    assert [d["shard"] for d in report["damaged"]] == [1]
    assert report["missing"] == [2]


def test_shard_file_is_plain_hdf5(tmp_path):
    write_all(tmp_path / "s", shards=1)
    with h5py.File(tmp_path / "s" / shard_name(0)) as f:
        assert f["features/embedding"].dtype == np.float32
        assert f["labels/gender"].dtype == np.int16


def test_build_vocabularies_fills_undeclared():
    class R:
        def __init__(self, labels):
            self.labels = labels
    recs = [R({"class": "b", "age": 3.0}), R({"class": "a", "gender": "male"})]
    v = build_vocabularies(recs, {"gender": ["male", "female"]})
    assert v == {"gender": ["male", "female"], "class": ["a", "b"], "age": None}


def test_verify_reports_interrupted_write_as_missing_not_damaged(tmp_path):
    p = tmp_path / "s"
    write_all(p)
    os.remove(p / stats_name(2))  # a kill between the .h5 rename and the stats rename
    report = Store(p).verify()
    assert not report["ok"] and report["damaged"] == []
    assert report["missing"] == [2] and report["interrupted"] == [2]
    assert report["shards"] == 2 and report["rows"] == 8


def test_verify_names_unreadable_stats_and_wrong_dimension(tmp_path):
    p = tmp_path / "s"
    write_all(p)
    (p / stats_name(0)).write_text("{")
    m = json.loads((p / "manifest.json").read_text())
    m["features"]["embedding"] = DIM * 2
    (p / "manifest.json").write_text(json.dumps(m))
    report = Store(p).verify()
    problems = {d["shard"]: d["problem"] for d in report["damaged"]}
    assert problems[0].startswith("stats file unreadable")
    assert "manifest says (4, 16)" in problems[1] and set(problems) == {0, 1, 2}
    with pytest.raises(StoreError, match="manifest says 4 rows of dimension 16"):
        Store(p).read_shard(1)


def test_repair_deletes_only_damaged_shards(tmp_path):
    p = tmp_path / "s"
    write_all(p)
    with open(p / shard_name(1), "r+b") as f:
        f.seek(200)
        f.write(b"\0\0\0\0")
    with StoreWriter.open(p, meta()) as w:
        damaged = w.repair()
        assert [d["shard"] for d in damaged] == [1]
        assert w.done_shards() == {0, 2}
        w.write_shard(1, [row(4 + k) for k in range(4)])
    assert Store(p).verify()["ok"]


@pytest.mark.parametrize("bad", [{"features": {"embedding": "8"}}, {"features": {}},
                                 {"shard_size": 0}, {"vocabularies": {"gender": "male"}},
                                 {"num_shards": -1}])
def test_manifest_values_are_checked_on_open(tmp_path, bad):
    p = tmp_path / "s"
    write_all(p, shards=1)
    m = json.loads((p / "manifest.json").read_text()) | bad
    (p / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match=r"manifest.json has (an? )?invalid"):
        Store(p)


def test_non_utf8_path_keeps_its_bytes_as_escapes(tmp_path):
    name = os.fsdecode(b"/img/caf\xe9.jpg")
    with StoreWriter.open(tmp_path / "s", meta(num_shards=1)) as w:
        w.write_shard(0, [row(0, path=name), row(1, path=os.fsdecode(b"/img/caf\xe8.jpg"))])
    paths = Store(tmp_path / "s").load(usable_only=False).path.tolist()
    assert paths == ["/img/caf\\xe9.jpg", "/img/caf\\xe8.jpg"]  # distinct, and readable


def test_iter_columns_matches_read_shard_in_order_with_prefetch(tmp_path):
    write_all(tmp_path / "s", shards=3)
    st = Store(tmp_path / "s")
    got = list(st.iter_columns(("embedding",), ("path", "status", "face")))
    assert [c.index for c in got] == [0, 1, 2]
    for c in got:
        full = st.read_shard(c.index)
        assert len(c) == 4
        np.testing.assert_array_equal(c.X["embedding"], full.X["embedding"])
        assert [p.decode() for p in c.columns["path"]] == full.path.tolist()
        assert [s.decode() for s in c.columns["status"]] == full.status.tolist()
        np.testing.assert_array_equal(c.columns["face"], full.extra["face"])
    with pytest.raises(StoreError, match="no feature group 'hog'"):
        next(st.iter_columns(("hog",)))
