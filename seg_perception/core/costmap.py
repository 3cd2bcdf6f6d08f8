"""Label image -> ground-plane grids by inverse perspective mapping (IPM), ROS-free.

Every grid cell centre on the ground (z = 0 in the robot frame) is projected into the camera through the camera
model (intrinsics and lens distortion) and the camera pose; the resulting ground remap table (cell -> label pixel)
is kept per (camera model, label shape) and re-aimed in its own buffers when the pose changes, so a frame costs
one gather per layer (plus about a millisecond on a 200x200 grid when the camera moved, more through a lens).
Cells the camera cannot see stay -1.

Flat-ground assumption: everything is treated as lying on z = 0, so tall objects smear away from the camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from seg_perception.core.camera_model import CameraModel, scaled_intrinsics
from seg_perception.labels import IGNORE_ID

UNKNOWN, FREE, LETHAL = -1, 0, 100  # nav_msgs/OccupancyGrid conventions
FUSED = ""  # key of the fused layer in project()'s result


def layer_topic(name: str) -> str:
    """seg_node's topic for a costmap layer (relative); bag evaluation writes the same names, so viewers carry over."""
    return "semantic_costmap" if name == FUSED else "semantic_costmap/" + name.replace(" ", "_")


@dataclass(frozen=True)
class CameraPose:
    """Camera optical centre in the grid frame (x forward, y left, z up), angles in radians.

    pitch > 0 tilts the camera down, yaw > 0 turns it left, roll > 0 rotates it clockwise as seen from behind.
    """

    x: float = 0.0
    y: float = 0.0
    height: float = 1.2
    roll: float = 0.0
    pitch: float = 0.0
    yaw: float = 0.0


@dataclass(frozen=True)
class GridSpec:
    """An OccupancyGrid's geometry: cell (row r, col c) has its centre at
    (origin_x + (c + 0.5) * resolution, origin_y + (r + 0.5) * resolution) in `frame`."""

    resolution: float = 0.1
    size_x: float = 20.0  # metres along x (grid width)
    size_y: float = 20.0  # metres along y (grid height)
    origin_x: float = 0.0
    origin_y: float = -10.0
    frame: str = "base_link"
    max_range: float = 0.0  # cells farther than this from the camera stay unknown (0 = no limit)
    # Fraction of image rows, from the bottom, that never reach the grid: the ego hood or bumper is no obstacle.
    ignore_bottom: float = 0.0

    @property
    def width(self) -> int:
        return max(1, int(round(self.size_x / self.resolution)))

    @property
    def height(self) -> int:
        return max(1, int(round(self.size_y / self.resolution)))

    def cell_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """x of each column's cell centres [width] and y of each row's [height], float64."""
        return (self.origin_x + (np.arange(self.width) + 0.5) * self.resolution,
                self.origin_y + (np.arange(self.height) + 0.5) * self.resolution)

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """x and y of every cell centre, each [height, width] float64."""
        return np.meshgrid(*self.cell_axes())


# Optical frame (x right, y down, z forward) -> camera body frame (x forward, y left, z up), REP 103.
BODY_FROM_OPTICAL = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)


def rotation_grid_from_optical(pose: CameraPose) -> np.ndarray:
    """3x3 rotation taking optical-frame vectors (x right, y down, z forward) into the grid frame."""
    cr, sr = math.cos(pose.roll), math.sin(pose.roll)
    cp, sp = math.cos(pose.pitch), math.sin(pose.pitch)
    cy, sy = math.cos(pose.yaw), math.sin(pose.yaw)
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx @ BODY_FROM_OPTICAL


def cost_lut(class_names: tuple[str, ...] | list[str], costs: dict[str, int], default_cost: int) -> np.ndarray:
    """int8[256]: the cost of every label value; ignore and out-of-model values are unknown (-1)."""
    unknown = sorted(set(costs) - set(class_names))
    if unknown:
        raise ValueError(f"unknown class name(s) {unknown}; the model's classes are {list(class_names)}")
    for name, cost in list(costs.items()) + [("default", default_cost)]:
        if not UNKNOWN <= cost <= LETHAL:
            raise ValueError(f"cost of '{name}' must be in -1..100, got {cost}")
    lut = np.full(256, UNKNOWN, np.int8)
    lut[: len(class_names)] = [costs.get(name, default_cost) for name in class_names]
    lut[IGNORE_ID] = UNKNOWN
    return lut


def class_lut(class_names: tuple[str, ...] | list[str], name: str) -> np.ndarray:
    """int8[256] for one class layer: LETHAL where the class is seen, FREE for other classes, unknown for ignore."""
    if name not in class_names:
        raise ValueError(f"unknown class name '{name}'; the model's classes are {list(class_names)}")
    lut = np.full(256, UNKNOWN, np.int8)
    lut[: len(class_names)] = FREE
    lut[list(class_names).index(name)] = LETHAL
    return lut


