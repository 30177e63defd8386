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

import numpy as np
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


def test_two_backbones_from_the_cli_and_add_one_later(tmp_path, capsys):
    """`--backbone a,b` (weights by position), `store info` shows each group's preprocessing,
    `--add-features NAME` adds a backbone, `verify --feature NAME` compares in its space."""
    _need_lfw()
    pytest.importorskip("dlib")
    two, one = tmp_path / "two", tmp_path / "one"
    common = ["--root", str(LFW), "--workers", "0", "--no-progress"]
    assert main(["embed", "lfw", *common, "--out", str(two), "--backbone",
                 "dlib.resnet,facenet.vggface2", "--weights", ",random"]) == 0
    assert main(["store", "info", str(two)]) == 0
    text = capsys.readouterr().out
    assert "group      facenet.vggface2: facenet.vggface2" in text and "(x-127.5)/128" in text
    assert main(["embed", "lfw", *common, "--out", str(one), "--backbone", "dlib.resnet"]) == 0
    assert main(["embed", "lfw", *common, "--out", str(one), "--backbone", "dlib.resnet",
                 "--add-features", "facenet.vggface2", "--weights", "random"]) == 0
    assert "added facenet.vggface2" in capsys.readouterr().out
    a, b = Store(one), Store(two)
    assert a.feature_dims == b.feature_dims == {"embedding": 128, "facenet.vggface2": 512}
    x = a.load(features=("facenet.vggface2",), tasks=()).X["facenet.vggface2"]
    y = b.load(features=("facenet.vggface2",), tasks=()).X["facenet.vggface2"]
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.min() > 0.9999
    assert main(["verify", str(one), "--pairs", str(LFW / "pairs.txt"), "--feature",
                 "facenet.vggface2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["feature"] == "facenet.vggface2"
