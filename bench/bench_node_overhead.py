"""seg_node's own overhead: end-to-end latency (publish -> mask received) minus backend inference, by stage.

Starts seg_node as a real process on a private DDS domain (Fast DDS with the large-SHM profile), publishes
1024x2048 rgb8 frames one at a time (each after the previous mask arrived, so the latest-frame slot never
waits and nothing is dropped), and reads the node's per-frame stage times from semantic_mask/latency.
Two runs: mask only, then every output (mask, confidence, colour, overlay, camera_info, costmaps).

Goal: overhead <= 15% of inference time with the default CPU model.
Model: --model, else seg_perception's embedded default, else metaseg-t exported at 512x1024 here (needs torch).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
STAGES = ("transport", "wait", "decode", "preprocess", "postprocess", "costmap", "publish")  # publish: all outputs
ALL_OUTPUTS = ("/semantic_mask/confidence", "/semantic_mask/color", "/semantic_mask/overlay",
               "/semantic_mask/camera_info", "/semantic_costmap")


def default_model(workdir: Path) -> Path:
    from seg_perception.backends import DEFAULT_MODEL

    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    import torch

    from seg_perception.backends.deploy_model import model_info_for
    from seg_perception.deploy.export import export_onnx
    from seg_perception.models.registry import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("metaseg-t").eval()
    return export_onnx(model, model_info_for("metaseg-t", (512, 1024)), workdir / "metaseg-t_512x1024.onnx",
                       with_logits=False)


def ros_environment() -> dict:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(random.randint(150, 230)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               FASTRTPS_DEFAULT_PROFILES_FILE=str(REPO / "config" / "fastdds_shm.xml"))
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTRTPS_DEFAULT_PROFILES_FILE")})
    return env


class Peer:
    """Publishes frames and waits for the node's answer to each one."""

    def __init__(self, domain: int, outputs: tuple[str, ...], depth: np.ndarray | None = None) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import OccupancyGrid
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        self.rclpy = rclpy
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node("bench_peer", context=self.ctx)
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        self.mask_at: dict[int, int] = {}
        self.latency: dict[int, dict[str, float]] = {}
        self.cond = threading.Condition()
        self.node.create_subscription(Image, "/semantic_mask", self._on_mask, reliable)
        self.node.create_subscription(DiagnosticArray, "/semantic_mask/latency", self._on_latency, reliable)
        types = {"/semantic_mask/camera_info": CameraInfo, "/semantic_costmap": OccupancyGrid,
                 "/semantic_points": PointCloud2}
        for topic in outputs:  # subscribed only so that the node computes them
            self.node.create_subscription(types.get(topic, Image), topic, lambda msg: None, reliable)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        threading.Thread(target=self._spin, daemon=True).start()
        self.msg = Image(height=1024, width=2048, encoding="rgb8", step=2048 * 3)
        rng = np.random.default_rng(0)
        self.msg.data = rng.integers(0, 255, (1024, 2048, 3), np.uint8).tobytes()
        self.msg.header.frame_id = "camera"
        self.depth_msg = None  # with `depth` (metres): a 16UC1 image on /camera/depth, stamped as each frame
        if depth is not None:
            self.depth_pub = self.node.create_publisher(Image, "/camera/depth", qos_profile_sensor_data)
            mm = np.round(depth * 1000)
            self.depth_msg = Image(height=depth.shape[0], width=depth.shape[1], encoding="16UC1",
                                   step=depth.shape[1] * 2)
            self.depth_msg.data = np.where(mm > 65535, 0, mm).astype("<u2").tobytes()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # context shut down
            pass

    @staticmethod
    def _key(stamp) -> int:
        return stamp.sec * 1_000_000_000 + stamp.nanosec

    def _on_mask(self, msg) -> None:
        now = time.time_ns()
        with self.cond:
            self.mask_at[self._key(msg.header.stamp)] = now
            self.cond.notify_all()

    def _on_latency(self, msg) -> None:
        values = {kv.key: float(kv.value) for kv in msg.status[0].values}
        with self.cond:
            self.latency[self._key(msg.header.stamp)] = values
            self.cond.notify_all()

    def frame(self, timeout: float) -> tuple[float, dict[str, float]] | None:
        """Publish one frame; (publish -> mask received ms, the node's stage times) or None on timeout."""
        stamp = self.node.get_clock().now()
        key = stamp.nanoseconds
        self.msg.header.stamp = stamp.to_msg()
        if self.depth_msg is not None:
            self.depth_msg.header.stamp = self.msg.header.stamp
            self.depth_pub.publish(self.depth_msg)
        self.pub.publish(self.msg)
        with self.cond:
            if not self.cond.wait_for(lambda: key in self.mask_at and key in self.latency, timeout):
                return None
            return (self.mask_at[key] - key) / 1e6, self.latency[key]

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.ctx)


