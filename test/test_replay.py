"""`seg-perception replay` as a real process on a real DDS domain: stamps and bytes arrive as recorded."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from seg_perception.bags import write_drive_bag  # noqa: E402
from seg_perception.cli import main  # noqa: E402

pytestmark = pytest.mark.timeout(120)
START_NS, N = 1_700_000_000_000_000_000, 5


class Listener:
    def __init__(self, env: dict, topics: dict) -> None:
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=int(env["ROS_DOMAIN_ID"]))
        self.node = rclpy.create_node("replay_listener", context=self.ctx)
        self.received = {t: [] for t in topics}
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        for topic, msg_type in topics.items():
            self.node.create_subscription(msg_type, topic, self.received[topic].append, qos)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        threading.Thread(target=self._spin, daemon=True).start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # shut down under it
            pass

    def wait(self, topic: str, count: int, timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.received[topic]) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.received[topic])

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


@pytest.fixture
def listener(ros_env, monkeypatch):
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        monkeypatch.setenv(key, ros_env[key])
    made = []

    def make(topics: dict) -> Listener:
        made.append(Listener(ros_env, topics))
        return made[-1]

    yield make
    for item in made:
        item.close()


def random_frames() -> list[np.ndarray]:
    """Noise images: a byte dropped, swapped or repeated anywhere in a frame changes its content."""
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (8, 16, 3), dtype=np.uint8) for _ in range(N)]


@pytest.fixture
def bag(tmp_path):
    frames = [(rgb, np.zeros((8, 16), np.uint8)) for rgb in random_frames()]
    return write_drive_bag(tmp_path / "drive", frames, storage="mcap", rate_hz=20.0)


@pytest.fixture
def replay_env(ros_env, no_torch) -> dict:
    return no_torch(ros_env)  # a runtime command: it must run without torch


def _replay(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "seg_perception.cli", "replay", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_replay_preserves_stamps_and_bytes_with_remap_and_clock(replay_env, listener, bag):
    peer = listener({"/cam": Image, "/camera/camera_info": CameraInfo, "/clock": Clock})
    proc = _replay(replay_env, str(bag), "--topics", "/camera/image_raw", "/camera/camera_info",
                   "--topic-remap", "/camera/image_raw:=/cam", "--clock", "--wait-subscribers", "20")
    images = peer.wait("/cam", N)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "published 10 messages" in out
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in images] == \
        [START_NS + i * 50_000_000 for i in range(N)]
    assert [bytes(m.data) for m in images] == [rgb.tobytes() for rgb in random_frames()]
    assert all((m.height, m.width, m.step, m.encoding) == (8, 16, 48, "rgb8") for m in images)
    assert len(peer.wait("/camera/camera_info", N)) == N
    clock = peer.wait("/clock", 1)
    assert clock and clock[-1].clock.sec == START_NS // 10**9


def test_replay_loops_until_stopped(replay_env, listener, bag):
    peer = listener({"/camera/image_raw": Image})
    proc = _replay(replay_env, str(bag), "--loop", "--rate", "4", "--wait-subscribers", "20")
    try:
        images = peer.wait("/camera/image_raw", 2 * N + 1)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert len(images) > 2 * N
    assert images[N].header.stamp == images[0].header.stamp  # stamps repeat as recorded


def test_replay_bad_input(bag, capsys):
    assert main(["replay", str(bag), "--topics", "/nope"]) == 2
    assert "has no topic '/nope'" in capsys.readouterr().err
    assert main(["replay", str(bag), "--topic-remap", "/camera/image_raw=/x"]) == 2
    assert "is not FROM:=TO" in capsys.readouterr().err
    assert main(["replay", str(bag / "missing")]) == 2
