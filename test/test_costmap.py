"""GroundProjector: inverse perspective mapping against distances computed by hand from the camera geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seg_perception.core.camera_model import CameraModel
from seg_perception.core.costmap import (FUSED, LETHAL, UNKNOWN, CameraPose, GridSpec, GroundProjector,
                                         cost_lut, ground_remap_table)
from seg_perception.labels import CITYSCAPES_CLASSES, IGNORE_ID

ROAD, CAR = CITYSCAPES_CLASSES.index("road"), CITYSCAPES_CLASSES.index("car")
H, W = 480, 640
F = 320.0  # 90 degrees horizontal field of view at 640 px
K = np.array([[F, 0, (W - 1) / 2], [0, F, (H - 1) / 2], [0, 0, 1]])
HEIGHT, PITCH = 1.5, math.radians(15)
GRID = GridSpec(resolution=0.05, size_x=12.0, size_y=8.0, origin_x=0.0, origin_y=-4.0)


def road_below_horizon_line(hw=(H, W)) -> np.ndarray:
    """Lower half road, upper half car."""
    labels = np.full(hw, CAR, np.uint8)
    labels[hw[0] // 2:] = ROAD
    return labels


def projector(**kw) -> GroundProjector:
    proj = GroundProjector(GRID, CameraPose(height=HEIGHT, pitch=PITCH), CITYSCAPES_CLASSES,
                           {"road": 0, "car": 100}, default_cost=50, layers=kw.pop("layers", ("road", "car")))
    proj.set_intrinsics(K, (H, W))
    return proj


def centre_row(grid: np.ndarray) -> np.ndarray:
    """Cells along the camera's optical axis (y = 0)."""
    return grid[int(round(-GRID.origin_y / GRID.resolution - 0.5))]


def cell_x(col: int) -> float:
    return GRID.origin_x + (col + 0.5) * GRID.resolution


def test_road_in_lower_half_is_free_up_to_the_distance_the_geometry_gives():
    grids = projector().project(road_below_horizon_line(), (H, W))
    row = centre_row(grids[FUSED])
    # The image centre row looks down at exactly the pitch angle; the bottom row at pitch + half the vertical FOV.
    d_mid = HEIGHT / math.tan(PITCH)
    d_near = HEIGHT / math.tan(PITCH + math.atan((H / 2) / F))
    horizon = HEIGHT / math.tan(PITCH - math.atan((H / 2) / F)) if PITCH > math.atan((H / 2) / F) else math.inf
    tol = 2 * GRID.resolution
    for col, value in enumerate(row):
        x = cell_x(col)
        if x < d_near - tol:
            assert value == UNKNOWN, f"x={x:.2f} m is below the image yet has cost {value}"
        elif d_near + tol < x < d_mid - tol:
            assert value == 0, f"road at x={x:.2f} m should be free, got {value}"
        elif d_mid + tol < x < min(horizon, GRID.size_x) - tol:
            assert value == LETHAL, f"car at x={x:.2f} m should be lethal, got {value}"
    free = [cell_x(c) for c, v in enumerate(row) if v == 0]
    assert free[0] == pytest.approx(d_near, abs=tol) and free[-1] == pytest.approx(d_mid, abs=tol)


def test_per_class_layers_and_cells_outside_the_view_are_unknown():
    grids = projector().project(road_below_horizon_line(), (H, W))
    road, car, fused = grids["road"], grids["car"], grids[FUSED]
    seen = fused != UNKNOWN
    assert np.array_equal(road != UNKNOWN, seen) and np.array_equal(car != UNKNOWN, seen)
    assert np.array_equal(road == LETHAL, fused == 0)  # road cells are the free ones
    assert np.array_equal(car == LETHAL, fused == LETHAL)
    # 90 degree horizontal FOV: a ground cell is in view while |y| <= its depth along the optical axis.
    xs, ys = GRID.cell_centres()
    depth = xs * math.cos(PITCH) + HEIGHT * math.sin(PITCH)
    outside = np.abs(ys) > depth + 2 * GRID.resolution
    assert outside.any() and (fused[outside] == UNKNOWN).all()
    inside = (np.abs(ys) < depth - 2 * GRID.resolution) & (xs > 6.0)
    assert (fused[inside] != UNKNOWN).all()


