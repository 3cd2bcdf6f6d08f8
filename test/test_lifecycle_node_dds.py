"""seg_lifecycle_node (the managed seg_node) as a real process, driven through its lifecycle_msgs services by a
real client over Fast DDS, as nav2_lifecycle_manager drives it: nothing is published or subscribed before
activation, frames are served while active and no longer taken after deactivation, a configure that fails leaves
the process up with the reason logged, and a shutdown transition ends the process with exit code 0."""

from __future__ import annotations

import time

import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ros_interfaces import built_interfaces, interfaces_env  # noqa: E402
from seg_perception.labels import CITYSCAPES_CLASSES  # noqa: E402
from test_node_dds import half_road, image_msg, peer, rgb_frame, serve_until_ready, start_node  # noqa: E402,F401
from test_node_graph_dds import late_label_info, wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(180)
MANAGED = "seg_perception.ros.lifecycle_node"
OUTPUTS = ("/semantic_mask", "/semantic_mask/confidence", "/semantic_mask/color", "/semantic_mask/camera_info",
           "/diagnostics")


class Lifecycle:
    """A lifecycle_msgs client of one node, as nav2_lifecycle_manager is."""

    def __init__(self, peer, node_name: str) -> None:
        self.peer = peer
        self.change = peer.node.create_client(ChangeState, f"{node_name}/change_state")
        self.get = peer.node.create_client(GetState, f"{node_name}/get_state")

    def _call(self, client, request, timeout: float = 60.0):
        assert client.wait_for_service(timeout_sec=timeout), f"no {client.srv_name} service"
        future = client.call_async(request)  # the peer's executor thread completes it
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done(), f"{client.srv_name} did not answer within {timeout} s"
        return future.result()

    def state(self) -> str:
        return self._call(self.get, GetState.Request()).current_state.label

    def transition(self, transition_id: int) -> bool:
        return self._call(self.change, ChangeState.Request(transition=Transition(id=transition_id))).success


def image_subscribers(peer) -> int:
    return peer.node.count_subscribers("/image_raw")


def test_managed_node_serves_only_while_active_and_survives_a_failed_configure(half_road, peer, start_node,
                                                                               ros_env, tmp_path):
    env = interfaces_env(ros_env, built_interfaces("vision_msgs"))  # label_info needs vision_msgs
    bad = start_node(dict(model=str(tmp_path / "missing.onnx")), name="seg_bad", module=MANAGED,
                     ros_args=("-r", "__node:=seg_bad"))
    node = start_node(dict(model=str(half_road), camera_info_topic="", fx=80.0, diagnostics_period=0.2,
                           trace_file=str(tmp_path / "trace.json")), module=MANAGED, env=env)
    for topic in OUTPUTS:
        peer.subscribe(DiagnosticArray if topic == "/diagnostics" else Image, topic)
    camera = peer.publisher(Image, "/image_raw")
    frame = rgb_frame()
    lifecycle = Lifecycle(peer, "/seg_node")

    # Unconfigured: the lifecycle services answer, nothing else exists.
    assert lifecycle.state() == "unconfigured"
    assert peer.node.count_publishers("/semantic_mask") == 0 and image_subscribers(peer) == 0

    # Inactive: model loaded and publishers made, but no image subscription and nothing published.
    assert lifecycle.transition(Transition.TRANSITION_CONFIGURE)
    assert lifecycle.state() == "inactive"
    wait_for("seg_node's publishers", lambda: peer.node.count_publishers("/semantic_mask"), 10)
    camera.publish(image_msg(frame, peer.now()))
    assert late_label_info(env, wait_s=3.0) is None  # also many diagnostics periods
    assert image_subscribers(peer) == 0
    assert {topic: peer.messages(topic) for topic in OUTPUTS} == {topic: [] for topic in OUTPUTS}

    # Active: frames are served, diagnostics name the node, label_info is latched for late joiners.
    assert lifecycle.transition(Transition.TRANSITION_ACTIVATE)
    assert lifecycle.state() == "active"
    wait_for("the image subscription", lambda: image_subscribers(peer), 10)
    stamp = serve_until_ready(peer, camera, lambda s: image_msg(frame, s), timeout=30)
    mask = peer.find("/semantic_mask", stamp)
    assert (mask.height, mask.width, mask.encoding) == (frame.shape[0], frame.shape[1], "mono8")
    diagnostics = wait_for("diagnostics", lambda: peer.messages("/diagnostics"), 10)
    assert diagnostics[-1].status[0].name == "/seg_node: semantic segmentation"
    assert late_label_info(env) == [[i, n] for i, n in enumerate(CITYSCAPES_CLASSES)]

    # Inactive again: the subscription goes, frames sent now are not taken, nothing more is published.
    assert lifecycle.transition(Transition.TRANSITION_DEACTIVATE)
    wait_for("the image subscription to go", lambda: image_subscribers(peer) == 0, 10)
    served = len(peer.messages("/semantic_mask"))
    time.sleep(0.3)  # a diagnostics message in flight at the transition
    published = {topic: len(peer.messages(topic)) for topic in OUTPUTS}
    late = peer.now()
    camera.publish(image_msg(frame, late))
    time.sleep(1.0)
    assert {topic: len(peer.messages(topic)) for topic in OUTPUTS} == published
    assert len(peer.messages("/semantic_mask")) == served

    # Cleanup releases the model and the publishers; the process waits to be configured again.
    assert lifecycle.transition(Transition.TRANSITION_CLEANUP)
    assert lifecycle.state() == "unconfigured"
    wait_for("the publishers to go", lambda: peer.node.count_publishers("/semantic_mask") == 0, 10)
    assert (tmp_path / "trace.json").is_file()  # closing wrote the trace, as the plain node's shutdown does

    # Configured again, it serves again; a shutdown from active ends the process with 0 and writes the trace.
    (tmp_path / "trace.json").unlink()
    assert lifecycle.transition(Transition.TRANSITION_CONFIGURE)
    assert lifecycle.transition(Transition.TRANSITION_ACTIVATE)
    serve_until_ready(peer, camera, lambda s: image_msg(frame, s), timeout=30)
    assert lifecycle.transition(Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert node.proc.wait(timeout=20) == 0, node.output()
    assert (tmp_path / "trace.json").is_file()

    # A configure that fails: FAILURE, the one-line reason in the log, the node still up and unconfigured; a
    # shutdown from there exits 0 too.
    bad_lifecycle = Lifecycle(peer, "/seg_bad")
    assert not bad_lifecycle.transition(Transition.TRANSITION_CONFIGURE)
    assert bad_lifecycle.state() == "unconfigured" and bad.proc.poll() is None
    assert "cannot configure: model file not found: " in bad.output() and "Traceback" not in bad.output()
    assert bad_lifecycle.transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
    assert bad.proc.wait(timeout=20) == 0, bad.output()
