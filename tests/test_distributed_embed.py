"""The Ray engine against the local engine on the LFW fixture, on a 2-CPU loopback Ray.

dlib.resnet is used because its weights are real and ship with a package: FaceNet's random
weights map every face to nearly one direction, which would make a cosine check meaningless.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray  # not skipped when missing: `make test` installs the ray extra

from faceprobe.data.records import FaceRecord
from faceprobe.embed.distributed import embed_dataset_ray
from faceprobe.embed.pipeline import embed_dataset
from faceprobe.embed.store import Store
from faceprobe.embed.store.manifest import _RESUME_KEYS
from faceprobe.faults import RAY_FAULTS as _FAULT_ENV

FIXTURES = Path(__file__).resolve().parent / "data"
BACKBONE = "dlib.resnet"
GENDERS = ("male", "female")


def _records(n: int, extra: list[FaceRecord] = ()) -> list[FaceRecord]:
    paths = sorted((FIXTURES / "lfw").rglob("*.jpg"))[:n]
    assert len(paths) == n, "LFW fixture images are missing"
    return [FaceRecord(path=str(p), dataset="lfw", identity=p.parent.name,
                       labels={"gender": GENDERS[k % 2]}, split="train" if k % 3 else "test")
            for k, p in enumerate(paths)] + list(extra)


@pytest.fixture(scope="module")
def ray_session():
    # the fault hook must be in the environment before Ray starts, since actors inherit it
    os.environ[_FAULT_ENV] = "1"
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _node_ip_address="127.0.0.1", logging_level="warning")
    yield
    ray.shutdown()
    os.environ.pop(_FAULT_ENV, None)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_ray_engine_matches_local_engine(tmp_path, ray_session):
    recs = _records(8, [FaceRecord(path=str(tmp_path / "gone.jpg"), dataset="lfw",
                                   labels={"gender": "female"})])
    kw = {"shard_size": 4, "batch_size": 3, "show_progress": False, "device": "cpu"}
    local = embed_dataset(recs, tmp_path / "local", BACKBONE, workers=1, **kw)
    dist = embed_dataset_ray(recs, tmp_path / "ray", BACKBONE, actors=2, **kw)
    assert dist["engine"] == "ray" and dist["shards_written"] == 3
    assert dist["status"] == local["status"] and dist["rows"] == local["rows"] == 9
    assert dist["lost_shards"] == [] and dist["retried_shards"] == []

    a = Store(tmp_path / "local").load(usable_only=False)
    b = Store(tmp_path / "ray").load(usable_only=False)
    for col in ("path", "status", "split", "identity", "dataset"):
        assert list(getattr(a, col)) == list(getattr(b, col)), col
    assert list(a.extra["error"]) == list(b.extra["error"])
    np.testing.assert_array_equal(a.y["gender"], b.y["gender"])
    ok = ~np.isnan(a.X["embedding"][:, 0])
    assert ok.sum() == 8 and np.array_equal(ok, ~np.isnan(b.X["embedding"][:, 0]))
    assert (1 - _cos(a.X["embedding"][ok], b.X["embedding"][ok])).max() < 1e-5
    np.testing.assert_allclose(a.box[ok], b.box[ok], atol=1e-3)

    # same manifest, so either engine resumes the other's store; `store info` sees no difference
    ma, mb = Store(tmp_path / "local").meta, Store(tmp_path / "ray").meta
    assert {k: ma.get(k) for k in _RESUME_KEYS} == {k: mb.get(k) for k in _RESUME_KEYS}
    info = Store(tmp_path / "ray").info()
    assert info["complete"] and info["rows"] == 9 and info["status"] == local["status"]
    again = embed_dataset(recs, tmp_path / "ray", BACKBONE, workers=0, **kw)
    assert again["shards_written"] == 0 and again["shards_skipped"] == 3
    again = embed_dataset_ray(recs, tmp_path / "local", BACKBONE, **kw)
    assert again["shards_written"] == 0 and again["shards_skipped"] == 3


def test_align_override_on_ray_matches_local_engine(tmp_path, ray_session):
    """`--align similarity` through the CLI glue (no longer refused): the actors apply it, so the
    embeddings and the manifest equal the local engine's."""
    import argparse

    from faceprobe.embed.distributed import add_engine_arguments, embed_with_engine

    recs = _records(4)
    kw = {"shard_size": 2, "batch_size": 2, "show_progress": False, "device": "cpu",
          "backbone": BACKBONE, "align": "similarity"}
    p = argparse.ArgumentParser()
    add_engine_arguments(p)
    local = embed_with_engine(p.parse_args([]), recs, out=tmp_path / "local", workers=0, **kw)
    dist = embed_with_engine(p.parse_args(["--engine", "ray", "--actors", "1"]), recs,
                     out=tmp_path / "ray", **kw)
    assert dist["engine"] == "ray" and dist["status"] == local["status"]
    ma, mb = Store(tmp_path / "local").meta, Store(tmp_path / "ray").meta
    assert ma["backbone_config"]["alignment"] == "similarity"
    assert {k: ma.get(k) for k in _RESUME_KEYS} == {k: mb.get(k) for k in _RESUME_KEYS}
    assert ma["recipe"] == mb["recipe"] and ma["alignment"] == mb["alignment"]
    a = Store(tmp_path / "local").load(usable_only=False).X["embedding"]
    b = Store(tmp_path / "ray").load(usable_only=False).X["embedding"]
    ok = ~np.isnan(a[:, 0])
    assert ok.sum() == 4 and np.array_equal(ok, ~np.isnan(b[:, 0]))
    assert (1 - _cos(a[ok], b[ok])).max() < 1e-5
    # either engine resumes the other's aligned store
    again = embed_with_engine(p.parse_args(["--engine", "ray"]), recs, out=tmp_path / "local", **kw)
    assert again["shards_written"] == 0 and again["shards_skipped"] == 2


