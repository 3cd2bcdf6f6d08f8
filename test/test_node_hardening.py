"""seg_node against hostile input, as a real process on a real DDS domain: bad CameraInfo, oversized and malformed
frames, a signal while a slow inference runs, and parameters that must stop start-up with one line."""

from __future__ import annotations

import json
import math
import signal
import time

import numpy as np
import onnx
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import OccupancyGrid  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from test_node_dds import (CAM_H, CAM_W, half_road, half_road_onnx, image_msg, peer, rgb_frame,  # noqa: E402,F401
                           serve_until_ready, start_node, wait_diagnostics)

pytestmark = pytest.mark.timeout(240)


def camera_info(height: int = CAM_H, width: int = CAM_W, f: float = 80.0) -> CameraInfo:
    info = CameraInfo(height=height, width=width, distortion_model="plumb_bob")
    info.k = [f, 0.0, (width - 1) / 2, 0.0, f, (height - 1) / 2, 0.0, 0.0, 1.0]
    info.d = [0.0] * 5
    return info


def test_bad_camera_info_is_refused_counted_and_the_last_good_one_kept(half_road, peer, start_node):
    node = start_node(dict(model=str(half_road), threads=1, diagnostics_period=0.2, camera_pitch=0.3,
                           camera_height=1.0, costmap_size_x=6.0, costmap_size_y=4.0, costmap_origin_y=-2.0))
    for topic, msg_type in {"/semantic_costmap": OccupancyGrid, "/semantic_mask/camera_info": CameraInfo,
                            "/diagnostics": DiagnosticArray}.items():
        peer.subscribe(msg_type, topic)
    pub = peer.publisher(Image, "/image_raw")
    info_pub = peer.publisher(CameraInfo, "/camera_info", reliable=True)
    rgb = rgb_frame()

    def frame(stamp, info=camera_info()):
        info_pub.publish(info)
        return image_msg(rgb, stamp)

    stamp = serve_until_ready(peer, pub, frame, topic="/semantic_costmap")
    good_cells = np.asarray(peer.find("/semantic_costmap", stamp).data, np.int8)
    good_k = list(peer.find("/semantic_mask/camera_info", stamp).k)
    assert (good_cells != -1).any()

    bad = [camera_info(), camera_info(), camera_info(), camera_info(), camera_info(), camera_info(0, 0),
           camera_info(100, 100)]
    bad[0].k[4] = -80.0  # fx > 0, fy <= 0: an uncaught ValueError ended the node before
    bad[1].k[2] = math.nan
    bad[2].d[1] = math.inf
    bad[3].k[6] = 0.5
    bad[4].distortion_model, bad[4].d = "fisheye62", [0.1] * 5  # a raw image's lens the node cannot model
    reasons = ["fx > 0 and fy > 0", "K holds NaN or inf", "D holds NaN or inf", "not a camera matrix",
               "distortion model 'fisheye62' is not one of", "no image size",
               "another aspect ratio"]  # the last: 100x100 intrinsics for 160x96 frames
    for i, (info, reason) in enumerate(zip(bad, reasons)):
        info_pub.publish(info)
        time.sleep(0.3)
        stamp = peer.now()
        pub.publish(frame(stamp, info))  # sent again right before the frame
        grid = peer.find("/semantic_costmap", stamp)
        assert np.array_equal(np.asarray(grid.data, np.int8), good_cells), reason  # the last good intrinsics
        assert list(peer.find("/semantic_mask/camera_info", stamp).k) == good_k
        diag = wait_diagnostics(peer, "last_problem", lambda v, r=reason: r in v)
        assert int(diag["camera_info_rejected"]) >= i + 1 and diag["rejected"] == diag["errors"] == "0"
    assert node.proc.poll() is None
    assert "ignoring CameraInfo on /camera_info: K needs fx > 0" in node.output()
    rc, _ = node.stop(signal.SIGTERM)
    assert rc == 0, node.log.read_text(errors="replace")


