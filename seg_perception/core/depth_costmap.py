"""Label image + registered depth image -> ground grids and a labelled point cloud, ROS-free.

Every labelled pixel is back-projected along its ray (intrinsics, lens distortion undone) to its depth and moved
into the grid frame by the camera pose. A point of an obstacle class between min and max obstacle height marks its
cell with the class's cost; a point of a ground class within min_obstacle_height of the ground marks its cell with
the ground cost.
Cells the rays cross on their way to a kept point are known free: per bearing from the camera, from the nearest
ground the image can show out to the farthest kept point (a polar sweep, not a walk along every ray).
Depth 0, NaN and inf are "no return". Pixel rays and buffers are kept per (camera model, sizes); a new camera pose
re-aims the rays, bearings and the grid's polar table in place, so a frame costs a few passes over the samples into
reused buffers, and a few more when the camera moved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from seg_perception.core.camera_model import CameraModel, scaled_intrinsics
from seg_perception.core.costmap import (FREE, UNKNOWN, CameraPose, GridSpec, GroundProjector,
                                         rotation_grid_from_optical, same_aspect)
from seg_perception.core.image_codec import MAX_PIXELS, check_pixels

# sensor_msgs/image_encodings names of depth images -> (little-endian sample type, metres per unit)
DEPTH_ENCODINGS: dict[str, tuple[str, float]] = {"16UC1": ("<u2", 0.001), "32FC1": ("<f4", 1.0)}
MM = np.float32(0.001)  # metres per unit of a uint16 depth image
# A labelled point as sensor_msgs/PointCloud2 lays it out: x, y, z float32, label, confidence uint8, 16 bytes.
POINT_DTYPE = np.dtype({"names": ["x", "y", "z", "label", "confidence"],
                        "formats": ["<f4", "<f4", "<f4", "u1", "u1"], "offsets": [0, 4, 8, 12, 13],
                        "itemsize": 16})


class DepthError(ValueError):
    """The depth image cannot be used for this frame; the text says why, in one line."""


@dataclass(frozen=True)
class DepthSpec:
    """Which points mark cells: obstacle classes in a height band, ground classes near the ground (metres)."""

    min_obstacle_height: float = 0.1
    max_obstacle_height: float = 2.0
    ground_classes: tuple[str, ...] = ("road", "sidewalk", "terrain")
    # A frame takes the depth image nearest its stamp within this (s): seg_node and bag evaluation pair alike.
    pairing_tolerance_s: float = 0.02

    def __post_init__(self) -> None:
        if not 0 <= self.min_obstacle_height < self.max_obstacle_height:
            raise ValueError(f"need 0 <= min_obstacle_height < max_obstacle_height, got "
                             f"{self.min_obstacle_height}, {self.max_obstacle_height}")


class DepthDecoder:
    """Depth image message fields -> [h, w] depth as the projector reads it: a zero-copy view of little-endian
    data without row padding (32FC1 float32 metres, 16UC1 uint16 millimetres); anything else converted into
    float32 metres in a buffer reused across frames of one size. An image of more than `max_pixels` (seg_node's
    max_input_pixels, as for colour frames) is refused from its fields before anything is allocated."""

    def __init__(self, max_pixels: int = MAX_PIXELS) -> None:
        self._metres = np.empty((0, 0), np.float32)
        self.max_pixels = max_pixels

    def decode(self, data, encoding: str, height: int, width: int, step: int, is_bigendian: int = 0) -> np.ndarray:
        spec = DEPTH_ENCODINGS.get(encoding)
        if spec is None:
            raise DepthError(f"depth encoding '{encoding}' is not one of {', '.join(DEPTH_ENCODINGS)}")
        if height <= 0 or width <= 0:
            raise DepthError(f"empty depth image: {width}x{height}")
        check_pixels(height, width, self.max_pixels, "depth image", DepthError)
        dtype = np.dtype(spec[0]).newbyteorder(">" if is_bigendian else "<")
        if step < width * dtype.itemsize:
            raise DepthError(f"depth step {step} is smaller than width*{dtype.itemsize} = {width * dtype.itemsize}")
        buf = np.frombuffer(data, np.uint8)
        if buf.size != step * height:
            raise DepthError(f"depth data holds {buf.size} bytes, expected step*height = {step * height}")
        values = buf.reshape(height, step)[:, : width * dtype.itemsize].view(dtype)
        if dtype.isnative and values.flags.c_contiguous:
            return values
        if self._metres.shape != (height, width):
            self._metres = np.empty((height, width), np.float32)
        np.multiply(values, np.float32(spec[1]), out=self._metres, casting="unsafe")
        return self._metres


def gather_metres(depth: np.ndarray, index: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """out = depth.flat[index] in metres, for float32 metres or uint16 millimetres (scratch: uint16 like out)."""
    if depth.dtype == np.uint16:
        np.take(depth.reshape(-1), index, out=scratch)
        np.multiply(scratch, MM, out=out)
    elif depth.dtype == np.float32:
        np.take(depth.reshape(-1), index, out=out)
    else:
        raise DepthError(f"depth must be float32 metres or uint16 millimetres, got {depth.dtype}")


def check_registered(camera_hw: tuple[int, int], depth_hw: tuple[int, int]) -> None:
    """Refuse a depth image that is not the colour image's view at some resolution (1 % aspect tolerance)."""
    if not same_aspect(camera_hw, depth_hw):
        raise DepthError(f"depth image {depth_hw[1]}x{depth_hw[0]} has another aspect ratio than the "
                         f"{camera_hw[1]}x{camera_hw[0]} colour image: it is not registered to it")


