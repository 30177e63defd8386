"""ONNX ArcFace backbones: preprocessing in the config, sidecar conventions, dynamic batch,
and the two registered MobileFaceNets on real LFW faces (skipped without ../shared/weights)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from faceprobe.embed.backbones import (
    BackboneConfig,
    create_backbone,
    list_backbones,
    to_model_input,
)
from faceprobe.errors import ConfigError, WeightsError

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
LFW = REPO / "tests" / "data" / "lfw"
MODELS = {
    "arcface.mobilefacenet": "mobilefacenet-foamliu.onnx",
    "arcface.mobilefacenet-paddle": "mobilefacenet-arcface-paddle.onnx",
}


def weights_file(name: str) -> Path:
    if not WEIGHTS.is_dir():
        pytest.skip(f"pretrained models directory {WEIGHTS} is absent")
    path = WEIGHTS / MODELS[name]
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


# --- tiny models built with the onnx helper: no weights needed ------------------------------

def tiny_model(path: Path, batch: int | str = "N", dim: int = 8, reshape: list | None = None,
               allowzero: bool = False, layout: str = "NCHW") -> np.ndarray:
    """data -> GlobalAveragePool -> Reshape/Flatten -> MatMul W (3, dim): embedding = mean(x) @ W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(1).normal(size=(3, dim)).astype(np.float32)
    nodes, inits = [], [numpy_helper.from_array(w, "W")]
    src = "data"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["data"], ["nchw"], perm=[0, 3, 1, 2]))
        src = "nchw"
    nodes.append(helper.make_node("GlobalAveragePool", [src], ["pool"]))
    if reshape is None:
        nodes.append(helper.make_node("Flatten", ["pool"], ["flat"]))
    else:
        nodes.append(helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(
            np.array(reshape, np.int64))))
        kw = {"allowzero": 1} if allowzero else {}
        nodes.append(helper.make_node("Reshape", ["pool", "shape"], ["flat"], **kw))
    nodes.append(helper.make_node("MatMul", ["flat", "W"], ["fc1"]))
    shape = [batch, 3, 112, 112] if layout == "NCHW" else [batch, 112, 112, 3]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [batch, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


def tiny_reference(chips: np.ndarray, w: np.ndarray, mean=127.5, std=127.5, bgr=False):
    x = chips[..., ::-1] if bgr else chips
    x = (x.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    ref = x.mean(axis=(1, 2)) @ w
    return ref / np.linalg.norm(ref, axis=1, keepdims=True)


def chips_(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


class CountingSession:
    """Wraps an onnxruntime session and counts ``run`` calls."""

    def __init__(self, session):
        self.session, self.calls = session, 0

    def run(self, *args, **kwargs):
        self.calls += 1
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_to_model_input_channel_order_norm_layout():
    chips = chips_(2)
    cfg = BackboneConfig("x", 112, (1.0, 2.0, 3.0), (2.0, 4.0, 8.0), 8, "similarity")
    assert (cfg.channel_order, cfg.layout) == ("RGB", "NCHW")
    x = to_model_input(chips, cfg)
    assert x.shape == (2, 3, 112, 112) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 2], (chips[..., 2] - 3.0) / 8.0)
    bgr = to_model_input(chips, dataclasses.replace(cfg, channel_order="BGR"), "NHWC")
    assert bgr.shape == (2, 112, 112, 3)
    np.testing.assert_allclose(bgr[..., 0], (chips[..., 2] - 1.0) / 2.0)  # B first, mean[0]
    np.testing.assert_allclose(bgr[..., 2], (chips[..., 0] - 3.0) / 8.0)
    with pytest.raises(ConfigError, match="channel_order"):
        dataclasses.replace(cfg, channel_order="GBR")
    with pytest.raises(ConfigError, match="layout"):
        dataclasses.replace(cfg, layout="CHW")
    with pytest.raises(ConfigError, match="3"):
        dataclasses.replace(cfg, mean=(1.0, 2.0))


def test_config_round_trip_and_old_manifests():
    from faceprobe.embed.backbones.dlib_resnet import DLIB_CONFIG
    from faceprobe.embed.backbones.facenet import facenet_config

    configs = [DLIB_CONFIG, facenet_config("vggface2"),
               BackboneConfig("a", 112, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), 128,
                              "similarity", template=((1.0, 2.0),) * 5, channel_order="BGR",
                              layout="NHWC")]
    # every registered backbone that builds offline (dlib ships with a package)
    for info in list_backbones():
        if info.offline:
            configs.append(create_backbone(info.name, device="cpu").config)
    configs.append(create_backbone("facenet.vggface2", weights="random", device="cpu").config)
    for cfg in configs:
        d = json.loads(json.dumps(cfg.as_dict()))
        assert {"channel_order", "layout", "normalisation", "mean", "std"} <= set(d)
        assert BackboneConfig.from_dict(d) == cfg
    assert configs[2].normalisation.startswith("imagenet: x/255")
    assert facenet_config("vggface2").normalisation == "(x-127.5)/128"
    # manifests written before these fields existed: defaults, the same behaviour as before
    for cfg in configs[:2]:
        old = {k: v for k, v in json.loads(json.dumps(cfg.as_dict())).items()
               if k not in ("channel_order", "layout", "normalisation")}
        assert BackboneConfig.from_dict(old) == cfg
    old = json.loads(json.dumps(configs[2].as_dict()))
    del old["channel_order"], old["layout"]
    assert (BackboneConfig.from_dict(old).channel_order,
            BackboneConfig.from_dict(old).layout) == ("RGB", "NCHW")
    with pytest.raises(ConfigError, match="colour"):
        BackboneConfig.from_dict({**configs[0].as_dict(), "colour": "RGB"})
    with pytest.raises(ConfigError, match="lacks input_size"):
        BackboneConfig.from_dict({k: v for k, v in configs[0].as_dict().items()
                                  if k != "input_size"})


