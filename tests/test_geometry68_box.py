"""geometry68 runs dlib's 68-point predictor on the box it was trained on: dlib's HOG-detector box
overlapping the face's detector box, else the detector box mapped to HOG geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceprobe.embed import features as F

FIXTURES = Path(__file__).resolve().parent / "data"

pytest.importorskip("dlib")


def _images(n: int = 4) -> list[np.ndarray]:
    from faceprobe.embed.images import load_image

    paths = sorted((FIXTURES / "mtfl" / "lfw_5590").glob("*.jpg"))[:n]
    if len(paths) < n:
        pytest.skip("not enough MTFL fixture images")
    return [load_image(p) for p in paths]


@pytest.fixture(scope="module")
def faces() -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, MTCNN box as the store keeps it, float32) of real fixture faces."""
    from faceprobe.embed.detect import FaceDetector

    imgs = _images()
    found = FaceDetector("cpu").locate(imgs)
    out = [(img, np.asarray(r.faces[0].box, np.float32)) for img, r in zip(imgs, found, strict=True)
           if r.faces]
    assert len(out) >= 3
    return out


def test_iou_and_map_box():
    assert F.iou([0, 0, 10, 10], [0, 0, 10, 10]) == pytest.approx(1.0)
    assert F.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert F.iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    m = F.map_box([10, 20, 30, 60], {"dx": 0.1, "dy": 0.25, "scale": 0.5})
    # centre (20 + 0.1*20, 40 + 0.25*40) = (22, 50), side 0.5*sqrt(20*40)
    half = 0.25 * np.sqrt(800)
    assert np.allclose(m, [22 - half, 50 - half, 22 + half, 50 + half])


def test_hog_box_used_when_it_overlaps(faces):
    for img, box in faces:
        dets = F.hog_boxes(img, box)
        assert len(dets), "dlib's HOG detector finds these frontal LFW faces"
        used, source = F.shape68_box(img, box)
        assert source == "hog"
        assert any(np.array_equal(used, d) for d in dets)
        assert F.iou(used, F.map_box(box)) >= F.MATCH_IOU
        # the HOG box is not the detector box: the predictor sees another box than before
        assert not np.allclose(used, box, atol=2)
        # geometry68 is the predictor's points on exactly that box
        pts = F.shape68(img, used)
        want = F.normalise_points(pts, pts[36:42].mean(axis=0), pts[42:48].mean(axis=0))
        assert np.array_equal(F.geometry68(img, box), want)


def test_hog_box_agrees_with_the_whole_image_detector(faces):
    """The crop rescaled around the face finds the face the whole-image detector finds."""
    for img, box in faces:
        whole = F.hog_boxes(img, None)
        used, _ = F.shape68_box(img, box)
        assert max(F.iou(used, w) for w in whole) >= 0.6


def test_fallback_when_no_hog_face_overlaps(faces):
    img, box = faces[0]
    # a box on a corner of the image, away from the face: no HOG box overlaps it
    h, w = img.shape[:2]
    corner = np.array([0, 0, w * 0.25, h * 0.25], np.float32)
    assert F.iou(corner, box) == 0.0
    used, source = F.shape68_box(img, corner)
    assert source == "mapped" and np.allclose(used, F.map_box(corner))
    # the face turned on its side: the frontal HOG detector misses it, the mapped box is used
    rot = np.ascontiguousarray(np.rot90(img))  # (x, y) -> (y, w - 1 - x)
    rbox = np.array([box[1], w - box[2], box[3], w - box[0]], np.float32)
    assert not any(F.iou(d, F.map_box(rbox)) >= F.MATCH_IOU for d in F.hog_boxes(rot, rbox))
    used, source = F.shape68_box(rot, rbox)
    assert source == "mapped" and np.allclose(used, F.map_box(rbox))
    g = F.geometry68(rot, rbox)
    assert g.shape == (136,) and np.isfinite(g).all() and g.any()


def test_a_hog_face_elsewhere_is_not_used(faces, monkeypatch):
    """HOG finds a face, but not this one (another face of the image): the mapped box is used."""
    img, box = faces[0]
    real = F.hog_boxes(img, box)
    assert len(real)
    h, w = img.shape[:2]
    corner = np.array([0, 0, w * 0.25, h * 0.25], np.float32)
    monkeypatch.setattr(F, "hog_boxes", lambda image, b: real)
    used, source = F.shape68_box(img, corner)
    assert source == "mapped" and np.allclose(used, F.map_box(corner))
    assert F.shape68_box(img, box)[1] == "hog"  # the same detections do match the face's box


def test_no_detector_box_uses_the_largest_hog_face(faces):
    img, _ = faces[0]
    used, source = F.shape68_box(img, None)
    dets = F.hog_boxes(img, None)
    area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
    assert source == "hog" and np.array_equal(used, dets[int(np.argmax(area))])
    blank = np.full((120, 100, 3), 128, np.uint8)
    used, source = F.shape68_box(blank, None)
    assert source == "image" and np.array_equal(used, [0, 0, 100, 120])
    assert np.isfinite(F.geometry68(blank, None)).all()


def test_deterministic_and_finite(faces):
    for img, box in faces:
        a = F.geometry68(img, box)
        b = F.geometry68(img.copy(), box.copy())
        assert a.dtype == np.float32 and a.shape == (136,)
        assert np.isfinite(a).all() and a.any()
        assert a.tobytes() == b.tobytes()
        # eye centres at (-0.5, 0) and (0.5, 0) by construction of the normalisation
        pts = a.reshape(68, 2)
        assert np.allclose(pts[36:42].mean(axis=0), [-0.5, 0], atol=1e-5)
        assert np.allclose(pts[42:48].mean(axis=0), [0.5, 0], atol=1e-5)


def test_provenance_names_the_box():
    p = F.provenance(["geometry68"])["geometry68"]
    assert p["input"] == F.SHAPE68_INPUT != "detector box"  # stores made before said that
    box = p["box"]
    assert box["detector"] == "dlib.get_frontal_face_detector"
    assert box["upsample"] == F.HOG_UPSAMPLE and box["match_iou"] == F.MATCH_IOU
    assert box["fallback"]["map"] == F.BOX_MAP


def test_a_bundle_trained_on_older_geometry68_is_refused():
    from faceprobe.embed.features import provenance
    from faceprobe.embed.recipe import check_extra_groups
    from faceprobe.errors import BundleError

    now = provenance(["geometry68"])
    check_extra_groups(now, ["embedding", "geometry68"], "bundle B")  # same: passes
    check_extra_groups(None, ["geometry68"], "bundle B")  # unrecorded (older bundle): passes
    old = {"geometry68": {**now["geometry68"], "input": "detector box"}}
    old["geometry68"].pop("box")
    with pytest.raises(BundleError, match="geometry68 computed otherwise") as err:
        check_extra_groups(old, ["embedding", "geometry68"], "bundle B")
    assert "box, input" in str(err.value) and "\n" not in str(err.value)
