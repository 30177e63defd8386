"""SCRFD face detector (faceprobe/embed/detect_scrfd.py): faces and 5 points on the fixture
images agree with MTCNN and the MTFL annotations, small images, batch = single, the policies,
the offline error (the model tests are skipped without ../shared/weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceprobe.data.mtfl import parse_line
from faceprobe.embed.detect import FaceDetector
from faceprobe.embed.detect_scrfd import SCRFD_FILENAME, ScrfdDetector, decode
from faceprobe.errors import WeightsError

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
MTFL = REPO / "tests" / "data" / "mtfl"
LFW = REPO / "tests" / "data" / "lfw"


def _box_iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    path = WEIGHTS / SCRFD_FILENAME
    if not path.is_file():
        pytest.skip(f"pretrained model {path} is absent")
    with pytest.MonkeyPatch.context() as mp:  # the edited graph is cached under FACEPROBE_HOME
        mp.setenv("FACEPROBE_HOME", str(tmp_path_factory.mktemp("faceprobe_home")))
        det = ScrfdDetector(weights=path)
        _ = det.session
        yield det


@pytest.fixture(scope="module")
def mtfl_fixture():
    """(name, RGB image, annotated (5, 2) points) for the MTFL fixture images."""
    rows = []
    for line in (MTFL / "training.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            rel, pts, _, _ = parse_line(line)
            rows.append((rel, np.asarray(Image.open(MTFL / rel).convert("RGB")), pts))
    assert len(rows) >= 20
    return rows


@pytest.fixture(scope="module")
def mtcnn_faces(mtfl_fixture):
    return FaceDetector().detect([img for _, img, _ in mtfl_fixture])


def _matched(faces, ref_box):
    return max(faces, key=lambda f: _box_iou(f.box, ref_box))


def test_fixture_faces_agree_with_mtcnn_and_annotations(detector, mtfl_fixture, mtcnn_faces):
    found = detector.detect([img for _, img, _ in mtfl_fixture])
    to_mtcnn = []
    for (rel, _img, pts), faces, ref in zip(mtfl_fixture, found, mtcnn_faces, strict=True):
        assert faces, f"{rel}: no face"
        assert all(0 < f.score <= 1 for f in faces)
        assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
        for j, f in enumerate(faces):  # after NMS no two faces overlap beyond its IoU
            assert all(_box_iou(f.box, g.box) <= detector.iou_threshold for g in faces[j + 1:])
        iod = float(np.linalg.norm(pts[0] - pts[1]))
        # the face of the annotation: its 5 points within 15% of the inter-ocular distance each
        # (SCRFD's mean NME on MTFL is ~0.05), in LANDMARK_NAMES order (image-left eye first)
        best = min(faces, key=lambda f: np.abs(f.landmarks - pts).sum())
        err = np.linalg.norm(best.landmarks - pts, axis=1) / iod
        assert err.mean() < 0.15, f"{rel}: 5-point NME {err.mean():.3f} ({err.round(2)})"
        assert best.landmarks[0, 0] < best.landmarks[1, 0]
        assert best.box[0] < pts[:, 0].min() and best.box[2] > pts[:, 0].max(), rel
        assert best.box[1] < pts[:, 1].min() and best.box[3] > pts[:, 1].max(), rel
        if ref:  # MTCNN's best face: the same face, box IoU > 0.5, points close
            m = ref[0]
            s = _matched(faces, m.box)
            assert _box_iou(s.box, m.box) > 0.5, f"{rel}: {s.box} vs MTCNN {m.box}"
            d = np.linalg.norm(s.landmarks - m.landmarks, axis=1) / iod
            # MTCNN itself is off by ~0.2 iod on some (Federico_Trillo_0001, where SCRFD is
            # within 0.09 of the annotation): loose per image, tight over the set
            assert d.mean() < 0.25, f"{rel}: points {d.round(2)} iod from MTCNN's"
            to_mtcnn.append(d.mean())
    assert len(to_mtcnn) >= len(mtfl_fixture) - 2
    assert np.median(to_mtcnn) < 0.06, np.round(to_mtcnn, 3)


def test_lfw_fixture_central_face(detector):
    files = sorted(LFW.glob("lfw-deepfunneled/*/*.jpg"))
    assert files
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    for f, r in zip(files, detector.locate(images), strict=True):
        assert r.status in ("ok", "multi_face_chosen"), f"{f.name}: {r.status} {r.error}"
        face = r.faces[0]
        cx, cy = (face.box[:2] + face.box[2:]) / 2
        assert abs(cx - 125) < 25 and abs(cy - 125) < 30, f"{f.name}: box {face.box}"
        assert 60 < face.size < 200, f"{f.name}: box {face.box}"


@pytest.mark.parametrize("side", [150, 112, 96])
def test_small_images_found(detector, mtfl_fixture, side):
    """Face-filling crops of ``side`` px (the MTFL faces cropped square around their points and
    downscaled): found, with the points inside the box."""
    missed = []
    for rel, img, pts in mtfl_fixture:
        c = pts.mean(0)
        half = min(1.4 * float(np.ptp(pts, axis=0).max()), c[0], c[1],
                   img.shape[1] - c[0], img.shape[0] - c[1])
        x0, y0 = int(c[0] - half), int(c[1] - half)
        crop = Image.fromarray(img[y0:y0 + int(2 * half), x0:x0 + int(2 * half)])
        k = side / crop.size[0]
        small = np.asarray(crop.resize((side, side), Image.BILINEAR))
        want = (pts - [x0, y0] + 0.5) * k - 0.5
        faces = detector.detect([small])[0]
        ok = [f for f in faces if f.box[0] < want[:, 0].min() and f.box[2] > want[:, 0].max()
              and f.box[1] < want[:, 1].min() and f.box[3] > want[:, 1].max()]
        if not ok:
            missed.append(rel)
    assert len(missed) <= len(mtfl_fixture) // 10, f"{side} px: missed {missed}"


def test_face_filling_canvas_missed_at_640_found_at_default(detector, mtfl_fixture):
    """Why the long side goes to 320 and not 640: a face that fills the 640 canvas is missed
    (net_7876 images are 400 px, the face most of the frame)."""
    big = [img for rel, img, _ in mtfl_fixture if img.shape[:2] == (400, 400)]
    assert len(big) >= 3
    at640 = detector.detect_at(big, 640)
    at320 = detector.detect_at(big, 320)
    assert all(at320)
    assert sum(bool(f) for f in at640) < len(big)


def test_batch_equals_single(detector, mtfl_fixture):
    # mixed sizes (250, 400, 160x216): several canvas groups in one call
    images = [img for _, img, _ in mtfl_fixture[:6]] + [img for _, img, _ in mtfl_fixture[-6:]]
    assert len({img.shape for img in images}) >= 2
    together = detector.detect(images)
    for img, faces in zip(images, together, strict=True):
        alone = detector.detect([img])[0]
        assert len(alone) == len(faces)
        for a, b in zip(alone, faces, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)
            assert abs(a.score - b.score) < 1e-5


def test_batch_split_by_max_batch(detector, mtfl_fixture):
    images = [img for _, img, _ in mtfl_fixture if img.shape[:2] == (250, 250)][:5]
    small = ScrfdDetector(weights=detector.weights_path, max_batch=2)
    small._session = detector.session
    for a, b in zip(small.detect(images), detector.detect(images), strict=True):
        assert [f.box.round(2).tolist() for f in a] == [f.box.round(2).tolist() for f in b]


def test_no_face_policies(detector):
    blank = np.full((200, 300, 3), 128, np.uint8)
    assert detector.detect([blank]) == [[]]
    assert detector.locate([blank])[0].status == "no_face"
    fallback = ScrfdDetector(weights=detector.weights_path, no_face="whole_image")
    fallback._session = detector.session
    r = fallback.locate([blank])[0]
    assert r.status == "no_face_fallback"
    np.testing.assert_allclose(r.faces[0].box, [50, 0, 250, 200])


def test_dataset_landmarks_skip_detection(detector, mtfl_fixture):
    rel, img, pts = mtfl_fixture[0]
    r = detector.locate([img, img], landmarks=[pts, None])
    assert r[0].status == "dataset_landmarks"
    np.testing.assert_allclose(r[0].faces[0].landmarks, pts)
    assert r[1].status in ("ok", "multi_face_chosen") and r[1].faces[0].score > 0.5


def test_multi_face_all_and_largest(detector, mtfl_fixture):
    a = mtfl_fixture[0][1]
    b = np.asarray(Image.fromarray(mtfl_fixture[1][1]).resize((125, 125)))
    pair = np.full((250, 400, 3), 0, np.uint8)
    pair[:, :250] = a
    pair[60:185, 265:390] = b
    found = detector.detect([pair])[0]
    assert len(found) >= 2
    det_all = ScrfdDetector(weights=detector.weights_path, multi_face="all")
    det_all._session = detector.session
    assert len(det_all.locate([pair])[0].faces) >= 2
    largest = ScrfdDetector(weights=detector.weights_path, multi_face="largest")
    largest._session = detector.session
    r = largest.locate([pair])[0]
    assert r.status == "multi_face_chosen" and r.faces[0].box[2] < 260


def test_decode_anchor_layout():
    """One strong anchor per stride decodes at its own centre: channels are anchor-major,
    locations row-major (x fastest), distances and offsets in stride units."""
    outs = []
    for s in (8, 16, 32):
        n = 64 // s
        outs.append(np.full((1, 2, n, n), -10.0, np.float32))
    for s in (8, 16, 32):
        n = 64 // s
        outs.append(np.ones((1, 8, n, n), np.float32))
    for s in (8, 16, 32):
        n = 64 // s
        outs.append(np.zeros((1, 20, n, n), np.float32))
    outs[0][0, 1, 2, 5] = 5.0  # stride 8, anchor 1, row 2, column 5 -> centre (40, 16)
    outs[3][0, 4:8, 2, 5] = [1, 2, 3, 4]
    outs[6][0, 10:20, 2, 5] = np.arange(10)
    (boxes, scores, kps), = decode(outs, 0.5, 0.4)
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0], [40 - 8, 16 - 16, 40 + 24, 16 + 32])
    np.testing.assert_allclose(scores[0], 1 / (1 + np.exp(-5.0)), rtol=1e-6)
    np.testing.assert_allclose(kps[0], np.array([40, 16]) + np.arange(10).reshape(5, 2) * 8)


def test_offline_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPROBE_HOME", str(tmp_path))
    monkeypatch.setenv("FACEPROBE_OFFLINE", "1")
    with pytest.raises(WeightsError, match=SCRFD_FILENAME) as exc:
        ScrfdDetector()
    assert str(tmp_path / "weights" / SCRFD_FILENAME) in str(exc.value)
    with pytest.raises(WeightsError, match="not found"):
        ScrfdDetector(weights=tmp_path / "missing.onnx")


def test_retry_finds_small_face_in_large_image(detector, mtfl_fixture):
    """A 250 px LFW frame (face ~35 px) in a 1400 px image: ~6 px at the 320 px first look,
    found by the second look at 640."""
    img = np.asarray(Image.fromarray(mtfl_fixture[0][1]).resize((80, 80)))
    big = np.full((1400, 1400, 3), 110, np.uint8)
    big[300:380, 500:580] = img
    assert detector.detect_at([big], detector.input_size) == [[]]
    faces = detector.detect([big])[0]
    assert len(faces) == 1
    cx, cy = (faces[0].box[:2] + faces[0].box[2:]) / 2
    assert 500 < cx < 580 and 300 < cy < 380