def test_an_image_rect_topic_projects_through_p_not_k(half_road, peer, start_node):
    """image_proc's image_rect: the costmap and semantic_mask/camera_info use P's 3x3 (here half K's focal length)
    and no distortion, whatever D says."""
    from seg_perception.eval.bag_eval import node_projector
    from seg_perception.labels import CITYSCAPES_CLASSES

    params = dict(camera_pitch=0.3, camera_height=1.0, costmap_size_x=6.0, costmap_size_y=4.0, costmap_origin_y=-2.0)
    start_node(dict(model=str(half_road), threads=1, input_topic="image_rect", **params))
    for topic, msg_type in {"/semantic_costmap": OccupancyGrid, "/semantic_mask/camera_info": CameraInfo,
                            "/semantic_mask": Image}.items():
        peer.subscribe(msg_type, topic)
    pub = peer.publisher(Image, "/image_rect")
    info_pub = peer.publisher(CameraInfo, "/camera_info", reliable=True)
    info = camera_info(f=80.0)
    info.distortion_model, info.d = "no_such_lens", [-0.3, 0.1]  # the raw lens: image_rect has none left
    p = np.array([[40.0, 0, 70.0, 0], [0, 40.0, 50.0, 0], [0, 0, 1, 0]])
    info.p = p.ravel().tolist()

    def frame(stamp):
        info_pub.publish(info)
        return image_msg(rgb_frame(), stamp)

    stamp = serve_until_ready(peer, pub, frame, topic="/semantic_costmap")
    cells = np.asarray(peer.find("/semantic_costmap", stamp).data, np.int8)
    out_info = peer.find("/semantic_mask/camera_info", stamp)
    assert np.allclose(np.reshape(out_info.k, (3, 3)), p[:, :3]) and list(out_info.d) == []
    mask = peer.find("/semantic_mask", stamp)
    labels = np.frombuffer(mask.data, np.uint8).reshape(mask.height, mask.width)
    expected = {}
    for name, k in (("P", p[:, :3]), ("K", np.reshape(info.k, (3, 3)))):
        projector, _ = node_projector(params, CITYSCAPES_CLASSES)
        projector.set_intrinsics(k, (CAM_H, CAM_W))
        expected[name] = projector.project(labels, (CAM_H, CAM_W))[""].ravel()
    assert np.array_equal(cells, expected["P"]) and not np.array_equal(cells, expected["K"])


def test_oversized_and_odd_width_yuv_frames_are_rejected_with_a_reason(half_road, peer, start_node):
    node = start_node(dict(model=str(half_road), threads=1, diagnostics_period=0.2, camera_info_topic="",
                           max_input_pixels=CAM_H * CAM_W))
    peer.subscribe(Image, "/semantic_mask")
    peer.subscribe(DiagnosticArray, "/diagnostics")
    pub = peer.publisher(Image, "/image_raw")
    rgb = rgb_frame()
    serve_until_ready(peer, pub, lambda s: image_msg(rgb, s))
    big = np.zeros((CAM_H, CAM_W + 2, 3), np.uint8)
    odd_yuv = np.zeros((CAM_H, 33, 2), np.uint8)
    for i, (msg, reason) in enumerate([(image_msg(big, peer.now()), f"{CAM_W + 2}x{CAM_H} image is"),
                                       (image_msg(odd_yuv, peer.now(), encoding="yuv422"), "width must be even")]):
        pub.publish(msg)
        diag = wait_diagnostics(peer, "rejected", lambda v, n=i + 1: int(v) == n)
        assert reason in diag["last_problem"] and diag["errors"] == "0", diag
        stamp = peer.now()
        pub.publish(image_msg(rgb, stamp))
        peer.find("/semantic_mask", stamp)
    assert not any(m.width == CAM_W + 2 for m in peer.messages("/semantic_mask"))  # nothing decoded or published
    rc, _ = node.stop(signal.SIGTERM)
    assert rc == 0, node.log.read_text(errors="replace")