class GroundProjector:
    """Projects label images onto a ground grid: one fused layer through a cost table plus one layer per class.

    Layers are keyed by '' (fused) and the class name. The returned grids are int8 [height, width] buffers that
    are reused: valid until the next `project` call.
    """

    def __init__(self, grid: GridSpec, pose: CameraPose, class_names: tuple[str, ...] | list[str],
                 costs: dict[str, int], default_cost: int = 0, layers: tuple[str, ...] | list[str] = ()) -> None:
        self.grid = grid
        self._luts = {FUSED: cost_lut(class_names, costs, default_cost)}
        for name in layers:
            self._luts[name] = class_lut(class_names, name)
        self._grids = {name: np.full((grid.height, grid.width), UNKNOWN, np.int8) for name in self._luts}
        self._pose = pose
        # replaced as one object: CameraInfo may arrive on another thread
        self._intrinsics: CameraModel | None = None
        self._table_key: tuple | None = None  # (camera model, camera size, label size) of self._table
        self._table: GroundRemapTable | None = None
        self._table_pose: CameraPose | None = None  # the pose self._table is aimed with
        self._grids_stale = False  # the table was re-aimed since `project` last drew: cells may have left the view
        self._picked = np.empty(grid.height * grid.width, np.uint8)  # per visible cell: its label, its cost
        self._costs = np.empty(grid.height * grid.width, np.int8)

    @property
    def ready(self) -> bool:
        """False until intrinsics are known."""
        return self._intrinsics is not None

    @property
    def camera(self) -> CameraModel | None:
        """The camera model in use (None until intrinsics are known)."""
        return self._intrinsics

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self._luts)

    @property
    def pose(self) -> CameraPose:
        return self._pose

    def set_pose(self, pose: CameraPose) -> None:
        self._pose = pose  # the table is re-aimed on the next frame

    def set_intrinsics(self, k: np.ndarray, camera_hw: tuple[int, int], distortion_model: str = "",
                       d=()) -> None:
        """K (3x3) of an image of size camera_hw and its lens distortion (CameraInfo's names; none by default);
        cheap when unchanged, so it can be called on every CameraInfo."""
        self.set_camera(CameraModel(k, camera_hw, distortion_model, d))

    def set_camera(self, camera: CameraModel) -> None:
        """The camera model of the images; tables are rebuilt only when it differs from the last one."""
        if self._intrinsics is None or self._intrinsics.key != camera.key:
            self._intrinsics = camera

    def project(self, labels: np.ndarray, camera_hw: tuple[int, int]) -> dict[str, np.ndarray]:
        """labels: uint8 [h, w] covering the whole camera image of size camera_hw (any resolution)."""
        intrinsics = self._intrinsics
        if intrinsics is None:
            return {}
        table = self._ensure_table(intrinsics, labels.shape, tuple(camera_hw))
        if self._grids_stale:  # cleared here, not on re-aim: depth-built costmaps re-aim without drawing these
            for grid in self._grids.values():
                grid.fill(UNKNOWN)
            self._grids_stale = False
        picked, costs = self._picked[: table.cells.size], self._costs[: table.cells.size]
        np.take(labels.reshape(-1), table.pixels, out=picked)
        for name, lut in self._luts.items():
            np.take(lut, picked, out=costs)
            np.put(self._grids[name].reshape(-1), table.cells, costs)
        return self._grids

    # --- ground remap table ------------------------------------------------------------------
    def _ensure_table(self, camera: CameraModel, labels_hw: tuple[int, int],
                      camera_hw: tuple[int, int]) -> GroundRemapTable:
        key = (camera.key, camera_hw, labels_hw)
        if key != self._table_key:
            self._table = GroundRemapTable(self.grid, camera, camera_hw, labels_hw)
            self._table_key, self._table_pose = key, None
        if self._pose != self._table_pose:
            self._table.aim(self._pose)
            self._table_pose = self._pose
            self._grids_stale = True
        return self._table


def same_aspect(k_hw: tuple[int, int], image_hw: tuple[int, int], tolerance: float = 0.01) -> bool:
    """True when an image_hw image shows the same view as a k_hw one at another resolution (scaled or binned)."""
    return abs(k_hw[0] * image_hw[1] - k_hw[1] * image_hw[0]) <= tolerance * k_hw[0] * image_hw[1]


