"""GroundProjector against a projection written by hand from CameraPose's documented conventions, cell by cell.

The camera is built from its own axes (forward, right, down) rather than from rotation matrices: yaw turns
forward to the left, pitch tilts it down, roll turns the image clockwise as seen from behind (the right axis
dips towards the ground). Pixel centres sit at integer coordinates, the image edges at -0.5 and size - 0.5,
so a pixel coordinate u in an image K describes lands in label column floor((u + 0.5) * label_w / k_w),
whatever the size of the stream in between. The label pixel behind every grid cell is read back through the
public API (label images that encode their own coordinates, a cost table equal to the label), and compared
exactly: fx != fy, roll != 0, a lateral offset and non-uniform rescales, where a shift of one cell fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from seg_perception.core.costmap import FUSED, UNKNOWN, CameraPose, GridSpec, GroundProjector
from seg_perception.labels import CITYSCAPES_CLASSES

BASE = len(CITYSCAPES_CLASSES)  # label values 0..18 are the digits of a pixel coordinate
GRID = GridSpec(resolution=0.1, size_x=14.0, size_y=10.0, origin_x=-1.0, origin_y=-5.0)


def camera_axes(pose: CameraPose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """forward, right, down unit vectors in the grid frame (x forward, y left, z up)."""
    cp, sp, cy, sy = math.cos(pose.pitch), math.sin(pose.pitch), math.cos(pose.yaw), math.sin(pose.yaw)
    forward = np.array([cp * cy, cp * sy, -sp])
    right = np.array([sy, -cy, 0.0])  # level: pitch turns about this axis
    down = np.cross(forward, right)  # at pitch 0: (0, 0, -1)
    cr, sr = math.cos(pose.roll), math.sin(pose.roll)
    return forward, cr * right + sr * down, cr * down - sr * right


def hand_table(pose: CameraPose, fx: float, fy: float, cx: float, cy: float, k_hw: tuple[int, int],
               labels_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label row, label col, visible) per grid cell, [height, width] each."""
    forward, right, down = camera_axes(pose)
    xs, ys = GRID.cell_centres()
    rel = np.stack([xs - pose.x, ys - pose.y, np.full_like(xs, -pose.height)], axis=-1)
    depth = rel @ forward
    ahead = depth > 1e-6
    depth = np.where(ahead, depth, 1.0)
    u = cx + fx * (rel @ right) / depth  # in the pixels of the image K describes
    v = cy + fy * (rel @ down) / depth
    col_f = (u + 0.5) * labels_hw[1] / k_hw[1]
    row_f = (v + 0.5) * labels_hw[0] / k_hw[0]
    # the comparison is exact: no cell may sit on a pixel edge, where rounding could go either way
    near_edge = ahead & ((np.abs(col_f - np.round(col_f)) < 1e-7) | (np.abs(row_f - np.round(row_f)) < 1e-7))
    assert not near_edge.any(), "choose other numbers: a cell projects onto a pixel edge"
    col, row = np.floor(col_f), np.floor(row_f)
    visible = ahead & (col >= 0) & (col < labels_hw[1]) & (row >= 0) & (row < labels_hw[0])
    return row.astype(int), col.astype(int), visible


