"""`landmarks evaluate` on synthetic stores with known point errors: CED and AUC@0.10, failure
rate, the box-size normaliser, per-pose errors, matching the annotated face among an image's
rows (multi-face all) with matched / unmatched / missing counts, the CED plot and the CLI."""

import json

import numpy as np
import pytest

from faceprobe.cli import main
from faceprobe.embed.detect import box_from_landmarks
from faceprobe.embed.store import StoreWriter
from faceprobe.landmarks.evaluate import annotation_boxes, evaluate_landmarks, plot_ced
from faceprobe.landmarks.nme import auc, ced

POSES = ["left_profile", "left", "frontal", "right", "right_profile"]


def face(cx, cy, eye, height=None):
    """5 points (left eye, right eye, nose, mouth left, mouth right), eyes ``eye`` px apart."""
    h = eye if height is None else height
    return np.array([[cx - eye / 2, cy], [cx + eye / 2, cy], [cx, cy + 0.55 * h],
                     [cx - 0.4 * eye, cy + 1.15 * h], [cx + 0.4 * eye, cy + 1.15 * h]],
                    dtype=np.float64)


def row(path, true, pred, *, box="auto", face_index=0, pose=None, status="ok"):
    """A store row; ``box='auto'`` is the detector-style box of the predicted points."""
    if isinstance(box, str):
        box = None if pred is None else box_from_landmarks(pred)
    r = {"path": path, "dataset": "mtfl", "split": "test", "status": status,
         "face": face_index, "features": {"embedding": [0.0, 1.0]} if pred is not None else None,
         "box": box, "landmarks_detected": pred, "landmarks_dataset": true,
         "labels": {"pose": pose} if pose else {}}
    return r


def make_store(path, rows, pose=True):
    meta = {"backbone": "test.synthetic", "features": {"embedding": 2}, "shard_size": 64,
            "vocabularies": {"pose": POSES} if pose else {}}
    with StoreWriter.open(path, meta) as w:
        w.write_shard(0, rows)
    return str(path)


# NME 0, 0.0255, 0.0755, 0.2 (every point shifted by e * 20 px, eyes 20 px apart): the errors sit
# between the CED grid's points, so the fractions and the trapezoid AUC are exact
ERRORS = [0.0, 0.0255, 0.0755, 0.2]


def scaled(box, s):
    c = (box[:2] + box[2:]) / 2
    return np.concatenate([c - (c - box[:2]) * s, c + (box[2:] - c) * s])


def shifted_store(tmp_path):
    rows = []
    for k, e in enumerate(ERRORS):
        t = face(100 + 50 * k, 80, 20)
        p = t + [e * 20, 0]  # the detector's box is 1.3x the points' box: box_size ignores it
        rows.append(row(f"/img/{k}.jpg", t, p, pose="frontal",
                        box=scaled(box_from_landmarks(p), 1.3)))
    return make_store(tmp_path / "s", rows)


def test_ced_auc_failure_rate_and_box_size(tmp_path):
    r = evaluate_landmarks(shifted_store(tmp_path))
    assert r["evaluated"] == 4 and r["missing"] == 0 and r["matched"] == 4
    assert r["nme"] == pytest.approx(np.mean(ERRORS), abs=1e-6)
    assert r["failure_rate"] == 0.25  # only 0.2 is above 0.10
    t = np.asarray(r["ced"]["thresholds"])
    f = np.asarray(r["ced"]["interocular"])
    assert len(t) == 101 and t[0] == 0 and t[-1] == pytest.approx(0.10)
    assert np.diff(t) == pytest.approx(np.full(100, 0.001))
    expect = np.select([t < 0.0255, t < 0.0755], [0.25, 0.5], 0.75)
    assert f.tolist() == expect.tolist()  # NME 0 counts at t = 0: NME <= t
    assert f[-1] == 1 - r["failure_rate"]  # one definition of failure
    # AUC@0.10 = mean over faces of max(0, 0.10 - e) / 0.10
    assert r["auc"] == pytest.approx(np.mean([max(0, 0.1 - e) for e in ERRORS]) / 0.1, abs=1e-4)
    assert r["auc"] == pytest.approx(0.4975, abs=1e-4)
    # the second normaliser: sqrt(w*h) of the box of the annotated points
    b = box_from_landmarks(face(0, 0, 20))
    size = np.sqrt((b[2] - b[0]) * (b[3] - b[1]))
    assert r["second_norm"] == "box_size"
    assert r["nme_box_size"] == pytest.approx(np.mean(ERRORS) * 20 / size, rel=1e-4)
    assert r["by_norm"]["box_size"]["nme"] == r["nme_box_size"]
    assert r["by_norm"]["interocular"]["auc"] == r["auc"]
    assert len(r["ced"]["box_size"]) == 101
    # box_size as the main normaliser swaps the two
    r2 = evaluate_landmarks(tmp_path / "s", norm="box_size")
    assert r2["nme"] == pytest.approx(r["nme_box_size"]) and r2["second_norm"] == "interocular"
    assert r2["nme_interocular"] == pytest.approx(r["nme"])