def nearest_source_pixels(source_hw: tuple[int, int], size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols), intp: the source row and column that cv2.resize(..., INTER_NEAREST) reads for each output row
    and column when it resizes a uint8 image of source_hw to size_hw. Taken from OpenCV itself (the indices' bytes
    resized as uint8 images), so it is what the resize does on this platform, not a re-derivation of its rounding."""
    (sh, sw), (h, w) = source_hw, size_hw
    row_bytes = np.arange(sh, dtype="<u4").view(np.uint8).reshape(sh, 4)  # one source row per image row
    col_bytes = np.ascontiguousarray(np.arange(sw, dtype="<u4").view(np.uint8).reshape(sw, 4).T)  # per column
    rows = cv2.resize(row_bytes, (4, h), interpolation=cv2.INTER_NEAREST)
    cols = np.ascontiguousarray(cv2.resize(col_bytes, (w, 4), interpolation=cv2.INTER_NEAREST).T)
    return rows.view("<u4").ravel().astype(np.intp), cols.view("<u4").ravel().astype(np.intp)


class _Samples:
    """Pixels of a label grid (every `stride`-th) with the depth pixel each reads and that depth pixel's ray.

    The depth pixel is the one nearest the label pixel's centre; its ray (optical frame, z = 1) goes through its
    own centre, so a correct depth gives an exact point wherever the label is right. A ray is (ray_x, ray_y, 1):
    without distortion ray_x is [1, cols] and ray_y [rows, 1] (they broadcast), through a lens both are
    [rows, cols]. `source_hw`: the size of the
    array the labels are read from when it is not the label grid itself: each sample then reads the pixel a
    nearest-neighbour resize to labels_hw would have put there."""

    def __init__(self, camera: CameraModel, camera_hw: tuple[int, int],
                 labels_hw: tuple[int, int], depth_hw: tuple[int, int], stride: int,
                 source_hw: tuple[int, int] | None = None) -> None:
        check_registered(camera_hw, depth_hw)
        (lh, lw), (dh, dw) = labels_hw, depth_hw
        rows, cols = np.arange(0, lh, stride), np.arange(0, lw, stride)
        self.shape = (rows.size, cols.size)
        if source_hw is None or tuple(source_hw) == tuple(labels_hw):
            self.label_index = (rows[:, None] * lw + cols[None, :]).ravel().astype(np.intp)
        else:
            src_rows, src_cols = nearest_source_pixels(source_hw, labels_hw)
            self.label_index = (src_rows[rows, None] * source_hw[1] + src_cols[None, cols]).ravel()
        self.label_row = np.repeat(rows, cols.size)
        # label pixel centre -> nearest depth pixel (pixel centres at integer coordinates)
        drow = np.clip(np.round((rows + 0.5) * dh / lh - 0.5), 0, dh - 1).astype(np.intp)
        dcol = np.clip(np.round((cols + 0.5) * dw / lw - 0.5), 0, dw - 1).astype(np.intp)
        self.depth_index = (drow[:, None] * dw + dcol[None, :]).ravel()
        if camera.distorted:  # rays of the depth image's pixels, undistorted
            pixels = np.stack(np.broadcast_arrays(dcol[None, :], drow[:, None]), -1).reshape(-1, 2)
            rays = camera.rays(pixels, depth_hw).astype(np.float32).reshape(self.shape + (2,))
            self.ray_x, self.ray_y = np.ascontiguousarray(rays[..., 0]), np.ascontiguousarray(rays[..., 1])
        else:  # a sample's ray is (ray_x of its column, ray_y of its row, 1)
            fx, fy, cx, cy = scaled_intrinsics(camera.k, camera.hw, depth_hw)  # of the depth image
            self.ray_x = ((dcol - cx) / fx).astype(np.float32)[None, :]
            self.ray_y = ((drow - cy) / fy).astype(np.float32)[:, None]

    @property
    def size(self) -> int:
        return self.label_index.size


def _far_corner(grid: GridSpec, pose: CameraPose) -> float:
    """Horizontal distance (m) from the camera to the grid's farthest corner."""
    return max(math.hypot(x - pose.x, y - pose.y) for x in (grid.origin_x, grid.origin_x + grid.size_x)
               for y in (grid.origin_y, grid.origin_y + grid.size_y))


