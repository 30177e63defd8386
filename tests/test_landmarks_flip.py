"""Horizontal flip on a hand-made 10x8 image: points move with the pixels and keep their
left/right names; plus the target box and detection choice helpers.

Pixel convention (rcnn_data.py): pixel column c covers [c, c+1), so an image W wide spans [0, W] and a
flip maps x -> W - x; the pixel at column c moves to column W-1-c, whose centre W-1-c+0.5 is
W - (c+0.5).
"""

import numpy as np

from faceprobe.landmarks.rcnn import choose_detection
from faceprobe.landmarks.rcnn_data import box_from_points, hflip, hflip_targets

W, H = 10, 8
# left_eye, right_eye, nose, mouth_left, mouth_right at pixel centres
POINTS = np.array([[2.5, 2.5], [6.5, 2.5], [4.5, 4.5], [3.5, 6.5], [5.5, 6.5]], np.float32)


def test_hand_made_flip_moves_points_with_pixels_and_swaps_names():
    img = np.zeros((H, W, 3), np.uint8)
    for k, (x, y) in enumerate(POINTS):
        img[int(y), int(x)] = 50 * (k + 1)  # a distinct colour per point
    box = np.array([[1.0, 1.0, 8.0, 7.0]], np.float32)
    fimg, fbox, fpts = hflip(img, box, POINTS[None])
    fpts = fpts[0]
    expected = np.array([[3.5, 2.5], [7.5, 2.5], [5.5, 4.5], [4.5, 6.5], [6.5, 6.5]])
    assert np.array_equal(fpts, expected)
    assert np.array_equal(fbox, [[2.0, 1.0, 9.0, 7.0]])  # W - x2, y1, W - x1, y2
    assert fimg.shape == img.shape and fimg.flags.c_contiguous
    # each point's pixel in the flipped image carries the colour of its mirror name's pixel
    swap = [1, 0, 2, 4, 3]
    for k, (x, y) in enumerate(fpts):
        assert fimg[int(y), int(x), 0] == 50 * (swap[k] + 1)
    # names stay image-left first: left_eye is still the eye on the image's left
    assert fpts[0, 0] < fpts[1, 0] and fpts[3, 0] < fpts[4, 0]
    # flipping twice is the identity
    _, b2, p2 = hflip(fimg, fbox, fpts[None])
    assert np.array_equal(p2[0], POINTS) and np.array_equal(b2, box)


def test_flip_targets_do_not_modify_inputs():
    pts, box = POINTS[None].copy(), np.array([[1.0, 1.0, 8.0, 7.0]], np.float32)
    hflip_targets(box, pts, W)
    assert np.array_equal(pts[0], POINTS) and box[0, 0] == 1.0


def test_box_from_points_contains_the_points_with_margin():
    b = box_from_points(POINTS)
    assert b[0] < POINTS[:, 0].min() and b[2] > POINTS[:, 0].max()
    assert b[1] < POINTS[:, 1].min() and b[3] > POINTS[:, 1].max()
    assert POINTS[:, 1].min() - b[1] > b[3] - POINTS[:, 1].max()  # forehead above the eyes


def test_choose_detection_prefers_the_stored_box_then_the_score():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.4], np.float32)
    assert choose_detection(boxes, scores, None) == 0
    assert choose_detection(boxes, scores, np.array([49, 49, 61, 61])) == 1
    assert choose_detection(boxes, scores, np.array([200, 200, 210, 210])) == 0  # no overlap
    assert choose_detection(boxes, scores, np.full(4, np.nan)) == 0
    assert choose_detection(np.zeros((0, 4)), np.zeros(0), None) is None