def test_ced_and_auc_functions():
    t, f = ced(np.array([0.05, 0.2]))
    assert f[0] == 0 and f[-1] == 0.5
    assert auc(np.array([0.0, 0.0])) == pytest.approx(1.0)
    assert auc(np.array([0.3])) == 0.0
    assert np.isnan(auc(np.zeros(0))) and np.isnan(ced(np.zeros(0))[1]).all()


def test_annotation_boxes_match_box_from_landmarks():
    rng = np.random.default_rng(0)
    pts = np.stack([face(*rng.uniform(50, 300, 2), rng.uniform(10, 60)) for _ in range(5)])
    pts += rng.normal(0, 2, pts.shape)
    pts[2] = np.nan
    got = annotation_boxes(pts)
    assert np.isnan(got[2]).all()
    for i in (0, 1, 3, 4):
        np.testing.assert_allclose(got[i], box_from_landmarks(pts[i]), rtol=1e-5)


def test_per_pose_errors_and_the_box_size_normaliser_on_profiles(tmp_path):
    rows = []
    for k in range(2):  # frontal: eyes 20 apart, every point 1 px off -> NME 0.05
        t = face(100 + 60 * k, 80, 20)
        rows.append(row(f"/f{k}.jpg", t, t + [0, 1], pose="frontal"))
    for k in range(2):  # profiles: eyes 4 apart, face 20 tall, 1 px off -> NME 0.25, failures
        t = face(100 + 60 * k, 200, 4, height=20)
        rows.append(row(f"/p{k}.jpg", t, t + [0, 1], pose="left_profile"))
    t = face(300, 300, 20)
    rows.append(row("/r.jpg", t, t + [0, 3], pose="right"))  # NME 0.15
    r = evaluate_landmarks(make_store(tmp_path / "s", rows))
    pp = r["per_pose"]
    assert list(pp) == ["left_profile", "frontal", "right"]  # vocabulary order, present only
    assert pp["frontal"]["nme"] == pytest.approx(0.05, rel=1e-5)
    assert pp["frontal"]["failure_rate"] == 0 and pp["frontal"]["evaluated"] == 2
    assert pp["left_profile"]["nme"] == pytest.approx(0.25, rel=1e-5)
    assert pp["left_profile"]["failure_rate"] == 1.0
    assert pp["right"]["nme"] == pytest.approx(0.15, rel=1e-5)
    assert r["failure_rate"] == pytest.approx(3 / 5)
    b = box_from_landmarks(face(0, 0, 4, height=20))
    assert pp["left_profile"]["nme_box_size"] == pytest.approx(
        1 / np.sqrt((b[2] - b[0]) * (b[3] - b[1])), rel=1e-4)
    assert pp["left_profile"]["nme_box_size"] < 0.10  # not a failure by box size
    # a store without a pose task has no per_pose
    r = evaluate_landmarks(make_store(tmp_path / "np", [row("/x.jpg", t, t, pose=None)],
                                      pose=False))
    assert "per_pose" not in r


