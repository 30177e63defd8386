"""`faceprobe store verify` names damage, `faceprobe embed --repair` re-embeds only the damaged and
missing shards, and a second writer on one store is refused while a dead one's lock is taken over."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from hostile import real_faces
from procs import cli, kill, run, start, wait_for

from faceprobe.embed.store import Store, shard_name, stats_name


def _faces(root, n):
    root.mkdir()
    for p in real_faces(n):
        shutil.copyfile(p, root / f"{p.parent.name}__{p.name}")
    return root


def _embed(root, out, *extra):
    return cli("embed", "folder", "--root", root, "--out", out, "--backbone", "dlib.resnet",
               "--shard-size", "4", "--workers", "1", "--no-progress", *extra)


@pytest.fixture(scope="module")
def built(tmp_path_factory, dlib_available):
    base = tmp_path_factory.mktemp("integrity")
    root = _faces(base / "faces", 12)
    res = run(_embed(root, base / "store"))
    assert res.returncode == 0, res.stderr[-2000:]
    return root, base / "store"


def test_verify_names_damage_and_repair_reembeds_only_it(built, tmp_path):
    root, original = built
    store = tmp_path / "store"
    shutil.copytree(original, store)
    ok = run(cli("store", "verify", store))
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 3/3 shards intact, 12 rows"), ok.stdout

    data = bytearray((store / shard_name(1)).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit-pattern in the middle of shard 1
    (store / shard_name(1)).write_bytes(bytes(data))
    os.remove(store / shard_name(2))
    res = run(cli("store", "verify", store))
    assert res.returncode == 1
    assert "damaged  shard 1 (shard-00001.h5): checksum differs" in res.stdout
    assert "missing  shard(s) 2" in res.stdout and "--repair" in res.stdout
    report = json.loads(run(cli("store", "verify", store, "--json")).stdout)
    assert [d["shard"] for d in report["damaged"]] == [1] and report["missing"] == [2]

    kept = (store / shard_name(0)).stat()
    rep = run(_embed(root, store, "--repair", "--json"))
    assert rep.returncode == 0, rep.stderr[-2000:]
    summary = json.loads(rep.stdout)
    assert summary["repaired"] == [1]
    assert summary["shards_written"] == 2 and summary["shards_skipped"] == 1
    after = (store / shard_name(0)).stat()
    assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # untouched
    assert run(cli("store", "verify", store)).returncode == 0
    a = Store(original).load(usable_only=False)
    b = Store(store).load(usable_only=False)
    assert a.path.tolist() == b.path.tolist()
    assert a.X["embedding"].tobytes() == b.X["embedding"].tobytes()


def test_damaged_stats_and_truncated_shard_are_named(built, tmp_path):
    _, original = built
    store = tmp_path / "store"
    shutil.copytree(original, store)
    (store / stats_name(0)).write_text("{not json")
    with open(store / shard_name(2), "r+b") as f:
        f.truncate(100)
    report = Store(store).verify()
    problems = {d["shard"]: d["problem"] for d in report["damaged"]}
    assert problems[0].startswith("stats file unreadable")
    assert problems[2].startswith("checksum differs")
    assert not report["ok"] and report["shards"] == 1


def test_second_writer_refused_and_stale_lock_taken_over(tmp_path, dlib_available):
    root = _faces(tmp_path / "faces", 8)
    out = tmp_path / "store"
    cmd = _embed(root, out)
    # the pause keeps the first writer inside its run long enough for the second to meet it
    first = start(cmd, FACEPROBE_TEST_PAUSE_BEFORE_RENAME="2")
    try:
        assert wait_for(lambda: (out / "manifest.json").exists(), first)
        second = run(cmd)
        assert second.returncode == 1
        err = second.stderr.strip()
        assert "\n" not in err, err
        assert f"is being written by pid {first.pid} on " in err and "then run again" in err
        assert first.poll() is None
    finally:
        kill(first)  # dies holding the lock: the kernel drops the flock, the file stays
    assert (out / ".lock").read_text().startswith(f"pid {first.pid} ")
    third = run(cmd)
    assert third.returncode == 0, third.stderr[-2000:]
    assert Store(out).verify()["ok"] and len(Store(out).load(usable_only=False)) == 8
    assert (out / ".lock").read_text() == ""  # released on exit


def test_lock_file_from_a_dead_pid_does_not_block(built, tmp_path):
    root, original = built
    store = tmp_path / "store"
    shutil.copytree(original, store)
    (store / ".lock").write_text("pid 999999 on elsewhere since 2020-01-01T00:00:00+00:00")
    res = run(_embed(root, store))
    assert res.returncode == 0 and "skipped 3" in res.stdout, res.stderr[-2000:]