def run_case(model: Path, env: dict, outputs: tuple[str, ...], frames: int, warmup: int, threads: int,
             workdir: Path, params: dict | None = None,
             depth: np.ndarray | None = None) -> list[tuple[float, dict[str, float]]]:
    """`params` override the node's; `depth` (metres) is published with every frame."""
    params = {"model": str(model), "threads": threads, "input_topic": "/camera/image_raw", "camera_info_topic": "",
              "fx": 1000.0, "camera_pitch": 0.1, "publish_overlay": True, **(params or {})}
    params_file = workdir / "params.yaml"
    params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    log = open(workdir / "seg_node.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "seg_perception.ros.node", "--ros-args", "--params-file",
                             str(params_file)], env=env, stdout=log, stderr=subprocess.STDOUT)
    peer = Peer(int(env["ROS_DOMAIN_ID"]), outputs, depth)
    results = []
    try:
        deadline = time.monotonic() + 120
        while peer.frame(timeout=3.0) is None:  # start-up and discovery
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"seg_node did not answer; see {workdir / 'seg_node.log'}")
        time.sleep(1.0)  # let every output subscription match
        for i in range(warmup + frames):
            got = peer.frame(timeout=30.0)
            if got is None:
                raise RuntimeError("a frame got no answer within 30 s")
            if i >= warmup:
                results.append(got)
            time.sleep(0.05)  # idle gap: the node is never busy when a frame arrives
    finally:
        peer.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        log.close()
    return results


def report(name: str, results: list[tuple[float, dict[str, float]]]) -> float:
    e2e = np.array([r[0] for r in results])
    stage = {s: np.array([r[1].get(f"{s}_ms", 0.0) for r in results]) for s in STAGES + ("inference",)}
    # The mask is published first: node time until publishing starts, then the mask's publish and delivery.
    before_publish = np.array([r[1]["end_to_end_ms"] - r[1].get("publish_ms", 0.0) for r in results])
    delivery = e2e - before_publish
    infer = stage["inference"]
    overhead = e2e - infer
    print(f"\n[{name}] {len(results)} frames, 1024x2048 rgb8; medians (ms) and share of inference time")
    print(f"  {'stage':<22}{'ms':>9}{'% of inference':>17}")
    med_inf = float(np.median(infer))
    rows = [(s, stage[s]) for s in STAGES] + [("mask publish+delivery", delivery), ("overhead total", overhead),
                                              ("inference (backend)", infer), ("end to end", e2e)]
    for label, values in rows:
        m = float(np.median(values))
        print(f"  {label:<22}{m:9.2f}{100 * m / med_inf:16.1f}%")
    ratio = float(np.median(overhead / infer))
    print(f"  overhead / inference (median of per-frame ratios): {ratio:.3f}  (goal <= 0.15)")
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ONNX model (default: embedded default, else metaseg-t 512x1024)")
    parser.add_argument("--frames", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0 = ONNX Runtime default)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_node_") as tmp:
        workdir = Path(tmp)
        model = Path(args.model) if args.model else default_model(workdir)
        print(f"model: {model}")
        env = ros_environment()
        mask_only = run_case(model, env, (), args.frames, args.warmup, args.threads, workdir)
        everything = run_case(model, env, ALL_OUTPUTS, args.frames, args.warmup, args.threads, workdir)
    r1 = report("mask only", mask_only)
    r2 = report("all outputs", everything)
    print(f"\nnode overhead ratio: mask only {r1:.3f}, all outputs {r2:.3f} (goal <= 0.15 of inference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
