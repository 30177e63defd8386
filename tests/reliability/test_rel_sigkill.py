"""SIGKILL `faceprobe embed` and `faceprobe tune` at random points, re-run until done: nothing lost,
nothing twice, every shard readable, the search completes with the requested trials.

Kill points for embed cycle through: a random moment after start, while a shard's ``.h5.tmp``
exists (before its rename), while a ``.stats.json.tmp`` exists (after the ``.h5`` rename, before
the stats rename that marks the shard done), and while ``manifest.json.tmp`` exists. The rename
windows are widened with FACEPROBE_TEST_PAUSE_BEFORE_RENAME (faceprobe/faults.py, called by store/writer.py) so a kill lands inside
them on purpose; the random kills run without it.
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import time

import pytest
from hostile import real_faces
from procs import cli, kill, run, start, wait_for

from faceprobe.embed.store import Store

MODES = ("random", "h5_tmp", "stats_tmp", "random", "manifest_tmp")
PAUSE = "0.25"


def _dataset(root):
    root.mkdir()
    for p in real_faces(44):
        shutil.copyfile(p, root / f"{p.parent.name}__{p.name}")
    (root / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")  # a failed row too
    return sorted(str(p) for p in root.iterdir())


def _embed_cmd(root, out):
    return cli("embed", "folder", "--root", root, "--out", out, "--backbone", "dlib.resnet",
               "--shard-size", "4", "--batch-size", "4", "--workers", "1", "--no-progress")


def _tmp_exists(out, pattern):
    return lambda: bool(glob.glob(os.path.join(glob.escape(str(out)), pattern)))


def sigkill_embed(tmp_path, kills: int, seed: int) -> dict:
    rng = random.Random(seed)
    root, out = tmp_path / "faces", tmp_path / "store"
    inputs = _dataset(root)
    cmd = _embed_cmd(root, out)
    landed: dict[str, int] = {}
    finished_early = 0
    for k in range(kills):
        mode = MODES[k % len(MODES)]
        if mode == "manifest_tmp" and not (out / "manifest.json").exists():
            mode = "random"
        extra = {} if mode == "random" else {"FACEPROBE_TEST_PAUSE_BEFORE_RENAME": PAUSE}
        proc = start(cmd, **extra)
        if mode == "random":
            wait_for(lambda: (out / ".lock").exists(), proc)
            time.sleep(rng.uniform(0.0, 4.0))
            hit = proc.poll() is None
        else:
            pattern = {"h5_tmp": "shard-*.h5.tmp", "stats_tmp": "shard-*.stats.json.tmp",
                       "manifest_tmp": "manifest.json.tmp"}[mode]
            if mode != "manifest_tmp" and rng.random() < 0.5:
                # not always the first shard of the run: skip a random number of renames
                wait_for(_tmp_exists(out, pattern), proc)
                time.sleep(rng.uniform(0.3, 2.0))
            hit = wait_for(_tmp_exists(out, pattern), proc)
        kill(proc)
        if proc.returncode == 0:
            finished_early += 1
            break
        landed[mode] = landed.get(mode, 0) + int(hit)
        if (out / "manifest.json").exists():  # an interrupted store is incomplete, never damaged
            assert not Store(out).verify()["damaged"]
    res = run(cmd, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    again = run(cmd, timeout=600)  # complete: a further run has nothing left to write
    assert again.returncode == 0 and "shards written 0" in again.stdout, again.stdout
    store = Store(out)
    report = store.verify()
    d = store.load(usable_only=False)
    paths = d.path.tolist()
    for i in store.shards():  # every shard opens and reads
        store.read_shard(i)
    verify_cli = run(cli("store", "verify", out), timeout=120)
    return {
        "kills": sum(landed.values()), "landed": landed, "finished_early": finished_early,
        "inputs": len(inputs), "rows": len(paths), "lost": len(set(inputs) - set(paths)),
        "duplicates": len(paths) - len(set(paths)), "extra": len(set(paths) - set(inputs)),
        "verify_ok": report["ok"], "verify_rc": verify_cli.returncode,
        "tmp_left": len(list(out.glob("*.tmp"))), "shards": len(store.shards()),
    }


def _check(res):
    print(f"\nSIGKILL embed: {json.dumps(res)}")
    assert res["lost"] == 0 and res["duplicates"] == 0 and res["extra"] == 0
    assert res["rows"] == res["inputs"]
    assert res["verify_ok"] and res["verify_rc"] == 0 and res["tmp_left"] == 0


def test_sigkill_embed_5_kills(tmp_path, dlib_available):
    res = sigkill_embed(tmp_path, 5, seed=int(os.environ.get("FACEPROBE_KILL_SEED", "5")))
    _check(res)
    assert res["kills"] >= 3


@pytest.mark.slow
def test_sigkill_embed_20_kills(tmp_path, dlib_available):
    res = sigkill_embed(tmp_path, 20, seed=int(os.environ.get("FACEPROBE_KILL_SEED", "20")))
    _check(res)
    assert res["kills"] >= 15


# --- tune ---------------------------------------------------------------------------------------

def sigkill_tune(tmp_path, kills: int, trials: int, seed: int) -> dict:
    from faceprobe.heads.bundle import load_bundle
    from faceprobe.heads.synthetic import write_synthetic_store

    rng = random.Random(seed)
    store = write_synthetic_store(tmp_path / "s", 600, 8)
    d, out = tmp_path / "search", tmp_path / "best"
    cmd = cli("tune", store, "--tasks", "gender,race", "--head", "logreg", "--trials", trials,
              "--dir", d, "--out", out, "--overwrite")

    def n_trials():
        return len(glob.glob(str(d / "search" / "trial_*")))

    landed = 0
    for _ in range(kills):
        before = n_trials()
        proc = start(cmd)
        # mid-search: after this run has started a trial of its own
        wait_for(lambda before=before: n_trials() > before, proc, timeout=300)
        time.sleep(rng.uniform(0.0, 0.4))
        kill(proc)
        if proc.returncode == 0:
            break
        landed += 1
    res = run(cmd, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    bundle = load_bundle(out)
    states = [json.loads(p.read_text())["status"]
              for p in sorted((d / "search").glob("trial_*/trial.json"))]
    return {"kills": landed, "trials_requested": trials, "trial_dirs": n_trials(),
            "trials_in_bundle": bundle.meta["tuning"]["trials"], "states": sorted(set(states)),
            "summary": next((ln for ln in res.stdout.splitlines() if " trials (" in ln), "")}


def _parses(path) -> bool:
    try:
        json.loads(path.read_text())
    except ValueError:
        return False
    return True


def _check_tune(res):
    print(f"\nSIGKILL tune: {json.dumps(res)}")
    assert res["trials_in_bundle"] == res["trials_requested"] == res["trial_dirs"]
    assert res["states"] == ["COMPLETED"]
    assert res["summary"].startswith(f"{res['trials_requested']} trials")


def test_sigkill_tune_resumes(tmp_path):
    _check_tune(sigkill_tune(tmp_path, kills=2, trials=30, seed=1))


@pytest.mark.slow
def test_sigkill_tune_many(tmp_path):
    res = sigkill_tune(tmp_path, kills=8, trials=80, seed=2)
    _check_tune(res)
    assert res["kills"] >= 6
