"""seg_node in a robot's graph, over real DDS: namespaces and remaps move its inputs, two cameras' diagnostics stay
apart and describe the current window, costmaps and LabelInfo reach late subscribers, compressed outputs decode.

Nodes run as real processes (`start_node` from test_node_dds) on the half-road model; LabelInfo uses vision_msgs'
LabelInfo and VisionClass built from their published definitions (test/interfaces/vision_msgs, cached build).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from nav_msgs.msg import OccupancyGrid  # noqa: E402
from rclpy.qos import DurabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from test_node_dds import half_road, image_msg, peer, rgb_frame, serve_until_ready, start_node  # noqa: E402,F401

from ros_interfaces import built_interfaces, interfaces_env  # noqa: E402
from seg_perception.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE  # noqa: E402
from seg_perception.ros.topics import LATCHED  # noqa: E402

pytestmark = pytest.mark.timeout(240)

# vision_msgs 4.x (Jazzy) as built upstream: share/vision_msgs/msg/LabelInfo.json of a Jazzy vision_msgs build.
UPSTREAM_HASHES = {
    "vision_msgs/msg/LabelInfo": "RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
    "vision_msgs/msg/VisionClass": "RIHS01_1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a",
}
STATUS = "/{}/seg_node: semantic segmentation"


def wait_for(what: str, check, timeout: float, feed=None):
    """Poll `check()` until it returns something truthy; `feed()` runs between polls (e.g. a camera at ~10 Hz)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if feed is not None:
            feed()
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_status(peer, name: str, level, text: str, timeout: float = 15.0, feed=None, since: int | None = None
                ) -> DiagnosticStatus:
    """The first status `name` at `level` whose message holds `text`, among those received after message `since`
    (default: from now on, so that an earlier window cannot answer)."""
    start = len(peer.messages("/diagnostics")) if since is None else since

    def check():
        for msg in peer.messages("/diagnostics")[start:]:
            for status in msg.status:
                if status.name == name and status.level == level and text in status.message:
                    return status
        return None

    try:
        return wait_for(f"{name} at level {level} with '{text}'", check, timeout, feed)
    except AssertionError:
        seen = [(s.level, s.message) for m in peer.messages("/diagnostics")[start:] for s in m.status if s.name == name]
        raise AssertionError(f"{name} never reached level {level} with '{text}'; seen: {seen[-5:]}") from None


def test_namespaces_remaps_and_per_camera_diagnostics_of_the_current_window(half_road, peer, start_node):
    params = dict(model=str(half_road), diagnostics_period=0.25, stale_timeout=1.0)
    peer.subscribe(DiagnosticArray, "/diagnostics")
    for ns in ("robot1", "robot2"):
        peer.subscribe(Image, f"/{ns}/semantic_mask")
    start_node(params, ("-r", "__ns:=/robot1"), name="robot1")
    # The second camera: its image comes from a driver elsewhere, remapped onto the node's relative input.
    start_node(params, ("-r", "__ns:=/robot2", "-r", "image_raw:=/cams/front/image_color"), name="robot2")

    # Start-up: WARN until the first frame, each under its own fully qualified name.
    wait_status(peer, STATUS.format("robot1"), DiagnosticStatus.WARN,
                "waiting for the first frame on /robot1/image_raw", timeout=60, since=0)
    wait_status(peer, STATUS.format("robot2"), DiagnosticStatus.WARN,
                "waiting for the first frame on /cams/front/image_color", timeout=60, since=0)
    graph = peer.node
    for topic in ("/robot1/image_raw", "/robot1/camera_info", "/cams/front/image_color", "/cams/front/camera_info"):
        wait_for(f"a subscriber on {topic}", lambda t=topic: graph.count_subscribers(t) == 1, 10)
    assert graph.count_subscribers("/camera/image_raw") == graph.count_subscribers("/image_raw") == 0

    cams = {"robot1": (peer.publisher(Image, "/robot1/image_raw"), "front_optical"),
            "robot2": (peer.publisher(Image, "/cams/front/image_color"), "rear_optical")}
    rgb = rgb_frame()
    for ns, (pub, frame) in cams.items():
        serve_until_ready(peer, pub, lambda s, f=frame: image_msg(rgb, s, frame_id=f), topic=f"/{ns}/semantic_mask")

    def camera():
        for pub, frame in cams.values():
            pub.publish(image_msg(rgb, peer.now(), frame_id=frame))

    # Frames flow: OK, and hardware_id names the camera.
    for ns, (_, frame) in cams.items():
        status = wait_status(peer, STATUS.format(ns), DiagnosticStatus.OK, "Hz in", feed=camera)
        assert status.hardware_id == frame

    # One bad frame turns that window WARN, and only that window (not the node's lifetime).
    bad = image_msg(rgb, peer.now(), frame_id="front_optical")
    bad.data = bad.data[:-100]
    time.sleep(0.2)  # the frame slot keeps only the newest frame: let the last good one through first
    cams["robot1"][0].publish(bad)
    wait_status(peer, STATUS.format("robot1"), DiagnosticStatus.WARN, "1 frames rejected")
    status = wait_status(peer, STATUS.format("robot1"), DiagnosticStatus.OK, "Hz in", feed=camera)
    assert {kv.key: kv.value for kv in status.values}["rejected"] == "1"  # the lifetime total stays in the values

    # No input for longer than stale_timeout: WARN.
    wait_status(peer, STATUS.format("robot1"), DiagnosticStatus.WARN, "no frame on /robot1/image_raw for")
    wait_status(peer, STATUS.format("robot2"), DiagnosticStatus.WARN, "no frame on /cams/front/image_color for")


