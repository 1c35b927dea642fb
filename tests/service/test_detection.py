"""Face selection policies and NMS."""

from __future__ import annotations

import numpy as np

from service.vision.detection import Face, FacePolicy, nms, select_faces


def face(x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> Face:
    return Face(
        box=np.array([x1, y1, x2, y2], np.float32),
        score=score,
        landmarks=np.zeros((5, 2), np.float32),
    )


BIG_CORNER = face(0, 0, 100, 100)
SMALL_CENTRE = face(180, 130, 220, 170)
MEDIUM = face(300, 200, 360, 260)


def test_largest_picks_the_biggest_box():
    assert select_faces([SMALL_CENTRE, BIG_CORNER, MEDIUM], FacePolicy.largest, (300, 400)) == [
        BIG_CORNER
    ]


def test_central_picks_the_face_nearest_the_centre():
    assert select_faces([BIG_CORNER, MEDIUM, SMALL_CENTRE], FacePolicy.central, (300, 400)) == [
        SMALL_CENTRE
    ]


def test_all_keeps_every_face_largest_first():
    assert select_faces([SMALL_CENTRE, MEDIUM, BIG_CORNER], FacePolicy.all, (300, 400)) == [
        BIG_CORNER,
        MEDIUM,
        SMALL_CENTRE,
    ]


def test_no_faces_selects_nothing():
    for policy in FacePolicy:
        assert select_faces([], policy, (10, 10)) == []


def test_nms_suppresses_overlaps_and_keeps_best_first():
    boxes = np.array(
        [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], np.float32
    )
    scores = np.array([0.5, 0.9, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]


def test_nms_min_mode_removes_nested_boxes():
    boxes = np.array([[0, 0, 100, 100], [10, 10, 30, 30]], np.float32)
    scores = np.array([0.9, 0.95], np.float32)
    assert nms(boxes, scores, 0.7).tolist() == [1, 0]
    assert nms(boxes, scores, 0.7, mode="min").tolist() == [1]


def test_nms_on_nothing():
    assert nms(np.empty((0, 4)), np.empty(0), 0.5).size == 0