class GroundRemapTable:
    """The flat-ground table of one (grid, camera model, image sizes): `cells` (visible cells, indices into the
    flattened grid) and `pixels` (the flat label-pixel index each shows). `aim(pose)` recomputes them for a pose in
    buffers sized for the whole grid, allocating nothing without distortion (a distorted lens projects the cell
    centres through OpenCV); both are views valid until the next `aim`."""

    def __init__(self, grid: GridSpec, camera: CameraModel, camera_hw: tuple[int, int],
                 labels_hw: tuple[int, int]) -> None:
        self.grid, self.camera, self.camera_hw, self.labels_hw = grid, camera, camera_hw, labels_hw
        # Intrinsics may describe another image size than the stream (binning, resized camera_info).
        self.fx, self.fy, self.cx, self.cy = scaled_intrinsics(camera.k, camera.hw, camera_hw)
        self._xs, self._ys = grid.cell_axes()
        n = grid.height * grid.width
        self._ids = np.arange(n, dtype=np.intp)
        # A cell centre in the optical frame is a term of its column plus a term of its row (R^T (P - t) with P on
        # z = 0), so each axis is one broadcast sum over the grid: x, y, z, then the label column, row and index.
        self._column_terms, self._row_terms = np.empty((3, grid.width)), np.empty((3, grid.height))
        self._x, self._y, self._z = (np.empty((grid.height, grid.width)) for _ in range(3))
        self._visible, self._test = np.empty((grid.height, grid.width), bool), np.empty((grid.height, grid.width), bool)
        self._cells, self._pixels, self._pixel_values = np.empty(n, np.intp), np.empty(n, np.intp), np.empty(n)
        self.cells = self.pixels = self._cells[:0]

    def aim(self, pose: CameraPose) -> None:
        (lh, lw), (ch, cw), grid = self.labels_hw, self.camera_hw, self.grid
        x, y, z, visible, test = self._x, self._y, self._z, self._visible, self._test
        rotation = rotation_grid_from_optical(pose)
        np.multiply(rotation[0][:, None], self._xs - pose.x, out=self._column_terms)
        np.multiply(rotation[1][:, None], self._ys - pose.y, out=self._row_terms)
        self._row_terms -= pose.height * rotation[2][:, None]
        for column_term, row_term, out in zip(self._column_terms, self._row_terms, (x, y, z)):
            np.add(row_term[:, None], column_term, out=out)
        np.greater(z, 1e-6, out=visible)  # in front of the camera
        np.logical_not(visible, out=test)
        np.copyto(z, 1.0, where=test)
        if self.camera.distorted:
            self._distort(x, y, z, visible, test)
        # Pixel centres sit at integer coordinates; map camera pixels onto the label grid.
        for out, f, c, label_size, camera_size in ((x, self.fx, self.cx, lw, cw), (y, self.fy, self.cy, lh, ch)):
            if not self.camera.distorted:
                out *= f
                out /= z
                out += c
            out += 0.5
            out *= label_size
            out /= camera_size
            np.floor(out, out=out)  # x: the label column, y: the label row
        for values, op, bound in ((x, np.greater_equal, 0), (x, np.less, lw), (y, np.greater_equal, 0),
                                  (y, np.less, lh * (1 - grid.ignore_bottom))):
            op(values, bound, out=test)
            visible &= test
        if grid.max_range > 0:
            np.hypot((self._ys - pose.y)[:, None], self._xs - pose.x, out=z)
            np.less_equal(z, grid.max_range, out=test)
            visible &= test
        m = int(np.count_nonzero(visible))
        self.cells, self.pixels, values = self._cells[:m], self._pixels[:m], self._pixel_values[:m]
        np.compress(visible.reshape(-1), self._ids, out=self.cells)
        y *= lw
        y += x
        np.compress(visible.reshape(-1), y.reshape(-1), out=values)
        np.copyto(self.pixels, values, casting="unsafe")

    def _distort(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, visible: np.ndarray, test: np.ndarray) -> None:
        """x, y (optical frame, per cell) -> the camera pixel the lens shows each at, for the visible cells only
        (OpenCV's projection is most of a re-aim); cells too far off the axis for the lens model to hold (past the
        image border's widest ray) are left invisible."""
        x /= z
        y /= z
        np.hypot(x, y, out=z)
        np.less_equal(z, self.camera.max_radius * 1.01, out=test)
        visible &= test
        seen = np.flatnonzero(visible)
        points = np.ones((seen.size, 3))
        np.take(x, seen, out=points[:, 0])
        np.take(y, seen, out=points[:, 1])
        pixels = self.camera.project(points, self.camera_hw)
        x.put(seen, pixels[:, 0])
        y.put(seen, pixels[:, 1])


def ground_remap_table(grid: GridSpec, pose: CameraPose, camera: CameraModel, camera_hw: tuple[int, int],
                       labels_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(visible cell indices into the flattened grid, flat label-pixel index for each of them) for one pose."""
    table = GroundRemapTable(grid, camera, camera_hw, labels_hw)
    table.aim(pose)
    return table.cells, table.pixels
