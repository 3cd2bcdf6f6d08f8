"""`seg-perception demo` (`make demo`): the whole package in one command, no GPU, no ROS install, no torch.

1. render a synthetic drive (camera 1.5 m above a street) into a rosbag2 with CameraInfo, registered depth and
   ground truth (labels and the true top-down map);
2. start `seg_node` on the embedded default model with ONNX Runtime, building its costmaps from depth;
3. replay the bag into it over real ROS 2 topics (`seg-perception replay`);
4. receive masks, overlays and costmaps here, score the masks against the ground truth, and the node's depth
   costmaps beside flat-ground ones (the same core projector on the received masks) against the true map;
5. stop the node (it writes its stage trace), print mIoU, costmap IoU and per-stage latency, write everything to
   --out.

--out must be new, empty, or a folder an earlier demo wrote: the demo replaces only the files it recorded making
there (output_files.prepare_folder), never anything else a user keeps in it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from seg_perception.core.camera_model import camera_from_info, is_rectified
from seg_perception.core.costmap import FUSED, layer_topic
from seg_perception.core.trace import END_TO_END, STAGES, TRANSPORT, StageSummary
from seg_perception.errors import UsageError
from seg_perception.pictures import (CameraView, GridGeometry, draw_costmap, draw_overlay, draw_topdown_classes,
                                     new_figure, save_figure, stamp_text, write_costmap_png, write_overlay_png)
from seg_perception.output_files import prepare_folder, record_made
from seg_perception.sizes import parse_hw

IMAGE_TOPIC, INFO_TOPIC, GT_TOPIC = "/camera/image_raw", "/camera/camera_info", "/camera/semantic_gt"
DEPTH_TOPIC, TOPDOWN_TOPIC = "/camera/depth/image_raw", "/camera/semantic_gt_topdown"
MASK_TOPIC, OVERLAY_TOPIC = "/semantic_mask", "/semantic_mask/overlay"
PACKAGE = "seg_perception"
TOOL = "seg-perception demo"
# What a run writes into --out besides overlay_*.png (recorded before they exist, so a failed run is cleared too).
OUTPUTS = ("drive_bag", "seg_node.log", "replay.log", "trace.json", "report.json", "report.md",
           "report_confusion.png", "costmap.png", "overview.png")


@dataclass
class DemoConfig:
    out: str = "demo_out"
    frames: int = 60
    size: tuple[int, int] = (512, 1024)  # camera resolution; the node resizes to the model's input
    rate: float = 2.0  # Hz, slow enough for a 2-core laptop to segment every frame
    model: str = ""  # '' = the embedded default model
    threads: int = 0
    seed: int = 0
    overlays: int = 4
    streets: int = 4  # the drive passes through this many streets, so that every class shows up
    startup_timeout: float = 90.0


@dataclass
class Received:
    """What the demo's subscriber collected, by header stamp (ns)."""
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    overlays: dict[int, np.ndarray] = field(default_factory=dict)
    costmap: np.ndarray | None = None  # int8 [rows=y, cols=x] cells, the latest fused costmap
    costmap_stamp: int = -1
    costmap_grid: GridGeometry | None = None
    layers: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # every costmap layer, by stamp


def fastdds_profile() -> Path | None:
    """config/fastdds_shm.xml of a source checkout or of an installed package (share/seg_perception/config)."""
    for candidate in (Path(__file__).resolve().parent.parent / "config" / "fastdds_shm.xml",
                      Path(sys.prefix) / "share" / PACKAGE / "config" / "fastdds_shm.xml"):
        if candidate.is_file():
            return candidate
    return None


def ros_environment() -> dict[str, str]:
    """This process's environment made local and private for the demo's DDS traffic; applied to os.environ too,
    so the demo's own rclpy context joins the same domain."""
    env = os.environ
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(100, 200)))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    profile = fastdds_profile()
    if profile and "FASTRTPS_DEFAULT_PROFILES_FILE" not in env:
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(profile)
    env["PYTHONUNBUFFERED"] = "1"
    return dict(env)