def test_label_resolution_does_not_change_the_geometry():
    full = projector().project(road_below_horizon_line(), (H, W))[FUSED].copy()
    small = projector().project(road_below_horizon_line((H // 8, W // 8)), (H, W))[FUSED]
    assert np.mean(full == small) > 0.98


def test_intrinsics_for_another_image_size_are_rescaled():
    proj = projector()
    proj.set_intrinsics(K * np.array([[0.5], [0.5], [1]]) + np.array([[0, 0, -0.25], [0, 0, -0.25], [0, 0, 0]]),
                        (H // 2, W // 2))  # the same camera described at half size
    half = proj.project(road_below_horizon_line(), (H, W))[FUSED].copy()
    full = projector().project(road_below_horizon_line(), (H, W))[FUSED]
    assert np.array_equal(full, half)  # the same camera: the same table, cell for cell


def test_ignore_label_and_cost_table():
    labels = np.full((H, W), IGNORE_ID, np.uint8)
    labels[H // 2:] = CITYSCAPES_CLASSES.index("sidewalk")  # not in the table -> default cost
    grids = projector().project(labels, (H, W))
    values = set(np.unique(grids[FUSED]).tolist())
    assert values == {UNKNOWN, 50}
    assert set(np.unique(grids["road"]).tolist()) == {UNKNOWN, 0}
    with pytest.raises(ValueError, match="unknown class"):
        cost_lut(CITYSCAPES_CLASSES, {"lava": 100}, 0)
    with pytest.raises(ValueError, match="-1..100"):
        cost_lut(CITYSCAPES_CLASSES, {"road": 101}, 0)


def test_pose_yaw_and_offset_move_the_view():
    proj = projector()
    proj.set_pose(CameraPose(height=HEIGHT, pitch=PITCH, yaw=math.radians(90)))  # looking left (+y)
    left = proj.project(road_below_horizon_line(), (H, W))[FUSED]
    xs, ys = GRID.cell_centres()
    seen = left != UNKNOWN
    assert seen.any() and (ys[seen] > 0).all()
    # Camera 2 m ahead of base_link: the near edge of the view moves 2 m forward.
    cells, _ = ground_remap_table(GRID, CameraPose(x=2.0, height=HEIGHT, pitch=PITCH), CameraModel(K, (H, W)), (H, W),
                                  (H, W))
    d_near = HEIGHT / math.tan(PITCH + math.atan((H / 2) / F))
    assert xs.ravel()[cells].min() == pytest.approx(2.0 + d_near, abs=0.15)


def test_max_range_and_no_intrinsics():
    grid = GridSpec(resolution=0.05, size_x=12.0, size_y=8.0, origin_x=0.0, origin_y=-4.0, max_range=6.0)
    proj = GroundProjector(grid, CameraPose(height=HEIGHT, pitch=PITCH), CITYSCAPES_CLASSES, {}, 0)
    assert proj.project(road_below_horizon_line(), (H, W)) == {}  # no intrinsics yet
    proj.set_intrinsics(K, (H, W))
    fused = proj.project(road_below_horizon_line(), (H, W))[FUSED]
    xs, ys = grid.cell_centres()
    assert (fused[np.hypot(xs, ys) > 6.0 + grid.resolution] == UNKNOWN).all()


def test_ignore_bottom_leaves_the_hood_rows_out_of_the_grid():
    """The bottom quarter of the image (an ego hood, labelled car) must not become a lethal band: the nearest
    cell seen is then the one the row at 3/4 of the height looks at."""
    grid = GridSpec(resolution=0.05, size_x=12.0, size_y=8.0, origin_x=0.0, origin_y=-4.0, ignore_bottom=0.25)
    proj = GroundProjector(grid, CameraPose(height=HEIGHT, pitch=PITCH), CITYSCAPES_CLASSES, {"car": 100}, 0)
    proj.set_intrinsics(K, (H, W))
    labels = np.full((H, W), ROAD, np.uint8)
    labels[3 * H // 4:] = CAR  # the hood
    row = centre_row(proj.project(labels, (H, W))[FUSED])
    assert LETHAL not in row
    seen = np.flatnonzero(row != UNKNOWN)
    d_cut = HEIGHT / math.tan(PITCH + math.atan((H / 4) / F))  # the ray through the first kept row
    assert cell_x(seen[0]) == pytest.approx(d_cut, abs=2 * GRID.resolution)


def test_remap_table_is_kept_and_reaimed_in_place():
    proj = projector()
    labels = road_below_horizon_line()
    proj.project(labels, (H, W))
    table, cells = proj._table, proj._table.cells.copy()
    proj.set_intrinsics(K.copy(), (H, W))  # same values
    proj.project(labels, (H, W))
    assert proj._table is table and np.array_equal(proj._table.cells, cells)
    moved = CameraPose(height=HEIGHT + 0.1, pitch=PITCH, yaw=0.2)
    proj.set_pose(moved)
    proj.project(labels, (H, W))
    assert proj._table is table  # re-aimed in its buffers
    want_cells, want_pixels = ground_remap_table(GRID, moved, CameraModel(K, (H, W)), (H, W), (H, W))
    assert not np.array_equal(table.cells, cells)
    assert np.array_equal(table.cells, want_cells) and np.array_equal(table.pixels, want_pixels)
    proj.set_intrinsics(K * np.array([[1.1], [1.1], [1]]), (H, W))
    proj.project(labels, (H, W))
    assert proj._table is not table
