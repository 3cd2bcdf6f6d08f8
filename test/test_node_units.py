"""The node's ROS-light parts: the latest-frame slot, message conversions, parameter table and config/seg.yaml."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from seg_perception.core.costmap import GridSpec
from seg_perception.core.frame_slot import LatestFrameSlot

REPO = Path(__file__).resolve().parent.parent


# --- latest-frame slot -----------------------------------------------------------------------------
def test_slot_keeps_only_the_newest_frame_and_counts_drops():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.take(timeout=0) == 3
    assert slot.take(timeout=0.01) is None
    assert (slot.counts.put, slot.counts.taken, slot.counts.dropped) == (3, 1, 2)


def test_slot_under_a_fast_producer_serves_recent_frames_with_bounded_lag():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    served = []

    def worker():
        while (item := slot.take(timeout=1.0)) is not None:
            served.append((item, latest[0]))
            time.sleep(0.01)  # "inference"

    latest = [0]
    thread = threading.Thread(target=worker)
    thread.start()
    for i in range(1, 401):
        latest[0] = i
        slot.put(i)
        time.sleep(0.0005)
    time.sleep(0.05)
    slot.close()
    thread.join(2)
    assert not thread.is_alive()
    assert served[-1][0] == 400  # the newest frame is always served
    assert slot.counts.dropped == 400 - len(served) and len(served) < 200
    # When a frame is taken it is the newest one published so far.
    assert all(newest - item <= 1 for item, newest in served)


def test_slot_close_wakes_a_waiting_worker():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    result = []
    thread = threading.Thread(target=lambda: result.append(slot.take()))
    thread.start()
    time.sleep(0.05)
    slot.close()
    thread.join(1)
    assert result == [None] and slot.closed


# --- conversions -----------------------------------------------------------------------------------
def test_transport_is_left_out_when_stamps_are_not_live():
    node = pytest.importorskip("seg_perception.ros.node")
    arrival = 5_000_000_000_000
    assert node.transport_start(arrival, 3_000_000) == arrival - 3_000_000  # 3 ms camera -> callback
    assert node.transport_start(arrival, -2_000_000) == arrival  # camera clock a little ahead: zero, not negative
    year = 365 * 86_400 * 1_000_000_000
    assert node.transport_start(arrival, 3 * year) is None  # a replayed bag's recording time
    assert node.transport_start(arrival, -year) is None


def test_image_out_refills_one_buffer_without_copies_into_the_message():
    conv = pytest.importorskip("seg_perception.ros.conversions")
    from std_msgs.msg import Header

    out = conv.ImageOut("rgb8")
    header = Header(frame_id="cam")
    a = np.random.default_rng(0).integers(0, 255, (6, 10, 3), np.uint8)
    msg = out.fill(header, a[:, ::-1])  # a non-contiguous view is copied once
    buffer = msg.data
    assert (msg.height, msg.width, msg.step, msg.encoding) == (6, 10, 30, "rgb8")
    assert np.array_equal(np.frombuffer(msg.data, np.uint8).reshape(6, 10, 3), a[:, ::-1])
    msg = out.fill(header, a)
    assert msg.data is buffer  # same size: refilled in place
    assert np.array_equal(np.frombuffer(msg.data, np.uint8).reshape(6, 10, 3), a)
    msg = out.fill(header, a[:3])
    assert msg.height == 3 and len(msg.data) == 90


def test_grid_out_and_scaled_camera_info():
    conv = pytest.importorskip("seg_perception.ros.conversions")
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header

    grid = GridSpec(resolution=0.5, size_x=3.0, size_y=2.0, origin_x=1.0, origin_y=-1.0, frame="odom")
    out = conv.GridOut(grid)
    cells = np.arange(24, dtype=np.int8).reshape(4, 6)
    stamp = Header().stamp
    stamp.sec = 7
    msg = out.fill(stamp, cells)
    assert (msg.info.width, msg.info.height, msg.header.frame_id, msg.header.stamp.sec) == (6, 4, "odom", 7)
    assert (msg.info.origin.position.x, msg.info.origin.position.y) == (1.0, -1.0)
    assert list(msg.data) == list(range(24))

    k = conv.k_matrix(100.0, 100.0, 319.5, 239.5)
    info = conv.scaled_camera_info(CameraInfo(), k, (480, 640), (240, 320), Header(frame_id="cam"))
    assert (info.height, info.width) == (240, 320)
    assert np.allclose(np.reshape(info.k, (3, 3)), [[50, 0, 159.5], [0, 50, 119.5], [0, 0, 1]])
    assert np.allclose(np.reshape(info.p, (3, 4))[:, :3], np.reshape(info.k, (3, 3)))
    # The message is reused: after a CameraInfo with distortion, the fallback intrinsics must not keep it.
    source = CameraInfo(distortion_model="plumb_bob", d=[0.1, 0.2, 0.0, 0.0, 0.0], p=[100.0] + [0.0] * 11)
    conv.scaled_camera_info(info, k, (480, 640), (240, 320), Header(frame_id="cam"), source)
    assert info.distortion_model == "plumb_bob"
    conv.scaled_camera_info(info, k, (480, 640), (240, 320), Header(frame_id="cam"))
    assert (info.distortion_model, list(info.d)) == ("", [])
    # A rectified image (K given as P's 3x3) has no distortion left, whatever the raw lens was.
    conv.scaled_camera_info(info, k, (480, 640), (240, 320), Header(frame_id="cam"), source, rectified=True)
    assert (info.distortion_model, list(info.d)) == ("", []) and info.p[0] == 50.0


# --- parameters and config/seg.yaml ----------------------------------------------------------------
def test_config_yaml_documents_every_parameter_with_its_default():
    from seg_perception.core import node_params as params

    text = (REPO / "config" / "seg.yaml").read_text()
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert set(values) == set(params.PARAMETERS)
    for name, spec in params.PARAMETERS.items():
        assert values[name] == spec.default, name
        assert spec.description in text, f"{name} is not documented in config/seg.yaml"


@pytest.mark.parametrize("name, value, problem", [
    ("camera_height", -1.0, "-1.0 is outside [0.01, 100]"),
    ("input_depth", 0, "0 is outside [1, 100]"),
    ("costmap_resolution", "fine", "'fine' is not a number"),
    ("publish_overlay", True, None), ("default_cost", -1, None), ("camera_pitch", 0.3, None),
])
def test_the_parameter_table_checks_ranges_without_rclpy(name, value, problem):
    """Bag evaluation checks a parameters file with the table alone, so it refuses what rclpy refuses in the node."""
    from seg_perception.core.node_params import ParameterError, check

    if problem is None:
        check(name, value)
    else:
        with pytest.raises(ParameterError, match=re.escape(f"parameter '{name}': {problem}")):
            check(name, value)


def test_declare_reads_overrides_and_rejects_bad_values(ros_env):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    from seg_perception.core.node_params import ParameterError
    from seg_perception.ros.params import declare

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    try:
        def node(**overrides):
            return rclpy.create_node("seg_node", context=ctx, parameter_overrides=[
                Parameter(k, value=v) for k, v in overrides.items()])

        p = declare(node(input_type="compressed", input_topic="/cam/image", cost_table=["road:0", "traffic light:70"]))
        assert p.input_topic == "/cam/image"
        assert p.costs() == {"road": 0, "traffic light": 70}
        assert p.grid().width == 200 and p.pose().height == 1.2
        with pytest.raises(ParameterError, match="parameter 'backend'"):
            declare(node(backend="tflite"))
        with pytest.raises(ParameterError, match="parameter 'camera_height'"):
            declare(node(camera_height=-1.0))
        with pytest.raises(ParameterError, match="parameter 'cost_table'"):
            declare(node(cost_table=["road"])).costs()
    finally:
        rclpy.shutdown(context=ctx)


@pytest.mark.parametrize("overrides, options", [
    (dict(model="metaseg-t", device="cuda:1", precision="fp16", cuda_graphs=True),
     dict(device="cuda:1", precision="fp16", cuda_graphs=True)),
    (dict(providers="tensorrt,cuda", device="cuda"), dict(device="cuda", providers="tensorrt,cuda")),
    (dict(model="m.engine", threads=2), dict(device=0, threads=2)),
    (dict(model="m.onnx", backend="tensorrt", device="cuda:1"),
     dict(device=1, precision="fp16", rebuild=True, cache_dir=None)),
    (dict(device="gpu"), "device"),
    (dict(precision="fp16"), "precision"),  # the default model runs on ONNX Runtime
    (dict(precision="bf16", model="metaseg-t"), "precision"),
    (dict(cuda_graphs=True, model="m.engine"), "cuda_graphs"),
    (dict(providers="cuda", model="metaseg-t"), "providers"),
    (dict(providers="gpu"), "providers"),
    (dict(model="m.engine", device="cpu"), "device"),
    (dict(model="m.onnx", backend="torch"), "backend"),
    (dict(model="metaseg-t:ckpt.pth", trust_checkpoint=True),
     dict(device="auto", precision="fp32", cuda_graphs=False, trusted=True)),
    (dict(trust_checkpoint=True), "trust_checkpoint"),  # an ONNX file holds no pickle to trust
])
def test_backend_options_follow_the_backend_that_runs_the_model(ros_env, overrides, options):
    rclpy = pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    from seg_perception.core.node_params import ParameterError
    from seg_perception.ros.params import declare

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    try:
        node = rclpy.create_node("seg_node", context=ctx, parameter_overrides=[
            Parameter(k, value=v) for k, v in overrides.items()])
        if isinstance(options, dict):
            assert declare(node).backend_options() == options
        else:
            with pytest.raises(ParameterError, match=f"parameter '{options}'"):
                declare(node)
    finally:
        rclpy.shutdown(context=ctx)


# --- decoding limits -------------------------------------------------------------------------------
def test_compressed_size_is_read_from_the_header_and_checked_before_decoding():
    import cv2

    from seg_perception.core.image_codec import ImageDecodeError, ImageDecoder, compressed_size

    img = np.zeros((40, 60, 3), np.uint8)
    png = bytearray(cv2.imencode(".png", img)[1].tobytes())
    jpeg = bytearray(cv2.imencode(".jpg", img)[1].tobytes())
    assert compressed_size(np.frombuffer(bytes(png), np.uint8)) == (40, 60)
    assert compressed_size(np.frombuffer(bytes(jpeg), np.uint8)) == (40, 60)
    png[16:24] = (16000).to_bytes(4, "big") * 2  # a small file that claims 16000x16000
    sof = next(i for i in range(2, len(jpeg) - 1) if jpeg[i] == 0xFF and jpeg[i + 1] in (0xC0, 0xC2))
    jpeg[sof + 5:sof + 9] = (16000).to_bytes(2, "big") * 2
    decoder = ImageDecoder()  # the default limit: 50 MP
    for data, fmt in ((png, "png"), (jpeg, "jpeg")):
        with pytest.raises(ImageDecodeError, match="16000x16000 image is 256000000 pixels, more than max_input"):
            decoder.decode_compressed(bytes(data), fmt)
    with pytest.raises(ImageDecodeError, match="neither a PNG nor a JPEG"):
        decoder.decode_compressed(cv2.imencode(".bmp", img)[1].tobytes(), "png")  # OpenCV would decode it
    with pytest.raises(ImageDecodeError, match="more than max_input_pixels 1000"):
        ImageDecoder(max_pixels=1000).decode_raw(bytes(40 * 60 * 3), "rgb8", 40, 60, 180)
    with pytest.raises(ImageDecodeError, match="width must be even, got 59"):
        ImageDecoder().decode_raw(bytes(40 * 59 * 2), "yuv422", 40, 59, 118)