def write_drive(cfg: DemoConfig, bag: Path) -> Path:
    from seg_perception.core.costmap import GridSpec
    from seg_perception.data.synthetic import Camera, render_drive
    from seg_perception.bags import write_drive_bag

    h, w = cfg.size
    rng = np.random.default_rng(cfg.seed)
    per_street = np.diff(np.linspace(0, cfg.frames, max(1, min(cfg.streets, cfg.frames)) + 1).round().astype(int))
    grid = GridSpec()  # seg_node's default costmap grid: the true map is drawn on it
    frames = itertools.chain.from_iterable(render_drive(rng, int(n), h, w, topdown=grid) for n in per_street)
    return write_drive_bag(bag, frames, image_topic=IMAGE_TOPIC, gt_topic=GT_TOPIC, camera_info_topic=INFO_TOPIC,
                           camera_info=Camera.for_image(h, w).pinhole(), rate_hz=cfg.rate, depth_topic=DEPTH_TOPIC,
                           topdown_topic=TOPDOWN_TOPIC, topdown_grid=grid)


def node_parameters(cfg: DemoConfig, trace_file: Path) -> dict:
    from seg_perception.data.synthetic import CAMERA_HEIGHT_M, HOOD_FRACTION
    # camera_info: the image topic's sibling, INFO_TOPIC
    params = {"backend": "onnxruntime", "input_qos": "reliable", "input_topic": IMAGE_TOPIC,
              "camera_height": CAMERA_HEIGHT_M, "camera_pitch": 0.0, "costmap_ignore_bottom": HOOD_FRACTION[1],
              "depth_topic": DEPTH_TOPIC, "trace_file": str(trace_file)}
    if cfg.model:
        params["model"] = cfg.model
    if cfg.threads:
        params["threads"] = cfg.threads
    return params


def node_command(params: dict) -> list[str]:
    args = [sys.executable, "-m", "seg_perception.ros.node", "--ros-args"]
    for key, value in params.items():
        args += ["-p", f"{key}:={value}"]
    return args


def _image_array(msg, channels: int) -> np.ndarray:
    rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * channels]
    return rows if channels == 1 else rows.reshape(msg.height, msg.width, channels)


