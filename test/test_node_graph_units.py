"""seg_node's place in a robot's graph, part by part: input topic resolution under namespaces and remaps, the
/diagnostics level of the current window, the camera pose from a TF transform, compressed outputs, outputs
published only to topics with subscribers (counted once per frame)."""

from __future__ import annotations

import collections
import importlib.util
import math
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import Quaternion, Transform  # noqa: E402
from nav_msgs.msg import OccupancyGrid  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from test_node_dds import CAM_H, CAM_W, COSTMAP_PARAMS, half_road, image_msg  # noqa: E402,F401

from seg_perception.core.costmap import CameraPose, rotation_grid_from_optical  # noqa: E402
from seg_perception.ros.camera_pose import (CameraPoseSource, open_pose_source, pose_from_transform,  # noqa: E402
                                            rotation_from_quaternion)
from seg_perception.ros.conversions import CompressedOut  # noqa: E402
from seg_perception.ros.health import Counts, HealthWindow  # noqa: E402
from seg_perception.ros.topics import resolve_inputs, sibling  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


# --- topics ----------------------------------------------------------------------------------------
@pytest.fixture
def graph_node(ros_env):
    """A real rclpy node named seg_node, built with the command-line arguments a user would give."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    nodes = []

    def make(*ros_args: str):
        nodes.append(rclpy.create_node("seg_node", context=ctx, cli_args=["--ros-args", *ros_args]))
        return nodes[-1]

    yield make
    for node in nodes:
        node.destroy_node()
    rclpy.shutdown(context=ctx)


def test_outputs_go_only_to_subscribed_topics_counting_subscribers_once_per_frame(ros_env, half_road):
    """rclpy's get_subscription_count takes a lock and walks the graph: the worker asks each output once per frame
    (here its per-frame step, on one frame) and publishes only where someone listens."""
    from seg_perception.ros.node import SegNode, _Frame

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    params = dict(model=str(half_road), threads=1, camera_info_topic="", publish_compressed=True, **COSTMAP_PARAMS)
    node = SegNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    viewer = rclpy.create_node("viewer", context=ctx)
    try:
        listened = {"/semantic_mask": Image, "/semantic_mask/color/compressed": CompressedImage,
                    "/semantic_costmap": OccupancyGrid}
        for topic, msg_type in listened.items():
            viewer.create_subscription(msg_type, topic, lambda msg: None, 1)
        outputs = {pub.topic_name: pub for pub in node.publishers}
        deadline = time.monotonic() + 30
        while not all(outputs[t].get_subscription_count() for t in listened):  # discovery
            assert time.monotonic() < deadline, "the viewer's subscriptions never matched"
            time.sleep(0.05)
        counted, sent = collections.Counter(), collections.Counter()
        for topic, pub in outputs.items():
            count, publish = pub.get_subscription_count, pub.publish
            pub.get_subscription_count = lambda t=topic, f=count: counted.update([t]) or f()
            pub.publish = lambda msg, t=topic, f=publish: sent.update([t]) or f(msg)
        node._serve(_Frame(image_msg(np.zeros((CAM_H, CAM_W, 3), np.uint8), node.get_clock().now().to_msg()),
                           time.perf_counter_ns(), 0))
        assert node.published == 1
        assert set(sent) == set(listened) and max(sent.values()) == 1, sent
        assert {"/semantic_mask", "/semantic_mask/confidence", "/semantic_mask/overlay", "/semantic_mask/latency",
                "/semantic_costmap/car"} <= set(counted)
        assert max(counted.values()) == 1, counted
    finally:
        node.close()
        node.destroy_node()
        viewer.destroy_node()
        rclpy.shutdown(context=ctx)


def test_sibling_follows_image_transport():
    assert sibling("/cams/front/image_color") == "/cams/front/camera_info"
    assert sibling("/image") == "/camera_info"
    assert sibling("image_raw") == "camera_info"
    assert sibling("front/image") == "front/camera_info"


def test_inputs_move_with_the_namespace_and_remaps(graph_node):
    ns = graph_node("-r", "__ns:=/robot1").resolve_topic_name
    assert resolve_inputs("image_raw", "camera_info", False, ns) == ("/robot1/image_raw", "/robot1/camera_info")
    assert resolve_inputs("image_raw", "camera_info", True, ns) == ("/robot1/image_raw/compressed",
                                                                    "/robot1/camera_info")
    assert resolve_inputs("image_raw", "", False, ns).camera_info == ""  # fx/fy/cx/cy
    # Only input_topic set: camera_info is its sibling; an explicit camera_info_topic wins.
    assert resolve_inputs("front/image/compressed", "camera_info", True, ns) == (
        "/robot1/front/image/compressed", "/robot1/front/camera_info")
    assert resolve_inputs("/cams/rear/image", "/calib/rear", False, ns) == ("/cams/rear/image", "/calib/rear")

    remapped = graph_node("-r", "__ns:=/robot2", "-r", "image_raw:=/cams/front/image_color").resolve_topic_name
    assert resolve_inputs("image_raw", "camera_info", False, remapped) == ("/cams/front/image_color",
                                                                           "/cams/front/camera_info")
    assert resolve_inputs("image_raw", "camera_info", True, remapped).image == "/cams/front/image_color/compressed"

    both = graph_node("-r", "image_raw:=/cams/front/image_color", "-r", "camera_info:=/calib/front").resolve_topic_name
    assert resolve_inputs("image_raw", "camera_info", False, both) == ("/cams/front/image_color", "/calib/front")


# --- health ----------------------------------------------------------------------------------------
def test_health_level_describes_the_current_window_not_history():
    s = 1_000_000_000
    window = HealthWindow("/robot1/image_raw", stale_timeout_s=3.0, now_ns=0)
    health = window.report(1 * s, Counts(), None, "")
    assert health.level == DiagnosticStatus.WARN
    assert "waiting for the first frame on /robot1/image_raw" in health.message
    health = window.report(2 * s, Counts(10, 10), 2 * s, "")
    assert health.level == DiagnosticStatus.OK and health.input_hz == pytest.approx(10.0)
    health = window.report(3 * s, Counts(20, 19, rejected=1), 3 * s, "rejected: empty image")
    assert health.level == DiagnosticStatus.WARN and "1 frames rejected" in health.message
    health = window.report(4 * s, Counts(30, 29, rejected=1), 4 * s, "rejected: empty image")
    assert health.level == DiagnosticStatus.OK  # the bad frame is history: OK again
    health = window.report(5 * s, Counts(40, 38, rejected=1, failed=1), 5 * s, "failed: BackendError: gone")
    assert health.level == DiagnosticStatus.ERROR and "BackendError" in health.message
    health = window.report(6 * s, Counts(50, 48, rejected=1, failed=1), 6 * s, "failed: BackendError: gone")
    assert health.level == DiagnosticStatus.OK
    health = window.report(10 * s, Counts(50, 48, rejected=1, failed=1), 6 * s, "")
    assert health.level == DiagnosticStatus.WARN and "no frame on /robot1/image_raw for 4.0 s" in health.message
    health = window.report(11 * s, Counts(60, 58, rejected=1, failed=1, depth_dropped=2), 11 * s,
                           "depth: depth encoding 'mono8' is not one of 16UC1, 32FC1")
    assert health.level == DiagnosticStatus.WARN and "2 frames without usable depth" in health.message


# --- camera pose from TF ---------------------------------------------------------------------------
def quaternion_from_rpy(roll: float, pitch: float, yaw: float) -> Quaternion:
    """tf2's Quaternion.setRPY (fixed-axis roll, then pitch, then yaw)."""
    cr, sr, cp, sp = math.cos(roll / 2), math.sin(roll / 2), math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    return Quaternion(x=sr * cp * cy - cr * sp * sy, y=cr * sp * cy + sr * cp * sy,
                      z=cr * cp * sy - sr * sp * cy, w=cr * cp * cy + sr * sp * sy)