def _focal_labels(camera: CameraModel, labels_hw: tuple[int, int]) -> float:
    """Label pixels per unit of tan(angle)."""
    return camera.k[0, 0] * labels_hw[1] / camera.hw[1]


class _DepthGeometry:
    """What project_depth needs besides the frame, and its reused buffers. Built once per (camera model, sizes,
    grid, stride): the samples, their optical-frame rays, the cell centres; `aim` then rewrites in place, with no
    allocation, what the camera pose changes: the rays in the grid frame, the camera's cell, the bearings, the
    polar table and the flat-ground table's samples. A geometry aimed at a pose holds exactly what one built for
    that pose from scratch holds.

    Samples are every `stride`-th label pixel, no denser than half a cell at the grid's far corner (`stride_for`;
    a pose that changes it needs a new geometry). Points are computed straight in cell units of a grid with a
    one-cell border, so a point off the grid lands on the border after a clip, and a sample that marks nothing is
    sent to the corner cell 0: marking needs no compaction."""

    def __init__(self, camera: CameraModel, camera_hw: tuple[int, int],
                 labels_hw: tuple[int, int], depth_hw: tuple[int, int], grid: GridSpec, stride: int) -> None:
        self.grid, self.labels_hw, self.stride = grid, labels_hw, stride
        self.focal_labels = _focal_labels(camera, labels_hw)
        samples = self.samples = _Samples(camera, camera_hw, labels_hw, depth_hw, stride)
        n, n_cells = samples.size, grid.height * grid.width
        self.allowed = samples.label_row < labels_hw[0] * (1 - grid.ignore_bottom)  # the hood rows never mark
        self.width, self.height = grid.width + 2, grid.height + 2  # with the border
        # per sample: its ray in the grid frame, per metre of depth. R @ (ray_x, ray_y, 1) is an x term plus a y
        # term; without distortion they are a column's and a row's: two small products and one pass per axis.
        self._ray_x, self._ray_y = samples.ray_x.astype(np.float64), samples.ray_y.astype(np.float64)
        self._column_term, self._row_term = np.empty((3,) + self._ray_x.shape), np.empty((3,) + self._ray_y.shape)
        self._direction = np.empty((3, n), np.float32)
        self.z_per_metre = self._direction[2]
        self.col_per_metre, self.row_per_metre, self.reach_per_metre = (np.empty(n, np.float32) for _ in range(3))
        self.sample_bin = np.empty(n, np.intp)
        # per cell: where it lies from the camera (x of its column, y of its row)
        self._xs, self._ys = grid.cell_axes()
        self._cell_angle = np.empty((grid.height, grid.width))
        self.cell_bin, self.cell_range = np.empty(n_cells, np.intp), np.empty(n_cells, np.float32)
        self.cell_near = np.empty(n_cells, np.float32)
        self._cells_from: tuple | None = None  # (x, y, bins) that cell_bin and cell_range are for
        # per flat-ground table entry (at most every cell), viewed at the table's length by `aim`
        self._table_sample, self._table_cell, self._table_scratch = (np.empty(n_cells, np.intp) for _ in range(3))
        self._table_capacity = {"table_off": np.empty(n_cells, bool), "table_label": np.empty(n_cells, np.uint8),
                                "table_costs": np.empty(n_cells, np.int8), "table_marks": np.empty(n_cells, np.intp)}
        self.bins = 0
        self._near = self._farthest = np.empty(0, np.float32)  # per bearing bin, grown when a pose needs more
        self.buffers = {**{name: np.empty(n, np.float32) for name in ("d", "z", "tmp", "reach")},
                        **{name: np.empty(n, bool) for name in ("keep", "mark", "ground", "obstacle", "band")},
                        "label": np.empty(n, np.uint8), "costs": np.empty(n, np.int8), "mm": np.empty(n, np.uint16),
                        "col": np.empty(n, np.intp), "row": np.empty(n, np.intp), "cell": np.empty(n, np.intp),
                        "cell_reach": np.empty(n_cells, np.float32), "seen": np.empty(n_cells, bool),
                        "cell_mark": np.empty(n_cells, bool)}

    @staticmethod
    def stride_for(focal_labels: float, grid: GridSpec, far: float) -> int:
        """far: the pose's `_far_corner`."""
        return max(1, int(0.5 * grid.resolution * focal_labels / max(far, grid.resolution)))

    def aim(self, pose: CameraPose, far: float, table_cells: np.ndarray, table_pixels: np.ndarray) -> None:
        """Rewrite everything the pose changes; far: its `_far_corner`; table_*: the flat-ground table for it."""
        grid, resolution = self.grid, np.float32(self.grid.resolution)
        rotation = rotation_grid_from_optical(pose)
        np.multiply(rotation[:, :1, None], self._ray_x, out=self._column_term)
        np.multiply(rotation[:, 1:2, None], self._ray_y, out=self._row_term)
        self._row_term += rotation[:, 2:, None]
        for column_term, row_term, out in zip(self._column_term, self._row_term, self._direction):
            # summed in float64, rounded once into float32
            np.add(row_term, column_term, out=out.reshape(self.samples.shape), casting="same_kind")
        dx, dy, dz = self._direction
        np.divide(dx, resolution, out=self.col_per_metre)
        np.divide(dy, resolution, out=self.row_per_metre)
        self.col_at_camera = np.float32((pose.x - grid.origin_x) / grid.resolution + 1)
        self.row_at_camera = np.float32((pose.y - grid.origin_y) / grid.resolution + 1)
        self.camera_z = np.float32(pose.height)
        np.hypot(dx, dy, out=self.reach_per_metre)  # horizontal distance travelled per metre of depth
        # polar table: bearing bins no narrower than a cell at the far corner and wide enough for a sample column
        bin_width = max(grid.resolution / max(far, grid.resolution), 1.5 * self.stride / max(self.focal_labels, 1e-6))
        self.bins = int(math.ceil(2 * math.pi / bin_width))
        if self.bins > self._near.size:
            self._near, self._farthest = np.empty(2 * self.bins, np.float32), np.empty(2 * self.bins, np.float32)
        self.buffers["farthest"] = self._farthest[: self.bins]
        # (the frame's scratch buffers serve here too: fewer buffers stay warmer in the cache)
        angle, ground_reach, down = self.buffers["tmp"], self.buffers["z"], self.buffers["mark"]
        np.arctan2(dy, dx, out=angle)
        self._bin(angle, self.sample_bin)
        # the nearest ground each bearing can show: rays that point down meet z = 0 at this horizontal range
        np.less(dz, -1e-6, out=down)
        down &= self.allowed
        np.negative(dz, out=ground_reach)
        np.maximum(ground_reach, 1e-6, out=ground_reach)  # rays that do not point down: set to inf below
        np.divide(float(pose.height), ground_reach, out=ground_reach)
        ground_reach *= self.reach_per_metre
        np.logical_not(down, out=down)
        np.copyto(ground_reach, np.inf, where=down)
        near = self._near[: self.bins]
        near.fill(np.inf)
        np.minimum.at(near, self.sample_bin, ground_reach)
        if self._cells_from != (pose.x, pose.y, self.bins):  # a camera that only turns keeps these
            rel_x, rel_y = self._xs - pose.x, (self._ys - pose.y)[:, None]
            np.arctan2(rel_y, rel_x, out=self._cell_angle)
            self._bin(self._cell_angle, self.cell_bin.reshape(self._cell_angle.shape))
            np.hypot(rel_x, rel_y, out=self._cell_angle)
            np.copyto(self.cell_range.reshape(self._cell_angle.shape), self._cell_angle, casting="same_kind")
            self._cells_from = (pose.x, pose.y, self.bins)
        np.take(near, self.cell_bin, out=self.cell_near)
        # the flat-ground table's cells (bordered index) and the sample nearest each one's label pixel
        m, stride, (n_rows, n_cols) = table_cells.size, self.stride, self.samples.shape
        sample, cell, scratch = self._table_sample[:m], self._table_cell[:m], self._table_scratch[:m]
        np.divmod(table_pixels, self.labels_hw[1], out=(sample, scratch))  # label row, column
        for values, last in ((sample, n_rows - 1), (scratch, n_cols - 1)):
            values //= stride
            np.minimum(values, last, out=values)
        sample *= n_cols
        sample += scratch
        np.divmod(table_cells, grid.width, out=(cell, scratch))  # grid row, column
        cell += 1
        cell *= self.width
        cell += scratch
        cell += 1
        self.table_sample, self.table_cell = sample, cell
        self.buffers.update({name: buffer[:m] for name, buffer in self._table_capacity.items()})

    def _bin(self, angle: np.ndarray, out: np.ndarray) -> None:
        """out = the bearing bin of each angle (radians); angle is overwritten."""
        angle += math.pi
        angle *= self.bins / (2 * math.pi)
        np.copyto(out, angle, casting="unsafe")
        np.minimum(out, self.bins - 1, out=out)


