"""finetune: argument checks, a short run that writes a loadable backbone, refusal to resume
another run, and resume after SIGKILL. Runs without ../shared: the weights are a seeded random
MobileFaceNet state dict (the pretrained file when present), the chips the CelebA fixture faces
plus shifted copies. Everything runs on 1 torch thread (far faster on shared cores)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from faceprobe.embed.backbones.mobilefacenet_torch import (
    MobileFaceNet,
    MobileFaceNetTorch,
    load_mobilefacenet,
    meta_path,
)
from faceprobe.errors import ConfigError
from faceprobe.identity.finetune import finetune
from faceprobe.identity.finetune_checkpoint import CHECKPOINT, split_indices

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO.parent / "shared" / "weights" / "mobilefacenet-foamliu.pt"
IDS = ["a", "b", "b", "a", "c", "c", "d", "e"]  # the 8 CelebA fixture faces' identities, renamed
FAST = {"batch_size": 4, "val_fraction": 0.3, "threads": 1, "show_progress": False}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, list[str]]:
    """16 chips of 5 identities: the 8 aligned fixture faces and copies shifted by 3 px."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_mobilefacenet_torch import celeba_chips

    chips = celeba_chips()
    return np.concatenate([chips, np.roll(chips, 3, axis=2)]), IDS + IDS


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    if PRETRAINED.is_file():
        return PRETRAINED
    path = tmp_path_factory.mktemp("w") / "random.pt"
    torch.manual_seed(0)
    torch.save(MobileFaceNet().state_dict(), path)
    return path


@pytest.mark.parametrize("kw, fragment", [
    ({"s": 0}, "s must be a number > 0"),
    ({"m": -0.1}, "m must be a number >= 0"),
    ({"m": math.pi / 2}, "m must be a number >= 0 and < 1.5708"),
    ({"val_fraction": 1.0}, "val_fraction must be"),
    ({"batch_size": 1}, "batch_size must be an integer >= 2"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"patience": 0.5}, "patience must be an integer"),
    ({"lr": float("nan")}, "lr must be a number > 0"),
    ({"precision": "fp8"}, "precision 'fp8'"),
    ({"precision": "fp16"}, "fp16 needs a CUDA device"),
    ({"identities": ["a"] * 16}, "at least 2 identities"),
    ({"identities": ["a", "b"]}, "one label per chip"),
    ({"chips": np.zeros((16, 100, 100, 3), np.uint8)}, "aligned faces"),
])
def test_bad_arguments_one_line(tmp_path, data, weights, kw, fragment):
    chips, ids = data
    args = {"chips": chips, "identities": ids, **kw}
    with pytest.raises(ConfigError) as exc:
        finetune(args.pop("chips"), args.pop("identities"), weights=weights,
                 out=tmp_path / "o.pt", workdir=tmp_path / "w", **args)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "w").exists()


def test_split_holds_out_per_identity():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    train, val = split_indices(labels, 0.4, seed=0)
    assert sorted(train.tolist() + val.tolist()) == list(range(8))
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 1, 0]  # 1 chip: train only
    assert set(labels[train]) == {0, 1, 2}
    assert split_indices(labels, 0.4, 0)[1].tolist() == val.tolist()


def test_finetune_writes_loadable_backbone_and_refuses_another_run(tmp_path, data, weights):
    chips, ids = data
    out, work = tmp_path / "tuned.pt", tmp_path / "work"
    lines: list[str] = []
    r = finetune(chips, ids, weights=weights, out=out, workdir=work, epochs=1, log=lines.append,
                 **FAST)
    assert r["epochs_run"] == 1 and r["resumed_from_epoch"] is None
    assert (r["classes"], r["train"], r["val"]) == (5, 11, 5)
    assert [h["epoch"] for h in r["history"]] == [0, 1] and r["history"][1]["loss"] > 0
    assert any("epoch 1/1" in s for s in lines)
    # out: the best backbone in foamliu's layout, loadable both ways, with its metadata
    state = torch.load(out, weights_only=True)
    assert set(state) == set(MobileFaceNet().state_dict())
    ckpt = torch.load(work / CHECKPOINT, weights_only=True)
    assert ckpt["state"]["done"] and ckpt["state"]["epoch_done"] == 1
    for k, v in ckpt["best_state"].items():
        assert torch.equal(state[k], v), k
    assert load_mobilefacenet(out).training is False
    meta = json.loads(meta_path(out).read_text())
    assert meta["best_epoch"] == r["best_epoch"] and meta["params"]["epochs"] == 1
    bb = MobileFaceNetTorch(weights=out, device="cpu")
    assert bb.finetune_meta["weights_sha256"] == bb.weights_sha256
    assert bb.embed(chips[:2]).shape == (2, 128)
    if r["best_epoch"] == 1:  # training moved the weights
        base = torch.load(weights, map_location="cpu", weights_only=True)
        assert not torch.equal(state["conv1.0.weight"], base["conv1.0.weight"])
    # the same call again: already done, nothing retrained, out rewritten
    out.unlink()
    lines.clear()
    again = finetune(chips, ids, weights=weights, out=out, workdir=work, epochs=1,
                     log=lines.append, **FAST)
    assert again["resumed_from_epoch"] == 1 and out.is_file()
    assert not any("epoch 1/1" in s for s in lines)
    # another run's parameters or data in the same workdir: refused, naming the difference
    with pytest.raises(ConfigError, match=r"another run \(differs in lr 0.01 -> 0.02\)"):
        finetune(chips, ids, weights=weights, out=out, workdir=work, epochs=1, lr=0.02, **FAST)
    with pytest.raises(ConfigError, match="data"):
        finetune(chips[::-1].copy(), ids, weights=weights, out=out, workdir=work, epochs=1,
                 **FAST)