def test_sidecar_json_sets_conventions(tmp_path):
    model = tmp_path / "m.onnx"
    w = tiny_model(model)
    chips = chips_(5)
    bb = create_backbone("arcface.onnx", weights=str(model), device="cpu")
    assert (bb.config.channel_order, bb.config.mean, bb.config.std) == ("RGB", 127.5, 127.5)
    assert bb.config.normalisation == "arcface: (x-127.5)/127.5"
    np.testing.assert_allclose(bb.embed(chips), tiny_reference(chips, w), atol=1e-5)
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    (tmp_path / "m.onnx.json").write_text(json.dumps(
        {"channel_order": "BGR", "mean": mean, "std": std}))
    bb = create_backbone("arcface.onnx", weights=str(model), device="cpu")
    assert bb.config.channel_order == "BGR" and bb.config.mean == tuple(mean)
    assert bb.config.normalisation.startswith("imagenet")
    np.testing.assert_allclose(bb.embed(chips), tiny_reference(chips, w, mean, std, bgr=True),
                               atol=1e-5)
    assert bb.describe()["channel_order"] == "BGR"


@pytest.mark.parametrize("content, fragment", [
    ({"channel_order": "BGR", "scale": 1}, "unknown key(s) scale"),
    ({"channel_order": "RBG"}, "channel_order 'RBG'"),
    ({"mean": [1, 2]}, "mean [1, 2]"),
    ({"std": 0}, "std 0"),
    ({"mean": "127.5"}, "mean \"127.5\""),
    ([127.5], "JSON object"),
    ("{not json", "not valid JSON"),
])
def test_sidecar_json_errors(tmp_path, content, fragment):
    model = tmp_path / "w600k_r50.onnx"
    tiny_model(model)
    side = tmp_path / "w600k_r50.onnx.json"
    side.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError) as err:
        create_backbone("arcface.onnx", weights=str(model), device="cpu")
    msg = str(err.value)
    assert fragment in msg and str(side) in msg and "\n" not in msg
    assert "allowed keys: channel_order" in msg and "mean" in msg and "std" in msg


def test_fixed_batch_graph_made_dynamic(tmp_path):
    model = tmp_path / "fixed.onnx"
    w = tiny_model(model, batch=1, reshape=[1, -1])
    bb = create_backbone("arcface.onnx", weights=str(model), device="cpu")
    assert bb.batched and isinstance(bb.session.get_inputs()[0].shape[0], str)
    from faceprobe.files import file_sha256
    assert bb.weights_sha256 == file_sha256(model)  # the file's, not the edited graph's
    bb.session = CountingSession(bb.session)
    chips = chips_(7)
    np.testing.assert_allclose(bb.embed(chips, batch_size=64), tiny_reference(chips, w), atol=1e-5)
    assert bb.session.calls == 1
    nhwc = tmp_path / "nhwc.onnx"
    w = tiny_model(nhwc, batch=1, reshape=[1, 3], layout="NHWC")
    bb = create_backbone("arcface.onnx", weights=str(nhwc), device="cpu")
    assert bb.batched and bb.config.layout == "NHWC"
    np.testing.assert_allclose(bb.embed(chips), tiny_reference(chips, w), atol=1e-5)


