"""Alignment: the similarity fit, the warp's pixel convention, facenet-pytorch's crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceprobe.embed.align import (
    ARCFACE_TEMPLATE,
    DLIB_150_TEMPLATE,
    align_crop,
    align_similarity,
    crop_box,
    invert_affine,
    scaled_template,
    similarity_matrix,
    transform_points,
)

FIXTURES = Path(__file__).resolve().parent / "data"


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    ang, s, t = 0.3, 0.7, np.array([12.0, -5.0])
    rot = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = src @ rot.T + t
    m = similarity_matrix(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)
    np.testing.assert_allclose(transform_points(invert_affine(m), dst), src, atol=1e-9)


@pytest.mark.parametrize("template,size", [(ARCFACE_TEMPLATE, 112), (DLIB_150_TEMPLATE, 150)])
def test_warp_puts_landmarks_on_the_template(template, size):
    """Draw a dot at each landmark of a rotated, scaled 'face'; after warping, each dot's
    intensity centroid sits on its template point."""
    ang, s = 0.25, 2.1
    rot = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    points = template @ rot.T + np.array([60.0, 40.0])
    h = w = 420
    for k, (px, py) in enumerate(points):
        img = np.zeros((h, w, 3), np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]
        img[(xx - px) ** 2 + (yy - py) ** 2 <= 6.0 ** 2] = 255
        chip, _ = align_similarity(img, points, template, size)
        weight = chip[:, :, 0].astype(float)
        cy, cx = np.mgrid[0:size, 0:size]
        centroid = np.array([(cx * weight).sum(), (cy * weight).sum()]) / weight.sum()
        np.testing.assert_allclose(centroid, template[k], atol=0.2)


def test_crop_matches_facenet_pytorch_extract_face():
    from facenet_pytorch.models.utils.detect_face import extract_face

    jpgs = sorted((FIXTURES / "lfw").rglob("*.jpg"))
    if not jpgs:
        pytest.skip("no LFW fixture images")
    pil = Image.open(jpgs[0]).convert("RGB")
    box = np.array([70.3, 60.8, 180.1, 190.6])
    ours = align_crop(np.asarray(pil), box, 160, 14)
    theirs = extract_face(pil, box, image_size=160, margin=14)  # float CHW 0..255
    np.testing.assert_array_equal(ours, theirs.permute(1, 2, 0).numpy().astype(np.uint8))
    assert crop_box(box, (250, 250), 160, 14)[0] == int(70.3 - 14 * (180.1 - 70.3) / 146 / 2)


def test_scaled_template():
    t = scaled_template(ARCFACE_TEMPLATE, 112, 224)
    np.testing.assert_allclose(t, ARCFACE_TEMPLATE * 2)
    t = scaled_template(ARCFACE_TEMPLATE, 112, 160, margin=0.1)
    assert t.min() > 16 and t.max() < 144