def test_a_signal_during_a_slow_inference_ends_the_node_cleanly_with_its_trace(peer, start_node, tmp_path):
    slow = half_road_onnx(tmp_path / "slow.onnx", (32, 64), slow_matmuls=1500)  # ~2.5 s per frame on one core
    trace_file = tmp_path / "trace.json"
    node = start_node(dict(model=str(slow), threads=1, warmup_frames=0, camera_info_topic="",
                           trace_file=str(trace_file)))
    peer.subscribe(Image, "/semantic_mask")
    pub = peer.publisher(Image, "/image_raw")
    rgb = rgb_frame()
    deadline = time.monotonic() + 120.0
    while not peer.messages("/semantic_mask"):  # frames keep coming while the first one is segmented
        assert time.monotonic() < deadline, f"no mask in 120 s\n{node.output()}"
        pub.publish(image_msg(rgb, peer.now()))
        time.sleep(0.3)
    time.sleep(0.5)  # the worker took the newest frame as soon as it published: an inference is in flight
    rc, seconds = node.stop(signal.SIGTERM, timeout=60.0)
    out = node.log.read_text(errors="replace")
    assert rc == 0, f"exit {rc} after {seconds:.1f} s\n{out}"  # was SIGABRT: the backend closed under the worker
    assert "terminate called" not in out
    assert seconds < 5.0, f"the inference in flight held the shutdown for {seconds:.1f} s"
    events = json.loads(trace_file.read_text())["traceEvents"]
    assert any(e["name"] == "inference" and e["ph"] == "X" for e in events)


def test_best_effort_4k_frames_all_reach_the_node_through_the_shared_memory_profile(half_road, peer, start_node):
    node = start_node(dict(model=str(half_road), threads=1, diagnostics_period=0.2, camera_info_topic=""))
    peer.subscribe(DiagnosticArray, "/diagnostics")
    pub = peer.node.create_publisher(Image, "/image_raw", rclpy.qos.qos_profile_sensor_data)  # a camera's
    wait_diagnostics(peer, "frames_in", lambda v: v == "0", timeout=60.0)
    deadline = time.monotonic() + 20.0
    while pub.get_subscription_count() == 0:
        assert time.monotonic() < deadline, "seg_node never subscribed"
        time.sleep(0.1)
    time.sleep(0.5)
    frame = image_msg(np.zeros((2160, 3840, 3), np.uint8), peer.now(), encoding="bgr8")  # 24.9 MB
    for _ in range(10):  # nobody subscribes to the outputs, so the node only counts them
        frame.header.stamp = peer.now()
        pub.publish(frame)
        time.sleep(0.5)  # 2 Hz: the 128-slot queue lost most 4K frames at any rate; leave headroom for a busy CPU
    diag = wait_diagnostics(peer, "frames_in", lambda v: v == "10", timeout=10.0)  # was 1 to 3 of 10
    assert diag["rejected"] == "0"
    node.stop(signal.SIGTERM)


@pytest.mark.parametrize("case, named", [
    ("topic", "parameter 'input_topic': '/camera/image raw' is not a valid topic name"),
    ("info_topic", "parameter 'camera_info_topic': 'cam//info' is not a valid topic name"),
    ("grid", "parameter 'costmap_resolution': a 1000 m x 1000 m grid at 0.01 m is 1e+10 cells"),
    ("trace_suffix", "parameter 'trace_file': 'trace.txt' must end in one of .json"),
    ("trace_unwritable", "parameter 'trace_file': cannot create"),
    ("zoo", "parameter 'model': zoo name 'metaseg-t' without a checkpoint would run random weights"),
    ("sidecar", "unreadable (not a JSON object"),
    ("metadata", "input_size ['big'] is not [height, width]"),
])
def test_bad_start_up_settings_give_one_cannot_start_line(half_road, start_node, tmp_path, case, named):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    (tmp_path / "model.engine.json").write_text("[]")
    params = {"topic": dict(input_topic="/camera/image raw"), "info_topic": dict(camera_info_topic="cam//info"),
              "grid": dict(costmap_resolution=0.01, costmap_size_x=1000.0, costmap_size_y=1000.0),
              "trace_suffix": dict(trace_file="trace.txt"),
              "trace_unwritable": dict(trace_file=str(not_a_folder / "trace.json")),
              "zoo": dict(model="metaseg-t"), "sidecar": dict(model=str(engine)),
              "metadata": dict(model=str(tmp_path / "bad_metadata.onnx"))}[case]
    if case == "metadata":  # a model file whose metadata claims nonsense
        model = onnx.load(str(half_road))
        next(p for p in model.metadata_props if p.key == "seg_perception.input_size").value = '["big"]'
        onnx.save(model, str(tmp_path / "bad_metadata.onnx"))
    node = start_node({"model": str(half_road), "warmup_frames": 0, **params})
    rc = node.proc.wait(60)
    out = node.output()
    assert rc == 2 and "cannot start: " in out and named in out, out
    assert "Traceback" not in out
