"""rosbag2 files (sqlite3 and mcap) without a ROS install, through the `rosbags` library: a drive-bag writer
(camera images, camera_info, registered depth, ground-truth train ids and the true top-down map) and readers for
Image, CompressedImage, CameraInfo and OccupancyGrid.

Messages are rosbags' own dataclasses from the Jazzy typestore; their CDR is byte-identical to what rclpy
writes and the metadata is rosbag2 version 9 (Jazzy's), so `seg-perception replay` publishes the stored bytes
unchanged, and RViz / Foxglove tooling reads the bags. The mcap files written here carry a CRC-32 per chunk (rosbags
writes 0, "not computed"), which readers check: a damaged bag is an error, never a quietly different score.
"""

from __future__ import annotations

import math
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from seg_perception.errors import EvalError

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
OCCUPANCY_GRID = "nav_msgs/msg/OccupancyGrid"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
BAG_VERSION = 9  # what Jazzy's rosbag2 writes
_T = TYPESTORE.types


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics written as CameraInfo (plumb_bob, no distortion)."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_hfov(cls, height: int, width: int, hfov_deg: float = 60.0) -> "PinholeCamera":
        f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
        return cls(f, f, (width - 1) / 2, (height - 1) / 2)

    def k(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


# --- message construction ----------------------------------------------------------------------------------
def stamp(ns: int):
    return _T["builtin_interfaces/msg/Time"](sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def header(ns: int, frame_id: str):
    return _T["std_msgs/msg/Header"](stamp=stamp(ns), frame_id=frame_id)


def image_msg(ns: int, frame_id: str, array: np.ndarray, encoding: str):
    """uint8 [h, w] (mono8) or [h, w, 3] (rgb8) -> sensor_msgs/Image."""
    h, w = array.shape[:2]
    channels = array.shape[2] if array.ndim == 3 else 1
    return _T[IMAGE](header=header(ns, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0,
                     step=w * channels, data=np.ascontiguousarray(array, np.uint8).reshape(-1))


def compressed_msg(ns: int, frame_id: str, rgb: np.ndarray, fmt: str = "jpeg"):
    ok, data = cv2.imencode(".png" if fmt == "png" else ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return _T[COMPRESSED_IMAGE](header=header(ns, frame_id), format=f"rgb8; {fmt} compressed bgr8",
                                data=data.reshape(-1))


def camera_info_msg(ns: int, frame_id: str, camera: PinholeCamera, height: int, width: int):
    k = camera.k()
    return _T[CAMERA_INFO](
        header=header(ns, frame_id), height=height, width=width, distortion_model="plumb_bob",
        d=np.zeros(5), k=k.ravel(), r=np.eye(3).ravel(), p=np.hstack([k, np.zeros((3, 1))]).ravel(),
        binning_x=0, binning_y=0,
        roi=_T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def depth_msg(ns: int, frame_id: str, metres: np.ndarray):
    """float32 metres (0 = no return) -> 16UC1 millimetres, as RealSense and depth_image_proc publish it;
    beyond 65.535 m is no return too."""
    mm = np.round(np.nan_to_num(metres, nan=0.0, posinf=0.0) * 1000.0)
    mm[(mm < 0) | (mm > 65535)] = 0
    h, w = metres.shape
    return _T[IMAGE](header=header(ns, frame_id), height=h, width=w, encoding="16UC1", is_bigendian=0,
                     step=w * 2, data=mm.astype("<u2").view(np.uint8).reshape(-1))


def topdown_msg(ns: int, grid, train_ids: np.ndarray):
    """The true top-down map as an OccupancyGrid whose cells hold train ids (0..18; -1 = nothing known)."""
    cells = train_ids.astype(np.int8)
    cells[train_ids == 255] = -1
    return occupancy_grid_msg(ns, grid, cells)


def grid_array(msg) -> np.ndarray:
    """An OccupancyGrid's cells as int8 [height, width] (a view)."""
    cells = np.frombuffer(msg.data, np.int8)
    if cells.size != msg.info.width * msg.info.height:
        raise EvalError(f"OccupancyGrid data holds {cells.size} cells, expected {msg.info.width}x{msg.info.height}")
    return cells.reshape(msg.info.height, msg.info.width)


def occupancy_grid_msg(ns: int, grid, cells: np.ndarray):
    """cells: int8 [height, width] on a seg_perception.core.costmap.GridSpec."""
    geometry = "geometry_msgs/msg/"
    origin = _T[geometry + "Pose"](position=_T[geometry + "Point"](x=float(grid.origin_x), y=float(grid.origin_y),
                                                                   z=0.0),
                                   orientation=_T[geometry + "Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
    info = _T["nav_msgs/msg/MapMetaData"](map_load_time=stamp(ns), resolution=float(grid.resolution),
                                          width=grid.width, height=grid.height, origin=origin)
    return _T[OCCUPANCY_GRID](header=header(ns, grid.frame), info=info,
                              data=np.ascontiguousarray(cells, np.int8).reshape(-1))


# --- writing -----------------------------------------------------------------------------------------------
class BagWriter:
    """A new rosbag2 (metadata.yaml + .db3 or .mcap) with typed connections created on first use."""

    def __init__(self, path: str | os.PathLike, storage: str = "sqlite3") -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {tuple(STORAGES)}, got '{storage}'")
        self.path = Path(path)
        if self.path.exists():
            raise EvalError(f"output bag '{self.path}' already exists")
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        self._writer.open()
        self._connections = {}

    def write(self, topic: str, ns: int, msg) -> None:
        self.write_raw(topic, msg.__msgtype__, ns, TYPESTORE.serialize_cdr(msg, msg.__msgtype__))

    def write_raw(self, topic: str, msgtype: str, ns: int, data: bytes | memoryview) -> None:
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=TYPESTORE)
        self._writer.write(conn, ns, data)

    def close(self) -> None:
        self._writer.close()
        for mcap in self.path.glob("*.mcap"):
            write_mcap_chunk_crcs(mcap)

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_MCAP_MAGIC = b"\x89MCAP0\r\n"
_MCAP_CHUNK, _MCAP_DATA_END = 0x06, 0x0F


def write_mcap_chunk_crcs(path: str | os.PathLike) -> int:
    """Fill in the CRC-32 of every uncompressed chunk of an mcap file whose CRC field is 0; returns how many.

    A chunk record is: start, end, uncompressed size (u64 each), CRC (u32), compression (u32 length + text),
    records length (u64), records; the CRC covers the uncompressed records."""
    filled = 0
    with open(path, "r+b") as f:
        if f.read(8) != _MCAP_MAGIC:
            raise EvalError(f"'{path}' is not an mcap file")
        while header := f.read(9):
            if len(header) < 9:
                break
            opcode, length = header[0], struct.unpack_from("<Q", header, 1)[0]
            body = f.tell()
            if opcode == _MCAP_DATA_END:
                break
            if opcode == _MCAP_CHUNK:
                head = f.read(28)
                crc = struct.unpack_from("<I", head, 24)[0]
                (compression_len,) = struct.unpack("<I", f.read(4))
                compression = f.read(compression_len)
                (records_len,) = struct.unpack("<Q", f.read(8))
                if crc == 0 and compression == b"":
                    crc = zlib.crc32(f.read(records_len))
                    f.seek(body + 24)
                    f.write(struct.pack("<I", crc))
                    filled += 1
            f.seek(body + length)
    return filled


def write_drive_bag(path: str | os.PathLike, frames: Iterable, storage: str = "sqlite3",
                    image_topic: str = "/camera/image_raw", compressed: bool = False,
                    gt_topic: str = "/camera/semantic_gt", camera_info: PinholeCamera | None = None,
                    camera_info_topic: str = "/camera/camera_info", rate_hz: float = 10.0,
                    start_ns: int = 1_700_000_000_000_000_000, frame_id: str = "camera",
                    compressed_format: str = "jpeg", depth_topic: str = "/camera/depth/image_raw",
                    depth_info_topic: str = "/camera/depth/camera_info",
                    topdown_topic: str = "/camera/semantic_gt_topdown", topdown_grid=None) -> Path:
    """Write a drive: per frame an image (rgb8 Image, or CompressedImage on `<image_topic>/compressed`), its
    CameraInfo and, when the frame has them, its ground-truth train ids as a mono8 Image with the same stamp,
    its depth (16UC1, registered to the image, with its CameraInfo; written before the image, as a driver that
    publishes depth first) and its true top-down map on `topdown_grid` (costmap.GridSpec, the frame's grid).

    frames: objects with `.rgb`, `.train_ids`, `.depth` and `.topdown` (seg_perception.data.synthetic.SyntheticFrame)
    or (rgb, train_ids) pairs; train_ids may be None. camera_info None: a 60 degree pinhole camera.
    """
    if rate_hz <= 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    if compressed and not image_topic.endswith("/compressed"):
        image_topic = image_topic.rstrip("/") + "/compressed"  # image_transport's name, as seg_node expects
    period_ns = int(round(1e9 / rate_hz))
    with BagWriter(path, storage) as bag:
        for i, frame in enumerate(frames):
            rgb, train_ids = (frame.rgb, frame.train_ids) if hasattr(frame, "rgb") else frame
            ns = start_ns + i * period_ns
            h, w = rgb.shape[:2]
            info = camera_info or PinholeCamera.from_hfov(h, w)
            depth = getattr(frame, "depth", None)
            if depth_topic and depth is not None:
                bag.write(depth_topic, ns, depth_msg(ns, frame_id, depth))
                if depth_info_topic:
                    bag.write(depth_info_topic, ns, camera_info_msg(ns, frame_id, info, h, w))
            bag.write(image_topic, ns, compressed_msg(ns, frame_id, rgb, compressed_format) if compressed
                      else image_msg(ns, frame_id, rgb, "rgb8"))
            if camera_info_topic:
                bag.write(camera_info_topic, ns, camera_info_msg(ns, frame_id, info, h, w))
            if gt_topic and train_ids is not None:
                if train_ids.shape != (h, w):
                    raise ValueError(f"frame {i}: train ids {train_ids.shape} do not match the image {(h, w)}")
                bag.write(gt_topic, ns, image_msg(ns, frame_id, train_ids, "mono8"))
            topdown = getattr(frame, "topdown", None)
            if topdown_topic and topdown is not None:
                if topdown_grid is None or topdown.shape != (topdown_grid.height, topdown_grid.width):
                    raise ValueError(f"frame {i}: a top-down map needs the GridSpec it was drawn on")
                bag.write(topdown_topic, ns, topdown_msg(ns, topdown_grid, topdown))
    return Path(path)


# --- reading -----------------------------------------------------------------------------------------------
class BagReader:
    """Typed access to one bag's topics; a missing topic raises EvalError listing what the bag has."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise EvalError(f"bag '{self.path}' does not exist")
        try:
            self._reader = AnyReader([self.path], default_typestore=TYPESTORE)
            self._reader.open()
        except Exception as exc:  # rosbags raises its own errors for unreadable metadata or storage
            raise EvalError(f"cannot open bag '{self.path}': {exc}") from exc
        self.topics: dict[str, str] = {name: t.msgtype for name, t in self._reader.topics.items()}

    def topic(self, name: str, types: tuple[str, ...] | None = None) -> str:
        """The message type of `name`, checked against `types` (None: any type)."""
        msgtype = self.topics.get(name)
        if msgtype is None:
            listing = ", ".join(f"{n} ({t})" for n, t in sorted(self.topics.items())) or "none"
            raise EvalError(f"bag '{self.path}' has no topic '{name}'; its topics: {listing}")
        if types is not None and msgtype not in types:
            raise EvalError(f"topic '{name}' in '{self.path}' is {msgtype}, expected {' or '.join(types)}")
        return msgtype

    def count(self, topic: str) -> int:
        return sum(c.msgcount for c in self._reader.connections if c.topic == topic)

    @property
    def log_span_ns(self) -> tuple[int, int]:
        """Log times of the first message and just after the last."""
        return self._reader.start_time, self._reader.end_time

    def messages(self, topics: Iterable[str], start_ns: int | None = None,
                 stop_ns: int | None = None) -> Iterator[tuple[str, int, object]]:
        """(topic, log time ns, deserialized message) in log-time order, logged in [start_ns, stop_ns)."""
        for conn, log_ns, raw in self.raw_messages(topics, start_ns, stop_ns):
            yield conn.topic, log_ns, self._reader.deserialize(raw, conn.msgtype)

    def raw_messages(self, topics: Iterable[str], start_ns: int | None = None, stop_ns: int | None = None):
        """(connection, log time ns, CDR bytes) in log-time order, logged in [start_ns, stop_ns) (None: open)."""
        wanted = set(topics)
        connections = [c for c in self._reader.connections if c.topic in wanted]
        try:
            yield from self._reader.messages(connections=connections, start=start_ns, stop=stop_ns)
        except Exception as exc:  # rosbags' ReaderError (a chunk CRC mismatch, a bad record) and struct errors
            raise EvalError(f"bag '{self.path}' is damaged: {exc}") from exc

    def deserialize(self, raw: bytes, msgtype: str):
        return self._reader.deserialize(raw, msgtype)

    def first(self, topic: str):
        """The first message on `topic`, or None."""
        return next((msg for _, _, msg in self.messages([topic])), None)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def mono8_array(msg) -> np.ndarray:
    """A mono8 / 8UC1 sensor_msgs/Image as uint8 [h, w] (a view; row padding dropped)."""
    if msg.encoding not in ("mono8", "8UC1"):
        raise EvalError(f"ground-truth image has encoding '{msg.encoding}'; expected mono8 train ids")
    rows = np.frombuffer(msg.data, np.uint8)
    if rows.size != msg.step * msg.height or msg.step < msg.width:
        raise EvalError(f"ground-truth image data holds {rows.size} bytes, expected {msg.step}*{msg.height}")
    return rows.reshape(msg.height, msg.step)[:, : msg.width]


_STAMP_NAME = re.compile(r"^(\d+)\.png$")


def gt_dir_index(folder: str | os.PathLike) -> dict[int, Path]:
    """`<stamp_ns>.png` files (train ids) of a ground-truth folder, by stamp."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"ground-truth folder '{folder}' does not exist")
    index = {int(m.group(1)): p for p in folder.iterdir() if (m := _STAMP_NAME.match(p.name))}
    if not index:
        raise EvalError(f"no '<stamp_ns>.png' ground-truth files in '{folder}'")
    return index
