"""`faceprobe embed` and `faceprobe store info` as a user runs them, including SIGKILL + resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faceprobe.cli import main
from faceprobe.embed.store import Store

REPO = Path(__file__).resolve().parents[1]
LFW = REPO / "tests" / "data" / "lfw"


def _need_lfw():
    if not any(LFW.rglob("*.jpg")):
        pytest.skip("no LFW fixture")


def test_embed_and_store_info(tmp_path, capsys):
    _need_lfw()
    out = tmp_path / "store"
    rc = main(["embed", "lfw", "--root", str(LFW), "--out", str(out), "--backbone",
               "facenet.vggface2", "--weights", "random", "--limit", "4", "--workers", "0",
               "--no-progress", "--features", "embedding,pooled"])
    assert rc == 0
    assert "4 images" in capsys.readouterr().out
    assert main(["store", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 4 and sum(info["status"].values()) == 4
    assert info["dim"] == 512 and info["backbone"] == "facenet.vggface2"
    assert info["features"] == {"embedding": 512, "pooled": 1792}
    assert main(["store", "info", str(out)]) == 0
    assert "facenet.vggface2" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    _need_lfw()
    rc = main(["embed", "lfw", "--root", str(LFW), "--out", str(tmp_path / "s"),
               "--backbone", "nope.net", "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert "unknown backbone" in err and "dlib.resnet" in err and "\n" not in err
    assert main(["store", "info", str(tmp_path / "absent")]) == 1


def test_sigkill_then_rerun_gives_every_image_once(tmp_path):
    _need_lfw()
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "faceprobe", "embed", "lfw", "--root", str(LFW), "--out",
           str(out), "--backbone", "dlib.resnet", "--shard-size", "2", "--workers", "1",
           "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    # kill at a random moment once work has started (the manifest exists)
    deadline = time.time() + 120
    while not (out / "manifest.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(random.Random().uniform(0.0, 2.0))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    store = Store(out)
    assert store.verify()["ok"]
    d = store.load(usable_only=False)
    paths = sorted(str(p) for p in LFW.rglob("*.jpg"))
    assert sorted(d.path.tolist()) == paths  # every image exactly once
    assert store.info()["complete"]
