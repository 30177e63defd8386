"""MobileFaceNet in PyTorch: foamliu's state dict loads strictly, the backbone equals the registered
ONNX ``arcface.mobilefacenet`` on real aligned chips, and bad files fail in one line naming them.
Tests needing the pretrained files skip without ../shared/weights."""

from __future__ import annotations

import json
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
from faceprobe.errors import ConfigError, WeightsError

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "weights"
CELEBA = REPO / "tests" / "data" / "celeba"


def weights_file(name: str) -> Path:
    if not WEIGHTS.is_dir():
        pytest.skip(f"pretrained models directory {WEIGHTS} is absent")
    path = WEIGHTS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def celeba_chips() -> np.ndarray:
    """The 8 CelebA fixture faces warped onto the ArcFace 112 template by their 5 landmarks."""
    from PIL import Image

    from faceprobe.embed.align import ARCFACE_TEMPLATE, align_similarity

    lines = (CELEBA / "list_landmarks_align_celeba.txt").read_text().splitlines()[2:]
    chips = []
    for line in lines:
        name, *vals = line.split()
        img = np.asarray(Image.open(CELEBA / "img_align_celeba" / name).convert("RGB"))
        pts = np.array(vals, float).reshape(5, 2)
        chips.append(align_similarity(img, pts, ARCFACE_TEMPLATE, 112)[0])
    return np.stack(chips)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "random.pt"
    torch.manual_seed(0)
    torch.save(MobileFaceNet().state_dict(), path)
    return path


def test_foamliu_state_dict_loads_strictly():
    path = weights_file("mobilefacenet-foamliu.pt")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 307
    want = MobileFaceNet().state_dict()
    assert {k: tuple(v.shape) for k, v in want.items()} == \
        {k: tuple(v.shape) for k, v in state.items()}
    model = load_mobilefacenet(path)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_equals_onnx_backbone_on_real_chips():
    from faceprobe.embed.backbones import create_backbone

    onnx = create_backbone("arcface.mobilefacenet",
                           weights=str(weights_file("mobilefacenet-foamliu.onnx")), device="cpu")
    bb = MobileFaceNetTorch(weights=weights_file("mobilefacenet-foamliu.pt"), device="cpu")
    bb.set_threads(1)  # 2 threads on 2 shared cores crawl (see faceprobe/identity/finetune.py)
    assert bb.config == onnx.config and bb.name == "arcface.mobilefacenet"
    assert bb.config.embedding_dim == 128 and bb.feature_dims == {"embedding": 128}
    chips = celeba_chips()
    want = onnx.embed(chips)
    got = bb.embed(chips, batch_size=3)  # batched, with a ragged last batch
    assert got.shape == (8, 128) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert np.abs(got - want).max() < 1e-4
    assert (got * want).sum(axis=1).min() > 0.99999
    # one at a time equals batched; bf16 on the CPU stays close
    single = np.concatenate([bb.embed(c) for c in chips])
    np.testing.assert_allclose(single, got, atol=1e-5)
    bf16 = MobileFaceNetTorch(weights=weights_file("mobilefacenet-foamliu.pt"), device="cpu",
                              precision="bf16")
    bf16.set_threads(1)
    bf16 = bf16.embed(chips[:4])
    assert (bf16 * want[:4]).sum(axis=1).min() > 0.99


def test_default_file_resolved_and_pinned(tmp_path, monkeypatch):
    src = weights_file("mobilefacenet-foamliu.pt")
    (tmp_path / "weights").mkdir()
    monkeypatch.setenv("FACEPROBE_HOME", str(tmp_path))
    monkeypatch.setenv("FACEPROBE_OFFLINE", "1")
    with pytest.raises(WeightsError, match="mobilefacenet-foamliu.pt"):
        MobileFaceNetTorch(device="cpu")
    (tmp_path / "weights" / "mobilefacenet-foamliu.pt").write_bytes(src.read_bytes())
    assert MobileFaceNetTorch(device="cpu").weights_path.startswith(str(tmp_path))


def test_bad_files_fail_in_one_line_naming_the_file(tmp_path, random_weights):
    def fails(path, *fragments):
        with pytest.raises(WeightsError) as exc:
            load_mobilefacenet(path)
        msg = str(exc.value)
        assert "\n" not in msg and str(path) in msg
        for f in fragments:
            assert f in msg, msg

    fails(tmp_path / "absent.pt", "not found")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    fails(tmp_path / "junk.pt", "cannot be read")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    fails(tmp_path / "list.pt", "is not a MobileFaceNet state dict")
    state = torch.load(random_weights, weights_only=True)
    fewer = {k: v for k, v in state.items() if not k.startswith("gdconv.")}
    torch.save({**fewer, "fc.weight": torch.zeros(3)}, tmp_path / "keys.pt")
    fails(tmp_path / "keys.pt", "is not a MobileFaceNet state dict", "missing keys gdconv.",
          "unexpected keys fc.weight", "expected the foamliu layout")
    torch.save({**state, "conv3.weight": torch.zeros(64, 512, 1, 1)}, tmp_path / "shape.pt")
    fails(tmp_path / "shape.pt", "conv3.weight has shape (64, 512, 1, 1)")
    # a wrapped state dict (a finetune checkpoint's "model") loads
    torch.save({"model": state, "epoch": 3}, tmp_path / "wrapped.pt")
    assert isinstance(load_mobilefacenet(tmp_path / "wrapped.pt"), MobileFaceNet)


def test_backbone_from_any_state_dict_with_meta(tmp_path, random_weights):
    path = tmp_path / "tuned.pt"
    path.write_bytes(random_weights.read_bytes())
    meta_path(path).write_text(json.dumps({"best_epoch": 2}))
    bb = MobileFaceNetTorch(weights=path, device="cpu")
    bb.set_threads(1)
    assert bb.finetune_meta == {"best_epoch": 2}
    assert bb.describe()["finetune"] == {"best_epoch": 2}
    chips = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), np.uint8)
    emb = bb.embed(chips)
    assert emb.shape == (3, 128) and np.isfinite(emb).all()
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        MobileFaceNetTorch(weights=path, device="cpu", precision="fp16")
