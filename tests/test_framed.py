"""The frame search's contour filter and OpenCV's thread setting."""

import cv2
import numpy as np
import pytest

from matchkit.util.cvthreads import opencv_threads, single_opencv_thread
from matchkit.match.framed import _boxes_at_least, frame_quads


def _edge_maps(n=40, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        g = (rng.random((90, 128)) * 255).astype(np.uint8)
        g = cv2.GaussianBlur(g, (0, 0), float(rng.uniform(0.5, 3)))
        if rng.random() < 0.5:  # a framed picture: a bright quadrilateral
            pts = np.array([[20, 10], [110, 15], [105, 80], [15, 75]]) + rng.integers(-5, 6, (4, 2))
            cv2.fillConvexPoly(g, pts.astype(np.int32), 230)
        yield cv2.dilate(cv2.Canny(g, 20, 60), np.ones((2, 2), np.uint8))


@pytest.mark.parametrize("share", [0.0, 0.02, 0.08, 0.5])
def test_boxes_at_least_equals_bounding_rects(share):
    """The vectorised filter keeps exactly the contours whose
    ``cv2.boundingRect`` covers the least area, in order."""
    seen = 0
    for edges in _edge_maps():
        contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        least = share * edges.size
        want = [n for n, c in enumerate(contours)
                if cv2.boundingRect(c)[2] * cv2.boundingRect(c)[3] >= least]
        assert _boxes_at_least(contours, least).tolist() == want
        seen += len(want)
    assert seen > 0 or share > 0.1
    assert _boxes_at_least((), 1.0).tolist() == []


def test_frame_quads_finds_a_tilted_print():
    g = np.full((90, 128), 40, np.uint8)
    quad = np.array([[20, 12], [108, 18], [100, 80], [14, 72]], np.int32)
    cv2.fillConvexPoly(g, quad, 220)
    found = frame_quads(g)
    assert found, "the bright quadrilateral is a frame"
    assert np.abs(np.sort(found[0], axis=0) - np.sort(quad, axis=0)).max() <= 3


def test_opencv_threads_restores_the_setting():
    before = cv2.getNumThreads()
    with opencv_threads(1):
        assert cv2.getNumThreads() == 1
    assert cv2.getNumThreads() == before
    with pytest.raises(RuntimeError), opencv_threads(1):
        raise RuntimeError("the block fails")
    assert cv2.getNumThreads() == before

    @single_opencv_thread
    def inside():
        return cv2.getNumThreads()

    assert inside() == 1 and cv2.getNumThreads() == before