def test_late_subscribers_get_the_costmap_and_compressed_outputs_decode(half_road, peer, start_node):
    start_node(dict(model=str(half_road), camera_info_topic="", fx=80.0, camera_height=1.0, camera_pitch=0.3,
                    costmap_classes=["road"], publish_compressed=True, compressed_format="png"))
    for topic, msg_type in {"/semantic_costmap": OccupancyGrid, "/semantic_mask": Image,
                            "/semantic_mask/compressed": CompressedImage,
                            "/semantic_mask/color/compressed": CompressedImage}.items():
        peer.subscribe(msg_type, topic)
    pub = peer.publisher(Image, "/image_raw")
    rgb = rgb_frame()
    serve_until_ready(peer, pub, lambda s: image_msg(rgb, s), topic="/semantic_costmap")
    time.sleep(0.3)  # every output subscription matched
    stamp = peer.now()
    pub.publish(image_msg(rgb, stamp))
    grid = peer.find("/semantic_costmap", stamp)
    mask = np.frombuffer(peer.find("/semantic_mask", stamp).data, np.uint8).reshape(96, 160)
    png = peer.find("/semantic_mask/compressed", stamp)
    assert png.format == "mono8; png compressed mono8"
    assert np.array_equal(cv2.imdecode(np.frombuffer(png.data, np.uint8), cv2.IMREAD_UNCHANGED), mask)
    color = peer.find("/semantic_mask/color/compressed", stamp)
    bgr = cv2.imdecode(np.frombuffer(color.data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(bgr[..., ::-1], np.asarray(CITYSCAPES_PALETTE, np.uint8)[mask])

    (endpoint,) = peer.node.get_publishers_info_by_topic("/semantic_costmap")
    assert endpoint.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
    # No new frame: a subscriber joining now still gets the last map, as RViz and Nav2 ask for it.
    late = []
    peer.node.create_subscription(OccupancyGrid, "/semantic_costmap", late.append, LATCHED)
    wait_for("the latched costmap", lambda: late, 10)
    assert late[0].header.stamp == stamp and list(late[0].data) == list(grid.data)


LATE_LABEL_INFO_SUBSCRIBER = """
import json, sys, time
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from vision_msgs.msg import LabelInfo
rclpy.init(domain_id=int(sys.argv[1]))
node = rclpy.create_node("label_info_listener")
got = []
node.create_subscription(LabelInfo, sys.argv[2], got.append, QoSProfile(
    depth=int(sys.argv[3]), reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
deadline = time.monotonic() + 30
while not got and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.1)
    # argv[4], optional: give up this many seconds after the publisher is discovered
    if len(sys.argv) > 4 and node.count_publishers(sys.argv[2]) and deadline - time.monotonic() > float(sys.argv[4]):
        deadline = time.monotonic() + float(sys.argv[4])
print(json.dumps([[c.class_id, c.class_name] for c in got[0].class_map] if got else None))
"""


def late_label_info(env: dict, topic: str = "/semantic_mask/label_info", depth: int = 1,
                    wait_s: float | None = None) -> list | None:
    """The class map, as [[class_id, class_name], ...], that a LabelInfo subscriber (reliable + transient local,
    queue `depth`) started now in its own process receives within 30 s (or within `wait_s` of discovering the
    publisher); None if nothing came."""
    listener = subprocess.run([sys.executable, "-c", LATE_LABEL_INFO_SUBSCRIBER, env["ROS_DOMAIN_ID"], topic,
                               str(depth), *([] if wait_s is None else [str(wait_s)])],
                              env=env, capture_output=True, text=True, timeout=60)
    assert listener.returncode == 0, listener.stderr
    return json.loads(listener.stdout.strip().splitlines()[-1])


def test_label_info_from_the_model_card_reaches_a_late_subscriber(half_road, peer, start_node, ros_env):
    prefix = built_interfaces("vision_msgs")
    for type_name, upstream in UPSTREAM_HASHES.items():  # wire-compatible with every vision_msgs install
        description = json.loads((prefix / "share" / f"{type_name}.json").read_text())
        assert description["type_hashes"][0] == {"type_name": type_name, "hash_string": upstream}
    env = interfaces_env(ros_env, prefix)
    node = start_node(dict(model=str(half_road)), env=env)
    endpoints = wait_for("the LabelInfo publisher",
                         lambda: peer.node.get_publishers_info_by_topic("/semantic_mask/label_info"), 60)
    assert endpoints[0].topic_type == "vision_msgs/msg/LabelInfo"
    assert str(endpoints[0].topic_type_hash) == UPSTREAM_HASHES["vision_msgs/msg/LabelInfo"]
    assert endpoints[0].qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
    time.sleep(0.5)  # published at start-up, before this subscriber exists
    assert late_label_info(env) == [[i, n] for i, n in enumerate(CITYSCAPES_CLASSES)]
    assert "vision_msgs is not installed" not in node.output()
