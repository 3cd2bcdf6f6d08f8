"""seg_node with a depth topic, as a real process on a real DDS domain: costmaps built from a synthetic frame's exact
depth mark a car and a person only at their true footprints, the labelled point cloud carries x, y, z, label and
confidence, a half-size depth image is scaled, and bad depth (wrong encoding, size, stamp, over max_input_pixels, all
zeros) leaves the depth layers unknown for that frame while masks keep coming, counted in /diagnostics with the
reason."""

from __future__ import annotations

import signal

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import OccupancyGrid  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField  # noqa: E402
from test_node_dds import (half_road_onnx, image_msg, peer, serve_until_ready, start_node,  # noqa: E402,F401
                           wait_diagnostics)

from seg_perception.core.costmap import GridSpec  # noqa: E402
from seg_perception.data.synthetic import CAMERA_HEIGHT_M, Camera, render_street, staged_street  # noqa: E402
from seg_perception.labels import CITYSCAPES_CLASSES  # noqa: E402

pytestmark = pytest.mark.timeout(240)

H, W = 96, 192
CAR, PERSON = CITYSCAPES_CLASSES.index("car"), CITYSCAPES_CLASSES.index("person")
GRID = GridSpec(resolution=0.1, size_x=16.0, size_y=12.0, origin_x=0.0, origin_y=-6.0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The frame and a model that labels it exactly (its true train ids as a constant output)."""
    frame = render_street(staged_street([("car", 0.0, 8.05), ("person", -1.8, 6.05)]), H, W, topdown=GRID)
    return frame, half_road_onnx(tmp_path_factory.mktemp("models") / "scene.onnx", (H, W), labels=frame.train_ids)


def depth_image(metres: np.ndarray, stamp, encoding: str = "16UC1") -> Image:
    msg = Image(encoding=encoding, height=metres.shape[0], width=metres.shape[1])
    msg.header.stamp, msg.header.frame_id = stamp, "camera_optical"
    mm = np.round(metres * 1000)
    values = np.where(mm > 65535, 0, mm).astype("<u2") if encoding == "16UC1" else metres.astype(np.float32)
    msg.step = metres.shape[1] * values.itemsize
    msg.data = values.tobytes()
    return msg


def grid_of(msg: OccupancyGrid) -> np.ndarray:
    return np.asarray(msg.data, np.int8).reshape(msg.info.height, msg.info.width)


def test_depth_costmaps_points_and_bad_depth(scene, peer, start_node):
    frame, model = scene
    node = start_node(dict(model=str(model), threads=1, diagnostics_period=0.2, input_topic="/camera/image_raw",
                           camera_info_topic="/camera/camera_info", depth_topic="/camera/depth",
                           camera_height=CAMERA_HEIGHT_M, camera_pitch=0.0, costmap_resolution=GRID.resolution,
                           costmap_size_x=GRID.size_x, costmap_size_y=GRID.size_y, costmap_origin_y=GRID.origin_y,
                           costmap_classes=["car", "person"], points_stride=2, max_input_pixels=2 * H * W))
    topics = {"/semantic_mask": Image, "/semantic_costmap": OccupancyGrid, "/semantic_costmap/car": OccupancyGrid,
              "/semantic_costmap/person": OccupancyGrid, "/semantic_points": PointCloud2,
              "/diagnostics": DiagnosticArray}
    for topic, msg_type in topics.items():
        peer.subscribe(msg_type, topic)
    pub = peer.publisher(Image, "/camera/image_raw")
    depth_pub = peer.publisher(Image, "/camera/depth")
    info_pub = peer.publisher(CameraInfo, "/camera/camera_info")
    cam_info = CameraInfo(height=H, width=W)
    cam_info.k = Camera.for_image(H, W).pinhole().k().ravel().tolist()

    def frame_msg(stamp, depth: Image | None = None):
        info_pub.publish(cam_info)
        depth_pub.publish(depth or depth_image(frame.depth, stamp))
        return image_msg(frame.rgb, stamp)

    serve_until_ready(peer, pub, frame_msg, topic="/semantic_costmap/car")
    stamp = peer.now()
    pub.publish(frame_msg(stamp))
    xs, ys = GRID.cell_centres()
    for cls, topic in ((CAR, "/semantic_costmap/car"), (PERSON, "/semantic_costmap/person")):
        truth = frame.topdown == cls
        marked = grid_of(peer.find(topic, stamp)) == 100
        assert marked.any() and not (marked & ~truth).any(), f"{topic}: cells off the true footprint (smear)"
        assert np.count_nonzero(marked & truth) >= 0.9 * np.count_nonzero(truth), f"{topic}: footprint missed"
    fused = grid_of(peer.find("/semantic_costmap", stamp))
    assert (fused[(np.abs(ys) < 0.3) & (xs > 5.6) & (xs < 7.9)] == 0).all()  # free road up to the car

    cloud = peer.find("/semantic_points", stamp)
    assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == [
        ("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32), ("z", 8, PointField.FLOAT32),
        ("label", 12, PointField.UINT8), ("confidence", 13, PointField.UINT8)]
    assert (cloud.height, cloud.width, cloud.point_step, cloud.header.frame_id) == (H // 2, W // 2, 16,
                                                                                   "camera_optical")
    raw = np.frombuffer(bytes(cloud.data), np.uint8).reshape(H // 2, W // 2, 16)
    xyz = raw[..., :12].copy().view("<f4")
    labels = raw[..., 12]
    np.testing.assert_array_equal(labels, frame.train_ids[::2, ::2])
    car = labels == CAR
    np.testing.assert_allclose(xyz[car][:, 2], 8.05, rtol=1e-3)  # depth along the optical axis
    assert np.isnan(xyz[frame.depth[::2, ::2] == 0]).all()  # no return

    # A half-size depth image is the same view: scaled with the intrinsics.
    stamp = peer.now()
    pub.publish(frame_msg(stamp, depth_image(np.ascontiguousarray(frame.depth[::2, ::2]), stamp)))
    marked = grid_of(peer.find("/semantic_costmap/car", stamp)) == 100
    near_truth = cv2.dilate((frame.topdown == CAR).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert marked.any() and not (marked & ~near_truth).any()  # a depth pixel is two mask pixels wide: one cell

    # Bad depth: the mask still comes, the depth layers are unknown for that frame, counted with the reason.
    bad = [(lambda s: depth_image(frame.depth, s, "mono8"), "depth encoding 'mono8'"),
           (lambda s: depth_image(frame.depth[:, :160], s), "aspect ratio"),
           (lambda s: depth_image(np.repeat(np.repeat(frame.depth, 2, 0), 2, 1), s), "more than max_input_pixels"),
           (lambda s: depth_image(frame.depth, type(s)(sec=s.sec + 1, nanosec=s.nanosec)), "ms from the colour"),
           (lambda s: depth_image(np.zeros_like(frame.depth), s), "no depth return")]
    for i, (make, reason) in enumerate(bad):
        stamp = peer.now()
        pub.publish(frame_msg(stamp, make(stamp)))
        peer.find("/semantic_mask", stamp)
        assert (grid_of(peer.find("/semantic_costmap", stamp)) == -1).all(), reason
        diag = wait_diagnostics(peer, "depth_dropped", lambda v, n=i + 1: int(v) == n)
        assert reason in diag["last_problem"], diag["last_problem"]
    assert node.proc.poll() is None
    rc, _ = node.stop(signal.SIGTERM)
    assert rc == 0


@pytest.mark.parametrize("params, name", [(dict(ground_classes=["lava"]), "ground_classes"),
                                          (dict(min_obstacle_height=3.0), "min_obstacle_height")])
def test_invalid_depth_parameter_stops_start_up_naming_it(scene, start_node, params, name):
    node = start_node(dict(model=str(scene[1]), depth_topic="/camera/depth", **params))
    assert node.proc.wait(30) != 0
    assert f"parameter '{name}'" in node.output()