def test_matching_picks_the_annotated_face_among_an_images_rows(tmp_path):
    a = face(100, 100, 20)  # image A: the annotated face, and a second face far away
    other = face(400, 100, 20)
    b = face(100, 100, 20)  # image B: the detector found only another face
    c = face(100, 100, 20)  # image C: no face found
    rows = [
        row("/A.jpg", a, other, face_index=0, pose="frontal"),  # the wrong face comes first
        row("/A.jpg", a, a + [0, 1], face_index=1, pose="frontal"),  # NME 0.05
        row("/B.jpg", b, other + [0, 2], pose="right"),
        row("/C.jpg", c, None, status="no_face", pose="left"),
    ]
    st = make_store(tmp_path / "s", rows)
    r = evaluate_landmarks(st, min_iou=0.3)
    assert r["matched"] == 1 and r["unmatched"] == 1 and r["missing"] == 1
    assert r["evaluated"] == 1 and r["nme"] == pytest.approx(0.05, rel=1e-5)
    m = r["matching"]
    assert m["annotated_faces"] == 3 and m["images_with_several_rows"] == 1
    assert m["rows_not_chosen"] == 1 and m["min_iou"] == 0.3
    h = np.subtract(*box_from_landmarks(a)[[3, 1]])  # A's boxes: same size, 1 px apart in y
    assert m["median_iou"] == pytest.approx(((h - 1) / (h + 1) + 0.0) / 2, rel=1e-4)  # A, B
    pp = r["per_pose"]
    assert pp["frontal"]["evaluated"] == 1 and pp["frontal"]["nme"] == pytest.approx(0.05, rel=1e-5)
    assert pp["right"]["unmatched"] == 1 and pp["right"]["evaluated"] == 0
    assert pp["left"]["missing"] == 1 and pp["left"]["unmatched"] == 0
    assert r["per_dataset"]["mtfl"]["unmatched"] == 1
    # by default any overlap: B's other face is evaluated (NME 15), A still picks its own face
    r0 = evaluate_landmarks(st)
    assert r0["matched"] == 2 and r0["unmatched"] == 0 and r0["evaluated"] == 2
    assert r0["nme"] == pytest.approx((0.05 + np.hypot(300, 2) / 20) / 2, rel=1e-4)
    # rows without a detector box are matched by the box of their predicted points
    rows[1]["box"] = None
    r = evaluate_landmarks(make_store(tmp_path / "nobox", rows), min_iou=0.3)
    assert r["matched"] == 1 and r["nme"] == pytest.approx(0.05, rel=1e-5)


def test_plot_ced_draws_several_models(tmp_path):
    t, f1 = ced(np.array([0.01, 0.02, 0.2]))
    _, f2 = ced(np.array([0.05, 0.06]))
    out = plot_ced({"mtcnn": (t, f1), "rcnn": (t, f2)}, tmp_path / "cmp" / "ced.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_cli_text_json_and_report(tmp_path, capsys):
    st = shifted_store(tmp_path)
    rep = tmp_path / "rep"
    assert main(["landmarks", "evaluate", st, "--report", str(rep), "--min-iou", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "AUC@0.1 0.4975" in out and "NME (box_size)" in out
    assert "matched 4 of 4 annotated faces at IoU >= 0.3" in out
    assert "pose frontal: NME 0.0752" in out
    assert (rep / "ced.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((rep / "metrics.json").read_text())
    assert metrics["auc"] == pytest.approx(0.4975, abs=1e-4) and "ced" in metrics
    assert main(["landmarks", "evaluate", st, "--json", "--min-iou", "0.99",
                 "--norm", "box_size"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("nme", "median", "per_point", "failure_rate", "evaluated", "missing", "auc",
                "ced", "by_norm", "nme_interocular", "matched", "unmatched", "matching",
                "per_pose", "per_dataset"):
        assert key in r
    assert r["norm"] == "box_size" and r["matching"]["min_iou"] == 0.99
    assert main(["landmarks", "evaluate", st, "--min-iou", "2"]) == 1
    assert "min_iou" in capsys.readouterr().err
