"""Backbone registry, weights resolution, precision rules, ONNX, dlib quality."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from faceprobe.embed.backbones import create_backbone, list_backbones
from faceprobe.errors import ConfigError, WeightsError

FIXTURES = Path(__file__).resolve().parent / "data"


def test_unknown_backbone_lists_known():
    with pytest.raises(ConfigError) as err:
        create_backbone("resnet.nope")
    for name in ("facenet.vggface2", "facenet.casia-webface", "arcface.onnx", "dlib.resnet"):
        assert name in str(err.value)
    assert {b.name for b in list_backbones()} >= {"facenet.vggface2", "dlib.resnet"}


def test_missing_weights_offline_names_file_and_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPROBE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACEPROBE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError) as err:
        create_backbone("facenet.vggface2")
    msg = str(err.value)
    assert "20180402-114759-vggface2.pt" in msg and str(tmp_path / "home" / "weights") in msg
    assert "\n" not in msg
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("facenet.vggface2", weights=str(tmp_path / "nope.pt"))


def test_weights_resolved_from_faceprobe_home(tmp_path, monkeypatch):
    import torch

    ref = create_backbone("facenet.vggface2", weights="random", device="cpu")
    home = tmp_path / "home"
    (home / "weights").mkdir(parents=True)
    from faceprobe.embed.backbones.facenet import random_state_dict

    torch.save(random_state_dict(), home / "weights" / "20180402-114759-vggface2.pt")
    monkeypatch.setenv("FACEPROBE_HOME", str(home))
    monkeypatch.setenv("FACEPROBE_OFFLINE", "1")
    bb = create_backbone("facenet.vggface2", device="cpu")
    assert bb.weights_path.startswith(str(home)) and len(bb.weights_sha256) == 64
    chips = np.random.default_rng(0).integers(0, 255, (3, 160, 160, 3), dtype=np.uint8)
    np.testing.assert_allclose(bb.embed(chips), ref.embed(chips), atol=1e-6)
    (home / "weights" / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="bad.pt"):
        create_backbone("facenet.vggface2", weights=str(home / "weights" / "bad.pt"))


def test_facenet_random_shapes_and_precision():
    bb = create_backbone("facenet.vggface2", weights="random", device="cpu")
    assert bb.config.input_size == 160 and bb.config.alignment == "crop"
    chips = np.random.default_rng(0).integers(0, 255, (5, 160, 160, 3), dtype=np.uint8)
    f = bb.features(chips, ("embedding", "pooled"), batch_size=2)
    assert f["embedding"].shape == (5, 512) and f["pooled"].shape == (5, 1792)
    assert f["embedding"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f["embedding"], axis=1), 1, atol=1e-5)
    assert bb.embed(chips[0]).shape == (1, 512)  # one face in, one vector out
    np.testing.assert_array_equal(bb.embed(chips, batch_size=5), bb.embed(chips, batch_size=5))
    with pytest.raises(ValueError, match="160x160"):
        bb.embed(np.zeros((1, 112, 112, 3), np.uint8))
    with pytest.raises(ConfigError, match="CUDA"):
        create_backbone("facenet.vggface2", weights="random", device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="fp32"):
        create_backbone("dlib.resnet", precision="bf16")
    with pytest.raises(ConfigError, match="weights=FILE"):
        create_backbone("arcface.onnx")


# --- a tiny ONNX model, serialised by hand so the test needs no `onnx` package -------------

def _varint(n: int) -> bytes:
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _field(num: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    if isinstance(value, str):
        value = value.encode()
    return _varint((num << 3) | 2) + _varint(len(value)) + value


def _value_info(name: str, dims: list) -> bytes:
    shape = b"".join(_field(1, _field(2, d) if isinstance(d, str) else _field(1, d)) for d in dims)
    tensor_type = _field(1, 1) + _field(2, shape)
    return _field(1, name) + _field(2, _field(1, tensor_type))


def tiny_arcface_onnx(path: Path, dim: int = 8, seed: int = 0) -> np.ndarray:
    """data (N,3,112,112) -> GlobalAveragePool -> Flatten -> MatMul W (3, dim) -> fc1 (N, dim)."""
    w = np.random.default_rng(seed).normal(size=(3, dim)).astype(np.float32)
    nodes = [
        _field(1, "data") + _field(2, "pool") + _field(4, "GlobalAveragePool"),
        _field(1, "pool") + _field(2, "flat") + _field(4, "Flatten"),
        _field(1, "flat") + _field(1, "W") + _field(2, "fc1") + _field(4, "MatMul"),
    ]
    init = _field(1, 3) + _field(1, dim) + _field(2, 1) + _field(8, "W") + _field(9, w.tobytes())
    graph = b"".join(_field(1, n) for n in nodes) + _field(2, "tiny") + _field(5, init)
    graph += _field(11, _value_info("data", ["N", 3, 112, 112]))
    graph += _field(12, _value_info("fc1", ["N", dim]))
    model = _field(1, 8) + _field(7, graph) + _field(8, _field(1, "") + _field(2, 13))
    path.write_bytes(model)
    assert struct.calcsize("f") == 4
    return w


def test_arcface_onnx_tiny_model(tmp_path):
    w = tiny_arcface_onnx(tmp_path / "tiny.onnx", dim=8)
    bb = create_backbone("arcface.onnx", weights=str(tmp_path / "tiny.onnx"), device="cpu")
    assert bb.config.embedding_dim == 8 and bb.config.input_size == 112
    assert bb.config.alignment == "similarity"
    chips = np.random.default_rng(0).integers(0, 255, (5, 112, 112, 3), dtype=np.uint8)
    emb = bb.embed(chips, batch_size=2)
    x = (chips.astype(np.float32) - 127.5) / 127.5
    ref = x.mean(axis=(1, 2)) @ w
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(WeightsError, match="junk.onnx"):
        create_backbone("arcface.onnx", weights=str(tmp_path / "junk.onnx"))


def test_dlib_same_person_closer_than_different():
    from faceprobe.embed.pipeline import embed_images

    lfw = FIXTURES / "lfw" / "lfw-deepfunneled"
    people = {d.name: sorted(d.glob("*.jpg")) for d in sorted(lfw.glob("*")) if d.is_dir()}
    multi = {k: v for k, v in people.items() if len(v) >= 2}
    if len(multi) < 2:
        pytest.skip("need two LFW fixture identities with two images")
    (a, pa), (b, pb) = list(multi.items())[:2]
    rows = embed_images([pa[0], pa[1], pb[0], pb[1]], "dlib.resnet", multi_face="central")
    assert all(r["status"] in ("ok", "multi_face_chosen") for r in rows), rows
    e = np.stack([r["features"]["embedding"] for r in rows])
    same = [e[0] @ e[1], e[2] @ e[3]]
    diff = [e[0] @ e[2], e[0] @ e[3], e[1] @ e[2], e[1] @ e[3]]
    assert min(same) > max(diff), (same, diff)