@pytest.mark.parametrize("batch", [1, 4])
def test_fixed_batch_graph_that_cannot_be_edited_falls_back(tmp_path, batch, caplog):
    model = tmp_path / "stuck.onnx"
    w = tiny_model(model, batch=batch, reshape=[batch, -1], allowzero=True)
    bb = create_backbone("arcface.onnx", weights=str(model), device="cpu")
    assert not bb.batched and bb.fixed_batch == batch
    assert "allowzero" in caplog.text
    chips = chips_(6)
    np.testing.assert_allclose(bb.embed(chips, batch_size=64), tiny_reference(chips, w), atol=1e-5)


def test_not_an_onnx_model(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx at all")
    for name in ("arcface.onnx", "arcface.mobilefacenet"):
        with pytest.raises(WeightsError) as err:
            create_backbone(name, weights=str(junk), device="cpu")
        assert "junk.onnx" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="fp32"):
        create_backbone("arcface.mobilefacenet", weights=str(junk), device="cpu",
                        precision="bf16")


def test_offline_missing_default_file_names_it_and_where(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("FACEPROBE_HOME", str(home))
    monkeypatch.setenv("FACEPROBE_OFFLINE", "1")
    for name, filename in MODELS.items():
        with pytest.raises(WeightsError) as err:
            create_backbone(name, device="cpu")
        msg = str(err.value)
        assert filename in msg and str(home / "weights") in msg and "\n" not in msg
        assert "https://github.com/" in msg and "--weights" in msg
    # a default file that is not the registered one is refused (its conventions are unknown)
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "mobilefacenet-foamliu.onnx").write_bytes(b"something else")
    with pytest.raises(WeightsError, match="sha256"):
        create_backbone("arcface.mobilefacenet", device="cpu")


# --- the real models -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def lfw_chips():
    """The LFW fixture faces, MTCNN-detected and warped onto the ArcFace 112 template."""
    from PIL import Image

    from faceprobe.embed.align import ARCFACE_TEMPLATE, align_similarity
    from faceprobe.embed.detect import FaceDetector

    paths = sorted((LFW / "lfw-deepfunneled").glob("*/*.jpg"))
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    found = FaceDetector("cpu").locate(images)
    assert all(r.faces for r in found)
    chips = np.stack([align_similarity(img, r.faces[0].landmarks, ARCFACE_TEMPLATE, 112)[0]
                      for img, r in zip(images, found, strict=True)])
    names = [f"{p.parent.name}/{p.name}" for p in paths]
    return names, chips


_BACKBONES: dict = {}


def real_backbone(name: str):
    path = weights_file(name)
    if name not in _BACKBONES:
        _BACKBONES[name] = create_backbone(name, weights=str(path), device="cpu")
    return _BACKBONES[name]


def test_registered_configs_carry_preprocessing():
    from faceprobe.files import file_sha256

    foam = real_backbone("arcface.mobilefacenet")
    c = foam.config
    assert c.name == "arcface.mobilefacenet" and c.channel_order == "RGB" and c.layout == "NCHW"
    np.testing.assert_allclose(c.mean, np.multiply((0.485, 0.456, 0.406), 255))
    np.testing.assert_allclose(c.std, np.multiply((0.229, 0.224, 0.225), 255))
    assert c.normalisation.startswith("imagenet: x/255")
    assert (c.input_size, c.embedding_dim, c.alignment) == (112, 128, "similarity")
    assert foam.weights_sha256 == file_sha256(weights_file("arcface.mobilefacenet"))
    paddle = real_backbone("arcface.mobilefacenet-paddle")
    c = paddle.config
    assert c.name == "arcface.mobilefacenet-paddle" and c.channel_order == "RGB"
    assert (c.mean, c.std, c.normalisation) == (127.5, 127.5, "arcface: (x-127.5)/127.5")
    assert c.embedding_dim == 128
    for bb in (foam, paddle):
        assert BackboneConfig.from_dict(json.loads(json.dumps(bb.config.as_dict()))) == bb.config