def multiply(a: Quaternion, b: Quaternion) -> Quaternion:
    return Quaternion(w=a.w * b.w - a.x * b.x - a.y * b.y - a.z * b.z, x=a.w * b.x + a.x * b.w + a.y * b.z - a.z * b.y,
                      y=a.w * b.y - a.x * b.z + a.y * b.w + a.z * b.x, z=a.w * b.z + a.x * b.y - a.y * b.x + a.z * b.w)


# camera_link -> camera_optical_frame, as every ROS camera driver publishes it (REP 103).
OPTICAL = quaternion_from_rpy(-math.pi / 2, 0.0, -math.pi / 2)


def test_pose_from_a_driver_style_transform_chain():
    # base_link -> camera_link: 0.2 m ahead, 1.5 m up, pitched 0.3 rad down and turned 0.1 rad left.
    link = quaternion_from_rpy(0.0, 0.3, 0.1)
    transform = Transform(rotation=multiply(link, OPTICAL))
    transform.translation.x, transform.translation.y, transform.translation.z = 0.2, -0.05, 1.5
    pose = pose_from_transform(transform)
    assert (pose.x, pose.y, pose.height) == pytest.approx((0.2, -0.05, 1.5))
    assert (pose.roll, pose.pitch, pose.yaw) == pytest.approx((0.0, 0.3, 0.1), abs=1e-9)
    # The optical axis points where CameraPose says: forward, left by the yaw, down by the pitch.
    axis = rotation_grid_from_optical(pose) @ [0.0, 0.0, 1.0]
    assert axis == pytest.approx([math.cos(0.3) * math.cos(0.1), math.cos(0.3) * math.sin(0.1), -math.sin(0.3)])


