"""NME on hand-computed numbers: inter-ocular normalisation, missing rows counted not averaged,
failure strictly above 0.10, box-diagonal normaliser."""

import numpy as np
import pytest

from faceprobe.errors import ConfigError
from faceprobe.landmarks.nme import nme

NAN = np.full((5, 2), np.nan)


def face(eye_dist):
    # left_eye, right_eye, nose, mouth_left, mouth_right
    return np.array([[0, 0], [eye_dist, 0], [eye_dist / 2, 5], [2, 10], [eye_dist - 2, 10]],
                    dtype=np.float64)


def test_interocular_missing_and_failure():
    a, b, c = face(20), face(10), face(10)
    pa = a + [0, 2]  # every point 2 px off, eyes 20 apart: 0.1 per point, exactly at the threshold
    pb = b.copy()
    pb[0] += [6, 8]  # left eye 10 px off, eyes 10 apart: 1.0 on that point, 0.2 for the face
    true = np.stack([a, b, c, NAN])
    pred = np.stack([pa, pb, NAN, face(10)])  # c: no prediction; the last row: no ground truth
    r = nme(pred, true)
    assert r["evaluated"] == 2 and r["missing"] == 1
    assert r["nme"] == pytest.approx((0.1 + 0.2) / 2)
    assert r["median"] == pytest.approx(0.15)
    assert r["per_point"] == pytest.approx([(0.1 + 1.0) / 2, 0.05, 0.05, 0.05, 0.05])
    assert r["failure_rate"] == pytest.approx(0.5)  # 0.1 is not a failure, 0.2 is
    assert r["face_errors"] == pytest.approx([0.1, 0.2])
    assert r["point_names"][0] == "left_eye"


def test_interpupil_equals_interocular_for_eye_centres():
    t = face(10)[None]
    p = t + [0, 1]
    assert nme(p, t, "interpupil")["nme"] == pytest.approx(nme(p, t, "interocular")["nme"])


def test_box_diagonal_norm_prefers_the_box():
    t = face(10)[None]
    p = t + [0, 5]  # 5 px per point
    r = nme(p, t, "box", boxes=np.array([[0, 0, 30, 40]]))  # diagonal 50
    assert r["nme"] == pytest.approx(0.1)
    # no box: the points' own extent (10 x 10 -> diagonal 10*sqrt(2))
    r = nme(p, t, "box", boxes=np.full((1, 4), np.nan))
    assert r["nme"] == pytest.approx(5 / (10 * np.sqrt(2)))


def test_nothing_to_evaluate_and_bad_norm():
    r = nme(NAN[None], face(10)[None])
    assert r["evaluated"] == 0 and r["missing"] == 1 and np.isnan(r["nme"])
    with pytest.raises(ConfigError):
        nme(face(10)[None], face(10)[None], norm="chin")