SCRIPT = """
import sys, numpy as np
from faceprobe.identity.finetune import finetune
d = np.load(sys.argv[1])
finetune(d["chips"], d["ids"], weights=sys.argv[2], out=sys.argv[3], workdir=sys.argv[4],
         epochs=2, batch_size=4, val_fraction=0.3, threads=1, show_progress=False,
         log=lambda s: print(s, flush=True))
"""


def test_resume_after_sigkill(tmp_path, data, weights):
    chips, ids = data
    np.savez(tmp_path / "data.npz", chips=chips, ids=np.array(ids))
    out, work = tmp_path / "tuned.pt", tmp_path / "work"
    env = {**os.environ, "FACEPROBE_TEST_PAUSE_AFTER_CHECKPOINT": "120",
           "KERAS_BACKEND": "torch"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "data.npz"), str(weights), str(out),
         str(work)], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    deadline = time.monotonic() + 120
    try:
        while not (work / CHECKPOINT).is_file():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # during the pause after the epoch-1 checkpoint
        first = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert "finetune: epoch 1/2" in first and not out.exists()
    assert torch.load(work / CHECKPOINT, weights_only=True)["state"]["epoch_done"] == 1

    lines: list[str] = []
    r = finetune(chips, ids, weights=weights, out=out, workdir=work, epochs=2, log=lines.append,
                 **FAST)
    text = "\n".join(lines)
    assert "resumed from" in text and "at epoch 1 of 2" in text
    assert "epoch 1/2" not in text and "epoch 2/2" in text  # epoch 1 not redone
    assert r["resumed_from_epoch"] == 1 and r["epochs_run"] == 2
    assert [h["epoch"] for h in r["history"]] == [0, 1, 2]
    assert isinstance(load_mobilefacenet(out), MobileFaceNet)


def test_arc_margin_logits():
    from faceprobe.identity.finetune import ArcMargin

    arc = ArcMargin(4, 3, s=10.0, m=0.3)
    with torch.no_grad():
        arc.weight.copy_(torch.eye(3, 4) * 2)
    emb = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])
    logits = arc(emb, torch.tensor([0, 2])).detach()
    theta = math.acos(1 / math.sqrt(2))
    want0 = [10 * math.cos(theta + 0.3), 10 / math.sqrt(2), 0.0]
    torch.testing.assert_close(logits[0], torch.tensor(want0), atol=1e-4, rtol=0)
    # theta = pi: theta + m passes pi, the logit continues as cos - m sin(m) (monotonic)
    assert abs(float(logits[1, 2]) - 10 * (-1 - 0.3 * math.sin(0.3))) < 1e-3


def test_resume_mid_epoch_equals_uninterrupted(tmp_path, data, weights, monkeypatch):
    """Checkpoints every step; the run dies after its second one; the resumed run ends with
    exactly the weights of a run never interrupted (same batches, flips, RNG, optimiser)."""
    from faceprobe.identity import finetune as ft

    chips, ids = data
    kw = {**FAST, "epochs": 1, "checkpoint_every": 1, "log": lambda s: None}
    whole = finetune(chips, ids, weights=weights, out=tmp_path / "a.pt",
                     workdir=tmp_path / "wa", **kw)
    calls = []

    def die(_seconds):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setenv("FACEPROBE_TEST_PAUSE_AFTER_CHECKPOINT", "1")
    monkeypatch.setattr(ft.time, "sleep", die)
    with pytest.raises(KeyboardInterrupt):
        finetune(chips, ids, weights=weights, out=tmp_path / "b.pt", workdir=tmp_path / "wb",
                 **kw)
    state = torch.load(tmp_path / "wb" / CHECKPOINT, weights_only=True)["state"]
    assert (state["epoch_done"], state["batch_done"], state["step"]) == (0, 2, 2)
    monkeypatch.undo()
    lines: list[str] = []
    part = finetune(chips, ids, weights=weights, out=tmp_path / "b.pt", workdir=tmp_path / "wb",
                    **{**kw, "log": lines.append})
    assert any("2 batches into epoch 1" in s for s in lines)
    assert part["history"] == whole["history"]
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