@pytest.mark.parametrize("rpy", [(0.0, 0.0, 0.0), (0.05, 0.4, -0.7), (-0.2, -0.3, 2.5), (0.3, 1.2, -3.0)])
def test_pose_from_transform_inverts_the_projection_rotation(rpy):
    q = multiply(quaternion_from_rpy(*rpy), OPTICAL)
    pose = pose_from_transform(Transform(rotation=q))
    assert (pose.roll, pose.pitch, pose.yaw) == pytest.approx(rpy, abs=1e-9)
    assert np.allclose(rotation_grid_from_optical(pose), rotation_from_quaternion(q), atol=1e-12)


def test_pose_source_falls_back_or_refuses_by_mode():
    parameters = CameraPose(height=1.0, pitch=0.2)
    link = Transform(rotation=OPTICAL)
    link.translation.z = 2.0

    late = []

    def lookup(frame_id, stamp):
        if frame_id != "cam_optical" or late:
            raise LookupError(f"no transform from '{frame_id}' to 'base_link'")
        return link

    stamp = Header().stamp
    assert CameraPoseSource("parameters", parameters).pose("cam_optical", stamp) == parameters
    auto, tf = CameraPoseSource("auto", parameters, lookup), CameraPoseSource("tf", parameters, lookup)
    assert auto.pose("cam_optical", stamp).height == pytest.approx(2.0)
    assert auto.pose("other", stamp) == parameters and "other" in auto.last_problem
    assert auto.pose("cam_optical", stamp).height == pytest.approx(2.0) and auto.last_problem == ""
    assert tf.pose("other", stamp) is None  # no costmap rather than one from a wrong pose
    late.append(True)  # TF placed cam_optical before: a late transform skips the frame, never the parameters
    assert auto.pose("cam_optical", stamp) is None and "cam_optical" in auto.last_problem


def test_closing_a_pose_source_leaves_the_node_as_it_was(graph_node):
    """The managed node closes its pose source on every cleanup (and a failed configure): closing one without
    TF subscriptions is harmless, twice too, and takes nothing of the node's."""
    node = graph_node()
    node.create_subscription(Header, "other", lambda msg: None, 1)
    parameters = CameraPose(height=1.0)
    sources = [CameraPoseSource("parameters", parameters),
               open_pose_source(node, "parameters", "base_link", 0.1, parameters)]
    for source in sources:
        source.close()
        source.close()
        assert source.listener is None and source.pose("cam_optical", Header().stamp) == parameters
    assert [s.topic_name for s in node.subscriptions] == ["/other"]


