"""numpy <-> ROS messages without per-frame allocations.

Output messages are built once and refilled: each owns an `array.array` whose memory a numpy view writes into,
and the message is created with `check_fields=True`, in which mode rclpy stores an `array.array` by reference
(otherwise the setter copies it; an ndarray costs ~0.5 s per 6 MB, and bytes under check_fields are checked
element by element).
"""

from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import KeyValue
from nav_msgs.msg import OccupancyGrid
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from seg_perception.core.costmap import GridSpec
from seg_perception.core.depth_costmap import POINT_DTYPE
from seg_perception.core.image_codec import ImageEncoder


def stamp_to_ns(stamp: Time) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class _ReusedBuffer:
    """An array.array of one typecode plus a numpy view of it, re-allocated only when the size changes."""

    def __init__(self, typecode: str, dtype) -> None:
        self.typecode, self.dtype = typecode, dtype
        self.data = array.array(typecode)
        self.view = np.empty(0, dtype)

    def fill(self, values: np.ndarray) -> array.array:
        if self.view.size != values.size:
            self.view = None  # release the export so the array can be replaced
            self.data = array.array(self.typecode, bytes(values.size * np.dtype(self.dtype).itemsize))
            self.view = np.frombuffer(self.data, self.dtype)
        np.copyto(self.view.reshape(values.shape), values, casting="no")
        return self.data


class ImageOut:
    """One reusable sensor_msgs/Image for an output topic."""

    def __init__(self, encoding: str) -> None:
        self.msg = Image(check_fields=True)
        self.msg.encoding = encoding
        self._buf = _ReusedBuffer("B", np.uint8)

    def fill(self, header: Header, image: np.ndarray) -> Image:
        """image: uint8 [h, w] or [h, w, c], any strides (copied once into the message buffer)."""
        msg = self.msg
        msg.header = header
        msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
        msg.step = msg.width * (image.shape[2] if image.ndim == 3 else 1)
        msg.data = self._buf.fill(image)
        return msg


class CompressedOut:
    """One reusable sensor_msgs/CompressedImage for `<topic>/compressed`, formatted like compressed_image_transport's
    ('rgb8; jpeg compressed bgr8', 'mono8; png compressed mono8')."""

    def __init__(self, encoding: str, fmt: str, jpeg_quality: int = 90) -> None:
        self._encoder = ImageEncoder(fmt, jpeg_quality)
        self.msg = CompressedImage()
        self.msg.format = f"{encoding}; {fmt} compressed {'mono8' if encoding == 'mono8' else 'bgr8'}"

    def fill(self, header: Header, image: np.ndarray) -> CompressedImage:
        self.msg.header = header
        self.msg.data = self._encoder.encode(image).tobytes()  # bytes: rclpy takes them without a per-element check
        return self.msg


class GridOut:
    """One reusable nav_msgs/OccupancyGrid for a costmap layer; geometry from a GridSpec."""

    def __init__(self, grid: GridSpec) -> None:
        msg = OccupancyGrid(check_fields=True)
        msg.header.frame_id = grid.frame
        msg.info.resolution = float(grid.resolution)
        msg.info.width, msg.info.height = grid.width, grid.height
        msg.info.origin.position.x = float(grid.origin_x)
        msg.info.origin.position.y = float(grid.origin_y)
        msg.info.origin.orientation.w = 1.0
        self.msg = msg
        self._buf = _ReusedBuffer("b", np.int8)

    def fill(self, stamp: Time, cells: np.ndarray) -> OccupancyGrid:
        self.msg.header.stamp = stamp
        self.msg.info.map_load_time = stamp
        self.msg.data = self._buf.fill(cells)
        return self.msg


class PointCloudOut:
    """One reusable sensor_msgs/PointCloud2 of labelled points (depth_costmap.POINT_DTYPE: x, y, z float32,
    label and confidence uint8). An unorganised cloud changes size every frame, so its buffer does too."""

    _TYPES = {np.dtype("<f4"): PointField.FLOAT32, np.dtype("u1"): PointField.UINT8}

    def __init__(self) -> None:
        msg = PointCloud2(check_fields=True)
        msg.fields = [PointField(name=name, offset=offset, datatype=self._TYPES[dtype], count=1)
                      for name, (dtype, offset) in POINT_DTYPE.fields.items()]
        msg.is_bigendian = False
        msg.point_step = POINT_DTYPE.itemsize
        self.msg = msg
        self._buf = _ReusedBuffer("B", np.uint8)

    def fill(self, header: Header, points: np.ndarray, hw: tuple[int, int]) -> PointCloud2:
        """points: POINT_DTYPE [height * width]; an organised cloud (height > 1) may hold NaN points."""
        msg = self.msg
        msg.header = header
        msg.height, msg.width = int(hw[0]), int(hw[1])
        msg.row_step = msg.width * msg.point_step
        msg.is_dense = msg.height == 1
        msg.data = self._buf.fill(points.view(np.uint8))
        return msg


def camera_info_problem(info: CameraInfo) -> str:
    """Why `info` cannot give intrinsics ('' when it can): the size, K, D, R and P are all checked."""
    if info.height <= 0 or info.width <= 0:
        return f"no image size ({info.width}x{info.height})"
    for name in ("k", "d", "r", "p"):
        if not np.isfinite(np.asarray(getattr(info, name), np.float64)).all():
            return f"{name.upper()} holds NaN or inf"
    k = np.asarray(info.k, np.float64).reshape(3, 3)
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        return f"K needs fx > 0 and fy > 0, got fx={k[0, 0]:g}, fy={k[1, 1]:g}"
    if not np.array_equal(k[2], [0.0, 0.0, 1.0]) or k[1, 0] != 0:
        return f"K is not a camera matrix: {k.ravel().tolist()}"
    return ""


def k_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def scaled_camera_info(out: CameraInfo, k: np.ndarray, k_hw: tuple[int, int], out_hw: tuple[int, int],
                       header: Header, source: CameraInfo | None = None, rectified: bool = False) -> CameraInfo:
    """Fill `out` to describe an image of size out_hw showing the same view as the k_hw image K belongs to.
    rectified: the image is already rectified (k is source's P 3x3), so no distortion or rectification is left."""
    sx, sy = out_hw[1] / k_hw[1], out_hw[0] / k_hw[0]
    scale = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])  # pixel centres
    ks = scale @ k
    out.header = header
    out.height, out.width = int(out_hw[0]), int(out_hw[1])
    out.k = ks.ravel().tolist()
    calibrated = source is not None and any(source.p)
    p = scale @ np.asarray(source.p, np.float64).reshape(3, 4) if calibrated else np.hstack([ks, np.zeros((3, 1))])
    if calibrated and not rectified:
        out.distortion_model, out.d, out.r = source.distortion_model, source.d, source.r
    else:
        # fx/fy/cx/cy alone (no CameraInfo, or a refused one): no distortion is known, so none is claimed; a
        # rectified image has none left.
        out.distortion_model, out.d = "", []
        out.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    out.p = p.ravel().tolist()
    return out


def key_values(pairs: dict[str, object]) -> list[KeyValue]:
    return [KeyValue(key=k, value=v if isinstance(v, str) else f"{v:.3f}" if isinstance(v, float) else str(v))
            for k, v in pairs.items()]