def test_default_file_resolved_from_faceprobe_home(tmp_path, monkeypatch):
    src = weights_file("arcface.mobilefacenet-paddle")
    (tmp_path / "weights").mkdir()
    os.symlink(src, tmp_path / "weights" / src.name)
    monkeypatch.setenv("FACEPROBE_HOME", str(tmp_path))
    monkeypatch.setenv("FACEPROBE_OFFLINE", "1")
    bb = create_backbone("arcface.mobilefacenet-paddle", device="cpu")
    assert bb.weights_path == str(tmp_path / "weights" / src.name)


def test_foamliu_fixed_batch_runs_batched(lfw_chips):
    bb = real_backbone("arcface.mobilefacenet")
    assert bb.batched and isinstance(bb.session.get_inputs()[0].shape[0], str)
    _, chips = lfw_chips
    counting = CountingSession(bb.session)
    bb.session = counting
    try:
        bb.embed(chips, batch_size=64)
    finally:
        bb.session = counting.session
    assert counting.calls == 1


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_equals_single_and_raw_preprocessing(name, lfw_chips):
    import onnxruntime as ort

    bb = real_backbone(name)
    _, chips = lfw_chips
    batched = bb.embed(chips, batch_size=64)
    single = np.concatenate([bb.embed(c) for c in chips])
    assert np.abs(batched - single).max() < 1e-5
    # the original file, one chip at a time, fed by hand with the documented convention
    raw = ort.InferenceSession(str(weights_file(name)), providers=["CPUExecutionProvider"])
    x = chips.astype(np.float32)
    if name == "arcface.mobilefacenet":
        x = (x / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    else:
        x = (x - 127.5) / 127.5
    x = x.transpose(0, 3, 1, 2).astype(np.float32)
    inp = raw.get_inputs()[0].name
    ref = np.concatenate([raw.run(None, {inp: x[i:i + 1]})[0] for i in range(len(x))])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(batched - ref).max() < 1e-4


@pytest.mark.parametrize("name", list(MODELS))
def test_lfw_same_identity_closer_than_different(name, lfw_chips):
    from sklearn.metrics import roc_auc_score

    from faceprobe.data.lfw import read_pairs

    bb = real_backbone(name)
    names, chips = lfw_chips
    emb = dict(zip(names, bb.embed(chips), strict=True))
    pairs = read_pairs(LFW / "pairs.txt")
    same = [float(emb[p.path_a] @ emb[p.path_b]) for p in pairs if p.same]
    diff = [float(emb[p.path_a] @ emb[p.path_b]) for p in pairs if not p.same]
    assert min(same) > max(diff) + 0.2, (same, diff)
    # every pair of the 15 faces (11 same-identity, 94 different)
    e = np.stack(list(emb.values()))
    ids = np.array([n.split("/")[0] for n in emb])
    iu = np.triu_indices(len(e), 1)
    assert roc_auc_score(ids[iu[0]] == ids[iu[1]], (e @ e.T)[iu]) >= 0.99


@pytest.mark.parametrize("name", list(MODELS))
def test_wrong_channel_order_changes_embeddings(name, lfw_chips):
    bb = real_backbone(name)
    _, chips = lfw_chips
    rgb = bb.embed(chips)
    right = bb.config
    try:
        bb.config = dataclasses.replace(right, channel_order="BGR")
        bgr = bb.embed(chips)
    finally:
        bb.config = right
    cos = (rgb * bgr).sum(axis=1)
    assert cos.mean() < 0.98, cos  # measured: ~0.94-0.95 mean, 0.85-0.89 at worst


def test_pipeline_embeds_with_registered_name(tmp_path):
    from faceprobe.embed.pipeline import embed_images

    bb = real_backbone("arcface.mobilefacenet")
    lfw = LFW / "lfw-deepfunneled"
    paths = [lfw / "Al_Pacino" / "Al_Pacino_0001.jpg", lfw / "Al_Pacino" / "Al_Pacino_0002.jpg",
             lfw / "Alan_Ball" / "Alan_Ball_0001.jpg"]
    rows = embed_images(paths, bb)
    assert [r["status"] for r in rows] == ["ok"] * 3, rows
    e = np.stack([r["features"]["embedding"] for r in rows])
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2 and e[0] @ e[1] > e[1] @ e[2] + 0.2