def projected_pixels(proj: GroundProjector, labels_hw: tuple[int, int], camera_hw: tuple[int, int]):
    """(label row, label col, seen) per cell, read back from `project` with coordinate-encoding label images."""
    h, w = labels_hw
    digits = max(1, math.ceil(math.log(max(h, w), BASE)))
    rows, cols = np.mgrid[0:h, 0:w]
    row_out, col_out, seen = np.zeros((GRID.height, GRID.width), int), np.zeros((GRID.height, GRID.width), int), None
    for k in range(digits):
        for coords, out in ((rows, row_out), (cols, col_out)):
            grid = proj.project((coords // BASE ** k % BASE).astype(np.uint8), camera_hw)[FUSED]
            seen = grid != UNKNOWN if seen is None else seen
            assert np.array_equal(seen, grid != UNKNOWN)
            out += np.where(seen, grid.astype(int), 0) * BASE ** k
    return row_out, col_out, seen


def projector(pose: CameraPose, k: np.ndarray, k_hw: tuple[int, int]) -> GroundProjector:
    costs = {name: value for value, name in enumerate(CITYSCAPES_CLASSES)}  # fused cost = label value
    proj = GroundProjector(GRID, pose, CITYSCAPES_CLASSES, costs)
    proj.set_intrinsics(k, k_hw)
    return proj


CASES = {
    # fx != fy, camera 0.7 m to the left, rolled 12 degrees, yawed a little right
    "rolled_offset": (CameraPose(x=0.4, y=0.7, height=1.37, roll=math.radians(12), pitch=math.radians(21),
                                 yaw=math.radians(-8)), (360.0, 233.0, 157.3, 121.1), (240, 320), (240, 320),
                      (240, 320)),
    # calibrated at another, non-uniform size (binning 1x2) and labels at a third one
    "rescaled": (CameraPose(x=-0.3, y=-0.45, height=1.61, roll=math.radians(-7), pitch=math.radians(17),
                            yaw=math.radians(5)), (301.7, 188.9, 161.4, 58.3), (120, 320), (240, 320), (60, 112)),
    # looking straight down: the ground maps affinely, so fx, fy and both offsets show directly
    "downward": (CameraPose(x=2.3, y=-0.9, height=2.9, roll=math.radians(33), pitch=math.radians(90)),
                 (210.0, 150.0, 80.2, 58.9), (120, 160), (120, 160), (120, 160)),
}


@pytest.mark.parametrize("case", CASES)
def test_every_cell_sees_the_label_pixel_computed_by_hand(case):
    pose, (fx, fy, cx, cy), k_hw, camera_hw, labels_hw = CASES[case]
    k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    want_row, want_col, want_seen = hand_table(pose, fx, fy, cx, cy, k_hw, labels_hw)
    assert want_seen.sum() > 500  # a real part of the grid is in view
    row, col, seen = projected_pixels(projector(pose, k, k_hw), labels_hw, camera_hw)
    assert np.array_equal(seen, want_seen), f"{np.sum(seen != want_seen)} cells differ in visibility"
    assert np.array_equal(row[seen], want_row[seen]), f"{np.sum(row[seen] != want_row[seen])} cells, wrong row"
    assert np.array_equal(col[seen], want_col[seen]), f"{np.sum(col[seen] != want_col[seen])} cells, wrong column"


def test_straight_down_view_by_closed_form():
    """Looking straight down from h without roll: a ground point dx ahead and dy to the left of the camera is at
    u = cx - fx dy / h, v = cy - fy dx / h (ahead is up in the image, left is left)."""
    h, fx, fy, cx, cy = 2.0, 200.0, 100.0, 79.73, 59.19  # off the pixel edges
    pose = CameraPose(x=3.0, y=1.0, height=h, pitch=math.radians(90))
    row, col, seen = projected_pixels(projector(pose, np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), (120, 160)),
                                      (120, 160), (120, 160))
    cells_x, cells_y = GRID.cell_centres()
    # footprint: 160 px across at fx = 200 from 2 m is 1.6 m of y; 120 px at fy = 100 is 2.4 m of x
    assert cells_y[seen].min() == pytest.approx(1.0 - 0.8 + 0.05) and cells_y[seen].max() == pytest.approx(1.75)
    assert cells_x[seen].min() == pytest.approx(3.0 - 1.2 + 0.05) and cells_x[seen].max() == pytest.approx(4.15)
    u = cx - fx * (cells_y[seen] - 1.0) / h
    v = cy - fy * (cells_x[seen] - 3.0) / h
    np.testing.assert_array_equal(col[seen], np.floor(u + 0.5))
    np.testing.assert_array_equal(row[seen], np.floor(v + 0.5))


def test_roll_turns_the_image_clockwise_as_seen_from_behind():
    """A level camera rolled right (positive roll) sees the ground rise on its right: the ground's
    projection on the left of the image starts lower than on the right."""
    pose = CameraPose(height=1.5, roll=math.radians(10), pitch=math.radians(8))
    proj = projector(pose, np.array([[200.0, 0, 79.5], [0, 200.0, 59.5], [0, 0, 1]]), (120, 160))
    row, col, seen = projected_pixels(proj, (120, 160), (120, 160))
    top = {c: row[seen & (col == c)].min() for c in (10, 150)}  # highest image row showing ground per column
    assert top[150] < top[10] - 15  # tan(10 deg) * 140 px = 25 px higher on the right