def _lut(table: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
    """out[i] = table[values[i]] for uint8 values: OpenCV's LUT, no index conversion (np.take makes intp)."""
    cv2.LUT(values, table, dst=out.view(np.uint8))


class DepthProjector(GroundProjector):
    """A GroundProjector that can also project with a registered depth image (`project_depth`) and build the
    labelled point cloud (`points`). Depth layers live in their own reused buffers, keyed like `project`'s."""

    def __init__(self, grid: GridSpec, pose: CameraPose, class_names: tuple[str, ...] | list[str],
                 costs: dict[str, int], default_cost: int = 0, layers: tuple[str, ...] | list[str] = (),
                 depth: DepthSpec = DepthSpec()) -> None:
        super().__init__(grid, pose, class_names, costs, default_cost, layers)
        unknown = sorted(set(depth.ground_classes) - set(class_names))
        if unknown:
            raise ValueError(f"unknown ground class(es) {unknown}; the model's classes are {list(class_names)}")
        self.depth = depth
        ground = [list(class_names).index(n) for n in depth.ground_classes]
        self._ground_lut = np.zeros(256, np.uint8)
        self._ground_lut[ground] = 1
        self._obstacle_lut = np.zeros(256, np.uint8)
        self._obstacle_lut[: len(class_names)] = 1
        self._obstacle_lut[ground] = 0
        self._cost_luts = {name: lut.view(np.uint8) for name, lut in self._luts.items()}
        # the layers on a grid with a one-cell border that takes the points off the grid; views of the inside
        self._depth_flat = {name: np.full((grid.height + 2) * (grid.width + 2), UNKNOWN, np.int8)
                            for name in self._luts}
        self._depth_grids = {name: flat.reshape(grid.height + 2, grid.width + 2)[1:-1, 1:-1]
                             for name, flat in self._depth_flat.items()}
        self._geometry_key: tuple | None = None  # (camera model, sizes) of self._geometry
        self._geometry_pose: CameraPose | None = None  # the pose self._geometry is aimed at
        self._cloud_key: tuple | None = None
        self.points_used = 0  # samples that marked a cell in the latest project_depth

    # --- costmaps ------------------------------------------------------------------------------
    def project_depth(self, labels: np.ndarray, camera_hw: tuple[int, int],
                      depth: np.ndarray | None) -> dict[str, np.ndarray]:
        """labels: uint8 [h, w] over the camera image of size camera_hw; depth: float32 metres or uint16
        millimetres (DepthDecoder's output) registered to the colour image (any size of the same aspect ratio), or
        None: every layer unknown for this frame.
        Raises DepthError for a depth image that does not fit the colour image. The grids are views, valid
        until the next call."""
        intrinsics = self._intrinsics
        if intrinsics is None:
            return {}
        self.points_used = 0
        if depth is None:
            for flat in self._depth_flat.values():
                flat.fill(UNKNOWN)
            return self._depth_grids
        geo = self._ensure_geometry(intrinsics, tuple(camera_hw), labels.shape, depth.shape)
        b, spec, samples = geo.buffers, self.depth, geo.samples
        d, z, tmp, reach = b["d"], b["z"], b["tmp"], b["reach"]
        keep, mark, ground, obstacle, band = b["keep"], b["mark"], b["ground"], b["obstacle"], b["band"]
        gather_metres(depth, samples.depth_index, d, b["mm"])
        with np.errstate(invalid="ignore"):
            np.greater(d, 0, out=keep)  # NaN compares False
            np.less(d, np.inf, out=mark)
        keep &= mark
        keep &= geo.allowed
        np.logical_not(keep, out=mark)
        np.copyto(d, 0, where=mark)  # no return: a harmless 0 from here on
        # which samples mark: ground classes near z = 0, obstacle classes in the height band
        label = b["label"]
        np.take(labels.reshape(-1), samples.label_index, out=label)
        np.multiply(d, geo.z_per_metre, out=z)
        z += geo.camera_z
        _lut(self._ground_lut, label, ground)
        ground &= keep
        np.abs(z, out=tmp)
        np.less_equal(tmp, spec.min_obstacle_height, out=band)
        ground &= band
        _lut(self._obstacle_lut, label, obstacle)
        np.greater(z, spec.min_obstacle_height, out=band)
        obstacle &= band
        np.less_equal(z, spec.max_obstacle_height, out=band)
        obstacle &= band
        np.logical_or(ground, obstacle, out=mark)
        keep &= mark
        # the cell of every point, on the bordered grid
        col, row, cell = b["col"], b["row"], b["cell"]
        for index, per_metre, at_camera, limit in ((col, geo.col_per_metre, geo.col_at_camera, geo.width),
                                                    (row, geo.row_per_metre, geo.row_at_camera, geo.height)):
            np.multiply(d, per_metre, out=tmp)
            tmp += at_camera
            np.floor(tmp, out=tmp)
            np.clip(tmp, 0, limit - 1, out=tmp)
            np.copyto(index, tmp, casting="unsafe")
        np.multiply(d, geo.reach_per_metre, out=reach)
        if self.grid.max_range > 0:
            np.less_equal(reach, self.grid.max_range, out=mark)
            keep &= mark
        np.multiply(row, geo.width, out=cell)
        cell += col
        np.logical_not(keep, out=mark)
        np.copyto(cell, 0, where=mark)
        np.copyto(reach, 0, where=mark)
        self.points_used = int(np.count_nonzero(keep))
        # free space: per bearing, from the nearest visible ground out to the farthest kept point
        farthest, seen = b["farthest"], b["seen"]
        farthest.fill(0)
        np.maximum.at(farthest, geo.sample_bin, reach)
        np.take(farthest, geo.cell_bin, out=b["cell_reach"])
        np.less_equal(geo.cell_range, b["cell_reach"], out=seen)
        np.greater_equal(geo.cell_range, geo.cell_near, out=b["cell_mark"])
        seen &= b["cell_mark"]
        seen_grid = seen.reshape(self.grid.height, self.grid.width)
        # Far away an image row spans several cells: each ground cell the image shows also takes the class of the
        # sample the flat-ground table gives it, when that sample's point is ground near z = 0.
        np.take(ground, geo.table_sample, out=b["table_off"])
        np.logical_not(b["table_off"], out=b["table_off"])
        np.take(label, geo.table_sample, out=b["table_label"])
        np.copyto(b["table_marks"], geo.table_cell)
        np.copyto(b["table_marks"], 0, where=b["table_off"])
        costs, table_costs = b["costs"], b["table_costs"]
        for name, lut in self._cost_luts.items():
            flat = self._depth_flat[name]
            flat.fill(UNKNOWN)
            np.copyto(self._depth_grids[name], FREE, where=seen_grid)
            _lut(lut, label, costs)
            np.maximum.at(flat, cell, costs)
            _lut(lut, b["table_label"], table_costs)
            np.maximum.at(flat, b["table_marks"], table_costs)
        return self._depth_grids

    def _ensure_geometry(self, camera: CameraModel, camera_hw, labels_hw, depth_hw) -> _DepthGeometry:
        table = self._ensure_table(camera, labels_hw, camera_hw)  # the flat-ground table, kept by GroundProjector
        pose, key = self._pose, (camera.key, camera_hw, labels_hw, depth_hw)
        if key != self._geometry_key or pose != self._geometry_pose:  # the stride depends on both
            far = _far_corner(self.grid, pose)
            stride = _DepthGeometry.stride_for(_focal_labels(camera, labels_hw), self.grid, far)
            if key != self._geometry_key or stride != self._geometry.stride:
                self._geometry = _DepthGeometry(camera, camera_hw, labels_hw, depth_hw, self.grid, stride)
                self._geometry_key = key
            self._geometry.aim(pose, far, table.cells, table.pixels)
            self._geometry_pose = pose
        return self._geometry

    # --- labelled point cloud ----------------------------------------------------------------------
    def points(self, labels: np.ndarray, confidence: np.ndarray | None, camera_hw: tuple[int, int],
               depth: np.ndarray, stride: int = 1, organized: bool = True,
               cloud_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """Points of every `stride`-th pixel of a cloud_hw image (default: labels' own size) in the camera's
        optical frame (x right, y down, z forward) as a POINT_DTYPE array, and its (height, width): the decimated
        grid when `organized` (no return = NaN), else (1, n) with only the points that have a return. Labels and
        confidence (uint8, any one size, e.g. the model's) are read at each point's pixel exactly as a
        nearest-neighbour resize to cloud_hw would give them, without resizing them. Valid until the next call."""
        camera = self._intrinsics
        if camera is None:
            raise DepthError("no intrinsics yet")
        cloud_hw = tuple(cloud_hw or labels.shape)
        key = (camera.key, tuple(camera_hw), cloud_hw, labels.shape, depth.shape, stride)
        if key != self._cloud_key:
            self._cloud = _Samples(camera, tuple(camera_hw), cloud_hw, depth.shape, stride, labels.shape)
            n = self._cloud.size
            # zeros: the two padding bytes of each point are never written, and they go out in the message
            self._cloud_buf = {"points": np.zeros(n, POINT_DTYPE), "compact": np.zeros(n, POINT_DTYPE),
                               "valid": np.empty(n, bool), "other": np.empty(n, bool), "mm": np.empty(n, np.uint16)}
            self._cloud_key = key
        s, b = self._cloud, self._cloud_buf
        pts, valid = b["points"], b["valid"]
        z = pts["z"]
        gather_metres(depth, s.depth_index, z, b["mm"])
        with np.errstate(invalid="ignore"):
            np.greater(z, 0, out=valid)
            np.less(z, np.inf, out=b["other"])
        valid &= b["other"]
        np.logical_not(valid, out=b["other"])
        np.copyto(z, np.nan, where=b["other"])
        grid = pts.reshape(s.shape)  # a view: the samples row by row
        np.multiply(grid["z"], s.ray_x, out=grid["x"])
        np.multiply(grid["z"], s.ray_y, out=grid["y"])
        np.take(labels.reshape(-1), s.label_index, out=pts["label"])
        if confidence is None:
            pts["confidence"] = 255
        else:
            np.take(confidence.reshape(-1), s.label_index, out=pts["confidence"])
        if organized:
            return pts, s.shape
        n = int(np.count_nonzero(valid))
        compact = b["compact"][:n]
        np.compress(valid, pts, out=compact)
        return compact, (1, n)