class Collector:
    """An rclpy node subscribed to seg_node's outputs, storing copies keyed by header stamp."""

    def __init__(self, layers: tuple[str, ...], keep_overlays: bool = True) -> None:
        from nav_msgs.msg import OccupancyGrid
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.received = Received()
        self.node = Node("seg_demo")
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.mask_sub = self.node.create_subscription(Image, MASK_TOPIC, self._on_mask, qos)
        if keep_overlays:
            self.node.create_subscription(Image, OVERLAY_TOPIC, self._on_overlay, qos)
        for name in layers:
            self.node.create_subscription(OccupancyGrid, "/" + layer_topic(name),
                                          lambda msg, name=name: self._on_layer(name, msg), qos)

    @staticmethod
    def _stamp(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def _on_mask(self, msg) -> None:
        self.received.masks[self._stamp(msg)] = _image_array(msg, 1).copy()

    def _on_overlay(self, msg) -> None:
        self.received.overlays[self._stamp(msg)] = _image_array(msg, 3).copy()

    def _on_layer(self, name: str, msg) -> None:
        cells = np.frombuffer(msg.data, np.int8).reshape(msg.info.height, msg.info.width).copy()
        self.received.layers.setdefault(self._stamp(msg), {})[name] = cells
        if name == FUSED:
            self.received.costmap = cells
            self.received.costmap_grid = GridGeometry(msg.info.resolution, msg.info.origin.position.x,
                                                      msg.info.origin.position.y)
            self.received.costmap_stamp = self._stamp(msg)

    def node_ready(self) -> bool:
        return self.mask_sub.get_publisher_count() > 0


def durations_from_chrome_trace(path: Path) -> np.ndarray:
    """A seg_node trace JSON back to [frames, stages + end_to_end] ms (Tracer.durations_ms' layout), without
    transport: a replayed bag's header stamps are its recording times, so 'now - stamp' is no transport time.
    End to end is then arrival in the node to the last publish."""
    events = json.loads(path.read_text())["traceEvents"]
    column = {name: i for i, name in enumerate(STAGES) if i != TRANSPORT}
    spans: dict[int, list[tuple[int, float, float]]] = {}  # frame -> (stage, start us, duration us)
    for e in events:
        if e.get("ph") == "X" and e["name"] in column:
            spans.setdefault(e["args"]["frame"], []).append((column[e["name"]], e["ts"], e["dur"]))
    out = np.full((len(spans), len(STAGES) + 1), np.nan)
    for row, frame in zip(out, sorted(spans)):
        for stage, ts, dur in spans[frame]:
            row[stage] = dur / 1e3
        row[-1] = (max(ts + dur for _, ts, dur in spans[frame]) - min(ts for _, ts, _ in spans[frame])) / 1e3
    return out


def stage_summaries(latency: dict[str, dict[str, float]]) -> dict[str, StageSummary]:
    """eval.report.latency_percentiles output as the StageSummary rows format_table prints."""
    order = [n for n in STAGES + (END_TO_END,) if n in latency]
    return {n: StageSummary(latency[n]["count"], latency[n]["mean"], latency[n]["p50"], latency[n]["p90"],
                            latency[n]["p99"], latency[n]["max"]) for n in order}


def _stop(proc: subprocess.Popen, grace_s: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # seg_node writes its trace file on a clean shutdown
        try:
            return proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo; returns the report dict (also written to <out>/report.json)."""
    out = prepare_folder(Path(cfg.out).absolute(), TOOL)  # first: a folder it must not touch stops it at once
    record_made(out, TOOL, OUTPUTS)
    env = ros_environment()
    import rclpy

    from seg_perception.backends import resolve_model
    from seg_perception.data.synthetic import Camera
    from seg_perception.backends.onnxruntime_backend import read_model_info
    from seg_perception.core.trace_export import format_table
    from seg_perception.eval.bag_eval import node_projector
    from seg_perception.bags import BagReader, mono8_array, stamp_ns
    from seg_perception.eval.metrics import EvalStats, accumulate
    from seg_perception.eval.report import build_report, model_identity, write_report

    t_start = time.perf_counter()
    bag = write_drive(cfg, out / "drive_bag")
    print(f"[demo] wrote {cfg.frames} frames {cfg.size[0]}x{cfg.size[1]} at {cfg.rate:g} Hz to {bag} "
          f"(ROS_DOMAIN_ID {env['ROS_DOMAIN_ID']})", flush=True)
    model = resolve_model(cfg.model)
    info = read_model_info(model)
    trace_file = out / "trace.json"
    params = node_parameters(cfg, trace_file)
    projector, fused_lut = node_projector(params, info.class_names)  # the node's, for the flat-ground scores

    rclpy.init()
    collector = Collector(projector.layers, keep_overlays=cfg.overlays > 0)
    node_log = open(out / "seg_node.log", "w")
    node = subprocess.Popen(node_command(params), env=env, stdout=node_log, stderr=subprocess.STDOUT)
    replay = None
    try:
        deadline = time.monotonic() + cfg.startup_timeout
        while not collector.node_ready():
            rclpy.spin_once(collector.node, timeout_sec=0.1)
            if node.poll() is not None:
                raise RuntimeError(f"seg_node exited with {node.returncode}; see {out / 'seg_node.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"seg_node did not come up in {cfg.startup_timeout:.0f} s; "
                                   f"see {out / 'seg_node.log'}")
        print(f"[demo] seg_node is up ({info.name} {info.input_size[0]}x{info.input_size[1]}, ONNX Runtime); "
              f"replaying", flush=True)
        replay = subprocess.Popen([sys.executable, "-m", "seg_perception.cli", "replay", str(bag),
                                   "--topics", IMAGE_TOPIC, INFO_TOPIC, DEPTH_TOPIC, "--wait-subscribers", "30"],
                                  env=env, stdout=open(out / "replay.log", "w"), stderr=subprocess.STDOUT)
        while replay.poll() is None:
            rclpy.spin_once(collector.node, timeout_sec=0.05)
        if replay.returncode != 0:
            raise RuntimeError(f"replay exited with {replay.returncode}; see {out / 'replay.log'}")
        # the last frames are still in the node: wait until they arrive or stop coming
        quiet_until = time.monotonic() + 3.0 + 2.0 / cfg.rate
        while len(collector.received.masks) < cfg.frames and time.monotonic() < quiet_until:
            seen = len(collector.received.masks)
            rclpy.spin_once(collector.node, timeout_sec=0.1)
            if len(collector.received.masks) > seen:
                quiet_until = time.monotonic() + 3.0
        # the costmap is the last output of a frame: stopping seg_node before it would cut the frame from the trace
        last_mask, until = max(collector.received.masks, default=-1), time.monotonic() + 2.0
        while collector.received.costmap_stamp < last_mask and time.monotonic() < until:
            rclpy.spin_once(collector.node, timeout_sec=0.05)
    finally:
        if replay is not None and replay.poll() is None:
            replay.kill()
        node_rc = _stop(node)
        node_log.close()
        collector.node.destroy_node()
        rclpy.try_shutdown()
    received = collector.received

    # accuracy: masks against the bag's ground truth, matched by header stamp
    stats = EvalStats()
    with BagReader(bag) as reader:
        for _, _, msg in reader.messages([GT_TOPIC]):
            mask = received.masks.get(stamp_ns(msg.header))
            if mask is not None:
                accumulate(stats, mono8_array(msg), mask, "trainIds", "trainIds")
    if stats.num_images == 0:
        raise RuntimeError(f"no masks came back from seg_node; see {out / 'seg_node.log'}")

    costmap_iou, compared = score_costmaps(received, bag, projector, fused_lut, info.class_names)

    durations = durations_from_chrome_trace(trace_file) if trace_file.is_file() else np.empty((0, len(STAGES) + 1))
    source = {"bag": str(bag), "frames": cfg.frames, "masks_received": len(received.masks),
              "camera": list(cfg.size), "rate_hz": cfg.rate}
    report, scored = build_report(stats, durations, source, model_identity(model, info),
                                  extra={"demo": asdict(cfg), "seg_node_exit": node_rc, "costmap_iou": costmap_iou,
                                         "wall_s": time.perf_counter() - t_start})
    reports = [path.name for path in write_report(report, scored, out / "report.json")]
    camera = CameraView.from_intrinsics(Camera.for_image(*cfg.size).focal, cfg.size[1])
    pictures = _write_pictures(received, out, cfg.overlays, info, camera)
    if compared is not None:
        pictures.append(write_costmap_comparison(out / "costmap_compare.png", *compared, projector.grid, camera,
                                                 info).name)
    record_made(out, TOOL, OUTPUTS + tuple(pictures))

    print(f"\nmIoU {100 * scored.miou:.2f} % over {stats.num_images} of {cfg.frames} frames "
          f"(through seg_node, model {info.name} {info.input_size[0]}x{info.input_size[1]})")
    for name, iou in scored.per_class_iou.items():
        print(f"  {name:<14}{'n/a' if iou is None else f'{100 * iou:6.2f}'}")
    modes = [m for m in costmap_iou if m != "frames"]
    print(f"\ncostmap IoU (%) over {costmap_iou['frames'].get('depth', 0)} frames, the camera's view of the "
          f"true top-down map\n  {'layer':<12}" + "".join(f"{m:>13}" for m in modes))
    for key in dict.fromkeys(k for m in modes for k in costmap_iou[m]):
        cells = ("n/a" if costmap_iou[m].get(key) is None else f"{100 * costmap_iou[m][key]:.2f}" for m in modes)
        print(f"  {key:<12}" + "".join(f"{c:>13}" for c in cells))
    if report["latency_ms"]:
        print("\n" + format_table(stage_summaries(report["latency_ms"]), title="seg_node stage latency"))
    written = reports + (["trace.json"] if trace_file.is_file() else []) + pictures
    print(f"\n[demo] outputs in {out}: {', '.join(written)} ({time.perf_counter() - t_start:.0f} s)")
    return report


def score_costmaps(received: Received, bag: Path, projector, fused_lut: np.ndarray, class_names):
    """Costmap IoU against the bag's true top-down maps: the node's depth-built layers as received, and flat-ground
    layers from the received masks through the same projector. Returns (CostmapIoU.report(), the last scored
    frame's (truth, flat fused layer, depth fused layer), or None)."""
    from seg_perception.bags import BagReader, grid_array, stamp_ns
    from seg_perception.eval.costmap_metrics import CostmapIoU, resample_truth, visible_cells

    iou, last, visible = CostmapIoU(tuple(class_names), fused_lut), None, None
    with BagReader(bag) as reader:
        camera = camera_from_info(reader.first(INFO_TOPIC), is_rectified("auto", IMAGE_TOPIC))  # seg_node's rule
        projector.set_camera(camera)
        for _, _, msg in reader.messages([TOPDOWN_TOPIC]):
            ns = stamp_ns(msg.header)
            mask, depth_layers = received.masks.get(ns), received.layers.get(ns, {})
            if mask is None or set(depth_layers) != set(projector.layers):
                continue
            truth = resample_truth(grid_array(msg), msg.info.resolution, msg.info.origin.position.x,
                                   msg.info.origin.position.y, projector.grid)
            if visible is None:
                visible = visible_cells(projector.grid, projector.pose, camera, mask.shape)
            flat = projector.project(mask, mask.shape)
            iou.add("flat_ground", flat, truth, visible)
            iou.add("depth", depth_layers, truth, visible)
            last = (truth, flat[FUSED].copy(), depth_layers[FUSED])
    return iou.report(), last


def write_costmap_comparison(path: Path, truth: np.ndarray, flat: np.ndarray, depth: np.ndarray, grid, camera,
                             info) -> Path:
    """The true top-down map beside the flat-ground and the depth-built fused costmap of one frame, from above."""
    geometry = GridGeometry(grid.resolution, grid.origin_x, grid.origin_y)
    fig, (left, middle, right) = new_figure(3, f"costmaps against the true top-down map, model {info.name}: "
                                               f"flat ground smears obstacles along their rays, depth does not")
    draw_topdown_classes(left, truth, geometry, info.class_names, info.palette, camera, "true top-down map")
    draw_costmap(middle, flat, geometry, camera, "flat-ground costmap (from the mask)")
    draw_costmap(right, depth, geometry, camera, "depth costmap (seg_node)")
    return save_figure(fig, path)


def _write_pictures(received: Received, out: Path, n_overlays: int, info, camera: CameraView) -> list[str]:
    """overlay_*.png with a class legend, costmap.png on metre axes, overview.png (the last costmap beside the
    overlay of its frame); returns the names written."""
    written = []
    stamps = sorted(received.overlays)
    if stamps and n_overlays:
        for k in np.unique(np.linspace(0, len(stamps) - 1, n_overlays).round().astype(int)):
            stamp = stamps[k]
            written.append(write_overlay_png(
                out / f"overlay_{k:03d}.png", received.overlays[stamp], received.masks.get(stamp), info.class_names,
                info.palette, f"seg_node overlay, model {info.name}, frame stamp {stamp_text(stamp)}").name)
    if received.costmap is not None:
        stamp = received.costmap_stamp
        title = f"semantic_costmap from above, model {info.name}, frame stamp {stamp_text(stamp)}"
        written.append(write_costmap_png(out / "costmap.png", received.costmap, received.costmap_grid, camera,
                                         title).name)
        if stamp in received.overlays:
            fig, (left, right) = new_figure(2, f"seg_node on the synthetic drive, model {info.name}, frame stamp "
                                               f"{stamp_text(stamp)}: camera overlay and fused costmap")
            draw_overlay(left, received.overlays[stamp], received.masks.get(stamp), info.class_names, info.palette)
            draw_costmap(right, received.costmap, received.costmap_grid, camera)
            written.append(save_figure(fig, out / "overview.png").name)
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    p.add_argument("--out", default=d.out, help="output folder")
    p.add_argument("--frames", type=int, default=d.frames, help="frames in the synthetic drive")
    p.add_argument("--size", type=parse_hw, default=d.size, help="camera HxW")
    p.add_argument("--rate", type=float, default=d.rate, help="camera frame rate (Hz)")
    p.add_argument("--model", default=d.model, help="ONNX model (default: the embedded default model)")
    p.add_argument("--threads", type=int, default=d.threads, help="ONNX Runtime threads in seg_node (0: default)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the synthetic drive")
    p.add_argument("--overlays", type=int, default=d.overlays, help="overlay PNGs to write (0: do not subscribe)")
    p.add_argument("--streets", type=int, default=d.streets, help="streets the drive passes through")


def run(args) -> int:
    cfg = DemoConfig(**{k: v for k, v in vars(args).items() if k in DemoConfig.__dataclass_fields__})
    if cfg.frames < 1 or cfg.rate <= 0 or cfg.streets < 1 or cfg.overlays < 0 or cfg.threads < 0:
        raise UsageError("--frames and --streets must be >= 1, --rate > 0, --overlays and --threads >= 0")
    from seg_perception.backends import resolve_model

    if not Path(resolve_model(cfg.model)).is_file():  # said before the drive is rendered
        raise UsageError(f"model file not found: {resolve_model(cfg.model)}")
    try:
        run_demo(cfg)
    except UsageError:
        raise  # one line and exit 2, from the CLI: e.g. an output folder the demo did not make
    except (RuntimeError, OSError) as exc:
        print(f"seg-perception demo: error: {exc}", file=sys.stderr)
        return 1
    return 0