def test_failing_shards_are_retried_then_recorded_as_errors(tmp_path, ray_session):
    import shutil

    src = _records(2)
    paths = []
    for kind in ("raise", "exit"):
        p = tmp_path / f"fault-{kind}.jpg"
        shutil.copy(src[0].path, p)
        paths.append(p)
    recs = src + [FaceRecord(path=str(p), dataset="lfw") for p in paths]
    s = embed_dataset_ray(recs, tmp_path / "s", BACKBONE, shard_size=1, actors=1, max_retries=1,
                          show_progress=False)
    # shard 2 raised in its actor (retried there), shard 3 killed its actor twice (Ray retried)
    assert s["status"] == {"error": 2, "ok": 2}
    assert s["lost_shards"] == [3] and s["retried_shards"] == [2]
    d = Store(tmp_path / "s").load(usable_only=False)
    assert list(d.path) == [r.path for r in recs]
    assert "failed 2 times: RuntimeError: injected fault" in d.extra["error"][2]
    assert "actor died 2 times" in d.extra["error"][3]


_DRIVER = r"""
import json, sys
from faceprobe.data.records import FaceRecord
from faceprobe.embed.distributed import embed_dataset_ray
recs = [FaceRecord(**r) for r in json.loads(sys.argv[2])]
embed_dataset_ray(recs, sys.argv[1], "dlib.resnet", shard_size=1, actors=1, address=sys.argv[3],
                  show_progress=False)
"""


def test_killed_driver_resumes_without_duplicates(tmp_path, ray_session):
    recs = _records(12)
    out = tmp_path / "s"
    arg = json.dumps([{"path": r.path, "dataset": r.dataset, "labels": r.labels,
                       "identity": r.identity, "split": r.split} for r in recs])
    # the driver joins the running cluster, as on a real one: only the driver dies, not Ray
    address = ray.get_runtime_context().gcs_address
    # a loaded machine can let the driver write every remaining shard between two polls; then
    # the kill came too late to test anything, so start over (bounded)
    for _attempt in range(3):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(out), arg, address],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while len(list(out.glob("shard-*.stats.json"))) < 2:
                assert proc.poll() is None, "the driver ended before it could be killed"
                assert time.monotonic() < deadline, "no shard written within 120 s"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)  # the driver alone, mid-run
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
        written = len(list(out.glob("shard-*.stats.json")))
        if written < len(recs):
            break
    assert 2 <= written < len(recs)
    s = embed_dataset_ray(recs, out, BACKBONE, shard_size=1, actors=2, show_progress=False)
    assert s["shards_skipped"] == written and s["shards_written"] == len(recs) - written
    d = Store(out).load(usable_only=False)
    assert list(d.path) == [r.path for r in recs]  # each record once, in order
    assert Store(out).verify()["ok"]
    assert not list(out.glob("*.tmp"))


def test_without_ray_the_engine_says_how_to_install(monkeypatch):
    import argparse

    from faceprobe.embed.distributed import add_engine_arguments, embed_with_engine
    from faceprobe.errors import FaceprobeError

    p = argparse.ArgumentParser()
    add_engine_arguments(p)
    args = p.parse_args(["--engine", "ray", "--actors", "3", "--gpus-per-actor", "0.5"])
    assert (args.engine, args.actors, args.gpus_per_actor, args.address) == ("ray", 3, 0.5, None)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(FaceprobeError, match=r"pip install 'faceprobe\[ray\]'"):
        embed_with_engine(args, [], out="x", backbone=BACKBONE)


def test_actors_that_cannot_load_the_backbone_stop_the_run_with_one_line(tmp_path, ray_session):
    from faceprobe.embed.backbones import create_backbone
    from faceprobe.errors import FaceprobeError

    bb = create_backbone("facenet.vggface2", weights="random", device="cpu")
    bb.weights_sha256 = "random-seed-other"  # actors rebuild seeded weights and must refuse
    with pytest.raises(FaceprobeError, match="the Ray run stopped: .*shards already written"):
        embed_dataset_ray(_records(2), tmp_path / "s", bb, shard_size=1, actors=1,
                          show_progress=False)
    assert Store(tmp_path / "s").info()["rows"] == 0