def test_label_info_is_skipped_with_one_line_without_vision_msgs(graph_node, capfd):
    if importlib.util.find_spec("vision_msgs") is not None:
        pytest.skip("vision_msgs is installed here (test_node_graph_dds covers publishing)")
    from seg_perception.ros.label_info import publish_label_info

    assert publish_label_info(graph_node(), ("road", "car")) is None
    assert "vision_msgs is not installed: no semantic_mask/label_info" in capfd.readouterr().err


# --- compressed outputs ----------------------------------------------------------------------------
def test_compressed_outputs_round_trip():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 19, (48, 80), np.uint8)
    header = Header(frame_id="cam")
    png = CompressedOut("mono8", "png").fill(header, mask)
    assert png.format == "mono8; png compressed mono8" and png.header.frame_id == "cam"
    assert np.array_equal(cv2.imdecode(np.frombuffer(png.data, np.uint8), cv2.IMREAD_UNCHANGED), mask)  # lossless

    yy, xx = np.mgrid[0:48, 0:80]
    rgb = np.stack([xx * 3, yy * 5, np.full_like(xx, 200)], -1).astype(np.uint8)
    for fmt, tolerance in (("png", 0), ("jpeg", 12)):
        msg = CompressedOut("rgb8", fmt, jpeg_quality=95).fill(header, rgb)
        assert msg.format == f"rgb8; {fmt} compressed bgr8"
        bgr = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
        assert np.abs(bgr[..., ::-1].astype(int) - rgb).max() <= tolerance


# --- viewers ---------------------------------------------------------------------------------------
def _output_topics() -> set[str]:
    from seg_perception.core.costmap import layer_topic
    from seg_perception.core.node_params import PARAMETERS

    images = {"semantic_mask", "semantic_mask/color", "semantic_mask/overlay"}
    layers = {layer_topic(name) for name in ["", *PARAMETERS["costmap_classes"].default]}
    return images | {t + "/compressed" for t in images} | layers | {"semantic_mask/latency", "semantic_points"}


def test_rviz_config_shows_what_the_node_publishes_with_matching_qos():
    import yaml

    config = yaml.safe_load((REPO / "config" / "seg.rviz").read_text())

    def displays(items):
        for item in items:
            yield from displays(item.get("Displays", []))
            if "Topic" in item:
                yield item

    shown = {d["Topic"]["Value"]: d for d in displays(config["Visualization Manager"]["Displays"])}
    assert {"semantic_mask/overlay", "semantic_costmap", "semantic_costmap/road"} <= set(shown) <= _output_topics()
    for topic, display in shown.items():
        if display["Class"] == "rviz_default_plugins/Map":  # a volatile Map display would get nothing
            assert display["Topic"]["Durability Policy"] == "Transient Local"
    assert config["Visualization Manager"]["Global Options"]["Fixed Frame"] == "base_link"


def test_foxglove_layout_panels_point_at_the_node_topics():
    import json

    layout = json.loads((REPO / "config" / "foxglove_layout.json").read_text())
    panels = layout["configById"]
    topics = {p["imageMode"]["imageTopic"] for k, p in panels.items() if k.startswith("Image!")}
    topics |= {t for k, p in panels.items() if k.startswith("3D!") for t in p["topics"]}
    topics |= {p["topicPath"] for k, p in panels.items() if k.startswith("RawMessages!")}
    assert {t.removeprefix("/") for t in topics} <= _output_topics()
    assert any(p.get("topicToRender") == "/diagnostics" for p in panels.values())

    def leaves(node):
        return [node] if isinstance(node, str) else leaves(node["first"]) + leaves(node["second"])

    assert sorted(leaves(layout["layout"])) == sorted(panels)  # every panel is placed, none dangles
