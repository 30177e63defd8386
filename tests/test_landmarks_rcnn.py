"""CPU smoke test of the KeypointRCNN stage through the CLI: train from random init at 128 px for
two iterations on 16 MTFL faces, resume (the epoch counter continues), predict into a store of 4
other faces, evaluate --source rcnn; plus weights resolution and a COCO-shaped weights file.

The keypoint head costs ~7 GFLOP per RoI whatever the image size, so the smoke test keeps RoIs,
proposals and detections at a minimum (--rois-per-image 4, --proposals 20, --max-detections 1):
it checks the plumbing, not accuracy."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import faceprobe
from faceprobe.cli import main
from faceprobe.data.mtfl import parse_line
from faceprobe.embed.store import Store, StoreWriter, file_sha256, shard_name
from faceprobe.errors import WeightsError
from faceprobe.landmarks.extra import list_extras, read_extra
from faceprobe.landmarks.rcnn_data import LandmarkDataset, box_from_points, samples_from_store
from faceprobe.landmarks.rcnn_model import (
    CLASSES,
    build_model,
    init_from_weights,
    load_state,
    resolve_weights,
)
from faceprobe.landmarks.rcnn_train import CHECKPOINT

SAMPLE = Path(faceprobe.__file__).parent / "sample" / "mtfl"


def make_store(path, n=16, per_shard=8, skip=0):
    lines = (SAMPLE / "training.txt").read_text().splitlines()[skip:skip + n]
    rows = []
    for k, line in enumerate(lines):
        rel, pts, labels, _ = parse_line(line)
        row = {"path": str(SAMPLE / rel), "dataset": "mtfl", "split": "train",
               "status": "dataset_landmarks", "labels": {"gender": labels["gender"]},
               "features": {"embedding": [0.0, 1.0]}, "landmarks_dataset": pts}
        if k % 2:  # half the rows as if a detector had found the face
            row.update(status="ok", box=box_from_points(pts) + [-2, -2, 2, 2], score=0.99,
                       landmarks_detected=pts + 1.5)
        rows.append(row)
    meta = {"backbone": "test.random", "features": {"embedding": 2},
            "vocabularies": {"gender": ["male", "female"]}, "shard_size": per_shard,
            "num_shards": n // per_shard, "dataset": "mtfl", "records_sha256": str(skip)}
    with StoreWriter.open(path, meta) as w:
        for s in range(n // per_shard):
            w.write_shard(s, rows[s * per_shard:(s + 1) * per_shard])
    return Store(path)


def run_json(capsys, argv):
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_train_resume_predict_evaluate_on_cpu(tmp_path, capsys):
    torch.manual_seed(0)
    st = make_store(tmp_path / "store")
    model = tmp_path / "model"
    common = [str(st.path), "--out", str(model), "--weights", "none", "--image-size", "128",
              "--batch-size", "2", "--max-iters", "1", "--rois-per-image", "4",
              "--device", "cpu", "--holdout", "0.3", "--json"]
    r = run_json(capsys, ["landmarks", "train", *common, "--epochs", "1"])
    held = r["skipped"]["held_out"]
    assert 0 < held < 16 and r["faces"] == 16 - held and r["history"][0]["iters"] == 1
    assert r["config"]["backbone"] == "mobilefacenet"
    assert np.isfinite(r["history"][0]["loss_keypoint"])
    ckpt = torch.load(model / CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 1 and {"model", "optimizer", "scheduler", "config"} <= set(ckpt)

    r = run_json(capsys, ["landmarks", "train", *common, "--epochs", "2"])
    assert [h["epoch"] for h in r["history"]] == [1, 2] and r["epochs_done"] == 2
    assert torch.load(model / CHECKPOINT, weights_only=True)["epoch"] == 2

    test = make_store(tmp_path / "test", n=4, per_shard=2, skip=16)
    shards_before = [file_sha256(test.path / shard_name(i)) for i in test.shards()]
    predict = ["landmarks", "predict", str(model), str(test.path), "--device", "cpu",
               "--batch-size", "2", "--max-detections", "1", "--proposals", "20", "--json"]
    p = run_json(capsys, predict)
    assert p["rows"] == 4 and p["written"] == 2 and p["unreadable"] == 0
    extras = list_extras(test.path)
    assert extras["landmarks_rcnn"] == [0, 1] and extras["landmarks_rcnn_score"] == [0, 1]
    d = test.load(features=(), tasks=[], usable_only=False)
    pts = read_extra(test, "landmarks_rcnn", d.row_id)
    assert pts.shape == (4, 5, 2)
    assert np.isfinite(pts).all(axis=(1, 2)).sum() == p["predicted"]
    assert [file_sha256(test.path / shard_name(i)) for i in test.shards()] == shards_before

    p = run_json(capsys, predict)
    assert p["skipped"] == 2 and p["written"] == 0  # resumable: nothing left to do

    e = run_json(capsys, ["landmarks", "evaluate", str(test.path), "--source", "rcnn", "--json"])
    assert {"nme", "per_point", "failure_rate", "evaluated", "missing"} <= set(e)
    assert e["evaluated"] + e["missing"] == 4 and len(e["per_point"]) == 5

    assert e["rows_trained_on_left_out"] == 0

    # on the training store, only the held-out images are scored
    run_json(capsys, [*predict[:3], str(st.path), *predict[4:]])
    e = run_json(capsys, ["landmarks", "evaluate", str(st.path), "--source", "rcnn", "--json"])
    assert e["rows_trained_on_left_out"] == 16 - held and e["evaluated"] + e["missing"] == held

    e = run_json(capsys, ["landmarks", "evaluate", str(test.path), "--json"])
    assert e["evaluated"] == 2 and e["missing"] == 2  # detected points on half the rows
    assert e["nme"] == pytest.approx(np.mean([
        np.hypot(1.5, 1.5) / np.linalg.norm(t[0] - t[1]) for t in d.landmarks_dataset[1::2]]),
        rel=1e-5)


def test_missing_weights_name_the_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPROBE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError) as exc:
        resolve_weights("coco")
    msg = str(exc.value)
    assert "keypointrcnn_resnet50_fpn_coco-fc266e95.pth" in msg and str(tmp_path / "home") in msg
    assert "--weights none" in msg
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights(str(tmp_path / "nope.pth"))
    assert resolve_weights("none") is None
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet50-0676ba61.pth").write_bytes(b"x")
    assert resolve_weights("imagenet") == cache / "resnet50-0676ba61.pth"


def test_coco_shaped_weights_load_except_the_keypoint_layer(tmp_path):
    # A COCO keypoint model has 17 keypoints; everything but that layer carries over.
    cfg = {"classes": "face", "image_size": 128, "pretrained": True, "bn_eps": 0.0}
    coco = build_model(cfg)
    coco.roi_heads.keypoint_predictor.kps_score_lowres = torch.nn.ConvTranspose2d(
        512, 17, 4, stride=2, padding=1)
    state = coco.state_dict()
    model = build_model(cfg)
    info = init_from_weights(model, state, tmp_path / "coco.pth")
    assert info["kind"] == "detection"
    assert all("kps_score_lowres" in k for k in info["reinitialised"]) and info["reinitialised"]
    assert torch.equal(model.state_dict()["backbone.body.conv1.weight"],
                       state["backbone.body.conv1.weight"])
    with pytest.raises(WeightsError):
        init_from_weights(model, {"backbone.body.conv1.weight": torch.zeros(1)}, tmp_path / "x")


def test_training_samples_boxes_and_gender_classes(tmp_path):
    st = make_store(tmp_path / "s", n=4, per_shard=4)
    d = st.load(features=(), tasks=["gender"], usable_only=False)
    faces, skipped = samples_from_store(st, "face")
    assert len(faces) == 4 and skipped["no_landmarks"] == 0
    assert all(s.label == 1 for s in faces)
    for s, pts, box in zip(faces, d.landmarks_dataset, d.box, strict=True):
        if np.isfinite(box).all():  # the detector's box, which holds the points, is kept
            assert np.array_equal(s.box, box)
        else:
            assert np.array_equal(s.box, box_from_points(pts))
    genders, _ = samples_from_store(st, "gender")
    names = [st.vocabularies["gender"][c] for c in d.y["gender"]]
    assert [CLASSES["gender"][s.label] for s in genders] == [
        {"female": "woman", "male": "man"}[n] for n in names]
    image, target = LandmarkDataset(faces, train=False)[0]
    assert image.shape[0] == 3 and 0 <= float(image.min()) and float(image.max()) <= 1
    assert target["keypoints"].shape == (1, 5, 3) and (target["keypoints"][..., 2] == 1).all()
    assert torch.equal(target["keypoints"][0, :, :2], torch.from_numpy(faces[0].points))


def test_mobilefacenet_state_dict_fills_the_fpn_body(tmp_path):
    from faceprobe.embed.backbones.mobilefacenet_torch import MobileFaceNet

    torch.manual_seed(1)
    state = MobileFaceNet().state_dict()
    path = tmp_path / "mfn.pt"
    torch.save(state, path)
    cfg = {"backbone": "mobilefacenet", "classes": "face", "image_size": 128, "pretrained": True}
    model = build_model(cfg)
    info = init_from_weights(model, load_state(path), path)
    assert info["kind"] == "mobilefacenet" and info["reinitialised"] == []
    body = model.backbone.body.net.state_dict()
    assert torch.equal(body["features.3.conv.0.0.weight"], state["features.3.conv.0.0.weight"])
    assert torch.equal(body["conv2.1.running_var"], state["conv2.1.running_var"])
    # pretrained: batch norm keeps its statistics in training mode, the stem stays fixed
    model.train()
    assert not model.backbone.body.net.conv2[1].training
    assert not any(p.requires_grad for p in model.backbone.body.net.conv1.parameters())
    with pytest.raises(WeightsError, match="ResNet-50 backbone .* a mobilefacenet file"):
        init_from_weights(build_model({**cfg, "backbone": "resnet50"}), state, path)
    with pytest.raises(WeightsError, match="MobileFaceNet backbone .* a resnet50 file"):
        resnet = build_model({"classes": "face", "image_size": 128}).backbone.body.state_dict()
        init_from_weights(model, {**resnet, "fc.weight": torch.zeros(1)}, path)
