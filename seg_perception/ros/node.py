"""`seg_node`: camera in; label image, confidence, colour, overlay and ground costmaps out.

A thin shell over `SegPipeline`: this file wires topics, parameters, QoS, the worker thread and diagnostics;
decoding, inference, resizing and projection all live in seg_perception.core.

Threads: the executor thread only stamps arrivals and drops each message into a `LatestFrameSlot`; one worker
thread decodes, infers and publishes, always on the newest frame (a frame replaced while waiting is dropped).
"""

from __future__ import annotations

import collections
import sys
import threading
from dataclasses import dataclass, replace

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from seg_perception.backends import BackendError, is_file_artifact, open_backend
from seg_perception.core import trace
from seg_perception.core.camera_model import CameraModel, camera_from_info, is_rectified
from seg_perception.core.costmap import layer_topic, same_aspect
from seg_perception.core.depth_costmap import DepthDecoder, DepthError, DepthProjector, check_registered
from seg_perception.core.frame_slot import LatestFrameSlot
from seg_perception.core.image_codec import ImageDecodeError
from seg_perception.core.node_params import ParameterError
from seg_perception.core.pipeline import OutputRequest, SegPipeline
from seg_perception.output_files import check_writable
from seg_perception.ros import conversions as conv
from seg_perception.ros.camera_pose import open_pose_source
from seg_perception.ros.health import Counts, HealthWindow, status_name
from seg_perception.ros.label_info import publish_label_info
from seg_perception.ros.params import declare
from seg_perception.ros.topics import LATCHED, resolve_inputs

_NOW = trace._NOW
THROTTLE_S = 5.0  # bad-input log lines: at most one per this many seconds
LIVE_STAMP_NS = 10_000_000_000  # a header stamp further than this from ROS now is on another clock
# A frame whose depth image is not in yet waits this long for it, while the depth stream is live (its newest image
# within DEPTH_LIVE_NS of the frame): with a fast model the frame can be done before its depth is delivered.
DEPTH_WAIT_S, DEPTH_LIVE_NS = 0.1, 1_000_000_000
_POSE_PARAMS = {"camera_x": "x", "camera_y": "y", "camera_height": "height", "camera_roll": "roll",
                "camera_pitch": "pitch", "camera_yaw": "yaw"}


@dataclass
class _Frame:
    msg: Image | CompressedImage
    arrival_ns: int  # perf_counter clock
    transport_ns: int  # ROS now - header stamp at arrival


def transport_start(arrival_ns: int, transport_ns: int) -> int | None:
    """Start of a frame's transport span, or None when its stamp is not live: a replayed bag's stamps are its
    recording times (so are an unsynchronised camera's), and 'now - stamp' would be a span of years."""
    return None if abs(transport_ns) > LIVE_STAMP_NS else arrival_ns - max(transport_ns, 0)


class SegNodeParts:
    """What seg_node does, in the pieces both of its variants call, mixed into an rclpy Node: the plain `SegNode`
    runs them all in its constructor; the managed one (ros/lifecycle_node.py) on its lifecycle transitions."""

    def _publisher(self, msg_type, topic: str, qos):
        """An output publisher (the managed node makes lifecycle publishers, silent while inactive)."""
        return self.create_publisher(msg_type, topic, qos)

    def _build(self) -> None:
        """Declare and check the parameters, open and warm up the backend, build the pipeline and the output
        publishers, and start the worker: everything but the subscriptions and the diagnostics timer."""
        p = self.params = declare(self)
        if p.model and not is_file_artifact(p.model) and not p.model.partition(":")[2]:
            raise ParameterError("model", f"zoo name '{p.model}' without a checkpoint would run random weights; give "
                                          f"'{p.model}:<checkpoint file>' or an exported ONNX file")
        if p.trace_file:
            try:
                check_writable(p.trace_file)
            except OSError as exc:
                raise ParameterError("trace_file", str(exc)) from None
        self.backend = open_backend(p.model, p.backend, **p.backend_options())
        info = self.backend.info
        start = _NOW()
        self.backend.warm_up(p.warmup_frames)  # before any subscription: no camera frame waits on it
        self._warm_up_ms = (_NOW() - start) / 1e6
        costs = p.costs()
        depth = p.depth()
        if not p.depth_topic:  # ground classes serve only the depth-built costmaps: a model need not have them
            depth = replace(depth, ground_classes=())
        for param, names in (("cost_table", list(costs)), ("costmap_classes", p.costmap_classes),
                             ("ground_classes", depth.ground_classes)):
            unknown = [n for n in names if n not in info.class_names]
            if unknown:
                raise ParameterError(param, f"unknown class name(s) {unknown}; model '{info.name}' has "
                                            f"{list(info.class_names)}")
        self.projector = DepthProjector(p.grid(), p.pose(), info.class_names, costs, p.default_cost,
                                        p.costmap_classes, depth)
        self.pose_source = open_pose_source(self, p.camera_pose_source, p.costmap_frame, p.tf_timeout, p.pose())
        self.tracer = trace.Tracer(capacity=max(4096, 2 * p.trace_window))
        self.pipeline = SegPipeline(self.backend, p.output_resolution, self.projector, self.tracer, p.overlay_alpha,
                                    p.points_stride, p.points_organized, p.max_input_pixels)
        self.slot: LatestFrameSlot[_Frame] = LatestFrameSlot()
        self.rejected = self.errors = self.published = self.idle = self.camera_info_rejected = 0
        self._refusals_lock = threading.Lock()
        self.depth_dropped = 0  # frames whose depth-built outputs stayed unknown (no, late, or bad depth)
        self._depths: collections.deque[Image] = collections.deque(maxlen=8)  # newest last
        self._depths_arrived = threading.Condition()
        self._depth_decoder = DepthDecoder(p.max_input_pixels)
        self._depth_paired = False  # the current frame found its depth image
        self.last_problem = ""  # the latest rejection or failure, in /diagnostics (log lines are throttled)
        # The latest valid CameraInfo with the camera model (lens) it gives, set by the executor as one tuple, so
        # the worker never sees a message with another message's model.
        self._camera_info: tuple[CameraInfo, CameraModel] | None = None
        self._misfit_camera_info: tuple[CameraInfo, CameraModel] | None = None  # refused for its size (counted once)
        self._fitting_camera_info: tuple[CameraInfo, CameraModel] | None = None  # the last good one
        self._parameter_camera: tuple[tuple, CameraModel] | None = None  # from fx/fy/cx/cy, keyed on them and the size
        self._last_arrival_ns: int | None = None  # perf_counter clock; None until the first frame
        self._camera_frame = ""  # the images' frame_id: /diagnostics' hardware_id once known

        # Outputs, all relative names so a namespace moves them together.
        out_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE if p.output_qos == "reliable"
                             else ReliabilityPolicy.BEST_EFFORT)

        def publisher(topic: str, msg_type=Image):
            return self._publisher(msg_type, topic, out_qos)

        self.pub_mask = publisher("semantic_mask")
        self.pub_conf = publisher("semantic_mask/confidence")
        self.pub_color = publisher("semantic_mask/color")
        self.pub_overlay = publisher("semantic_mask/overlay") if p.publish_overlay else None
        self.pub_info = publisher("semantic_mask/camera_info", CameraInfo)
        self.pub_latency = publisher("semantic_mask/latency", DiagnosticArray)
        self.pub_layers = {name: self._publisher(OccupancyGrid, layer_topic(name), LATCHED)
                           for name in self.projector.layers}
        self.pub_points = publisher("semantic_points", PointCloud2) if p.depth_topic else None
        # Remote viewers: PNG keeps mask values exact; colour and overlay as the user chooses.
        self.pub_compressed = {}  # image output -> (publisher, CompressedOut)
        if p.publish_compressed:
            for key, topic, encoding, fmt in (("mask", "semantic_mask", "mono8", "png"),
                                              ("color", "semantic_mask/color", "rgb8", p.compressed_format),
                                              ("overlay", "semantic_mask/overlay", "rgb8", p.compressed_format)):
                if key != "overlay" or p.publish_overlay:
                    self.pub_compressed[key] = (publisher(topic + "/compressed", CompressedImage),
                                                conv.CompressedOut(encoding, fmt, p.jpeg_quality))
        # Per output publisher: does anyone subscribe? Counted once per frame (rclpy's count takes a lock and walks
        # the graph) into this dict; the None entry (an output not offered) stays False.
        self._listened = dict.fromkeys(
            [self.pub_mask, self.pub_conf, self.pub_color, self.pub_overlay, self.pub_info, self.pub_latency,
             self.pub_points, *self.pub_layers.values(), *(pub for pub, _ in self.pub_compressed.values())], False)
        self.label_info = publish_label_info(self, info.class_names, self._publisher)
        self.pub_diag = self._publisher(DiagnosticArray, "/diagnostics", 10)
        self._out_mask, self._out_conf = conv.ImageOut("mono8"), conv.ImageOut("mono8")
        self._out_color, self._out_overlay = conv.ImageOut("rgb8"), conv.ImageOut("rgb8")
        self._out_info = CameraInfo()
        self._out_layers = {name: conv.GridOut(self.projector.grid) for name in self.projector.layers}
        self._out_points = conv.PointCloudOut()
        self._latency = DiagnosticArray()

        self.inputs = resolve_inputs(p.input_topic, p.camera_info_topic, p.input_type == "compressed",
                                     self.resolve_topic_name)
        self.rectified = is_rectified(p.rectified, self.inputs.image)  # CameraInfo's P, else its K and D
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._worker = threading.Thread(target=self._work, name="seg_worker", daemon=True)
        self._worker.start()

    def _subscribe(self) -> list:
        """Start taking frames: the image, CameraInfo and depth subscriptions."""
        p = self.params
        in_qos = QoSProfile(depth=p.input_depth, reliability=ReliabilityPolicy.RELIABLE if p.input_qos == "reliable"
                            else ReliabilityPolicy.BEST_EFFORT)
        msg_type = CompressedImage if p.input_type == "compressed" else Image
        subscriptions = [self.create_subscription(msg_type, self.inputs.image, self._on_image, in_qos)]
        if self.inputs.camera_info:
            subscriptions.append(self.create_subscription(CameraInfo, self.inputs.camera_info, self._on_camera_info,
                                                          qos_profile_sensor_data))
        if p.depth_topic:
            subscriptions.append(self.create_subscription(Image, p.depth_topic, self._on_depth, in_qos))
        return subscriptions

    def _start_diagnostics(self):
        """A fresh health window (stale from now on) and the timer that publishes /diagnostics."""
        self.health = HealthWindow(self.inputs.image, self.params.stale_timeout, _NOW())
        return self.create_timer(self.params.diagnostics_period, self._publish_diagnostics)

    def _started_line(self) -> str:
        p, info = self.params, self.backend.info
        return (f"model '{info.name}' {info.input_size[0]}x{info.input_size[1]} on {self.backend.describe()} "
                f"(warm-up: {p.warmup_frames} frames, {self._warm_up_ms:.0f} ms); "
                f"listening on {self.inputs.image} ({p.input_type}, {p.input_qos}), camera_info on "
                f"{self.inputs.camera_info or '(none: fx/fy/cx/cy)'} "
                f"({'rectified: P' if self.rectified else 'raw: K and D'}); camera pose from "
                f"{'TF' if self.pose_source.uses_tf else 'the camera_* parameters'}")

    # --- executor thread: cheap -------------------------------------------------------------------
    def _on_image(self, msg: Image | CompressedImage) -> None:
        arrival = _NOW()
        transport = self.get_clock().now().nanoseconds - conv.stamp_to_ns(msg.header.stamp)
        self._last_arrival_ns, self._camera_frame = arrival, msg.header.frame_id
        self.slot.put(_Frame(msg, arrival, transport))

    def _on_depth(self, msg: Image) -> None:
        with self._depths_arrived:
            self._depths.append(msg)
            self._depths_arrived.notify_all()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        problem = conv.camera_info_problem(msg)
        if not problem:
            try:
                self._camera_info = (msg, camera_from_info(msg, self.rectified))  # the worker takes it next frame
                return
            except ValueError as exc:
                problem = str(exc)
        self._refuse_camera_info(problem)

    def _refuse_camera_info(self, problem: str) -> None:
        """Count and report a CameraInfo the node will not use; it keeps the last good one or fx/fy/cx/cy."""
        with self._refusals_lock:  # refused where it arrives (executor) and where it misfits a frame (worker)
            self.camera_info_rejected += 1
        self.last_problem = f"CameraInfo refused: {problem}"
        self.get_logger().warning(f"ignoring CameraInfo on {self.inputs.camera_info}: {problem}",
                                  throttle_duration_sec=THROTTLE_S)

    def _on_set_parameters(self, changes) -> SetParametersResult:
        pose = {}
        for change in changes:  # rclpy has already refused read-only ones and out-of-range values
            if change.name == "overlay_alpha":
                self.pipeline.overlay_alpha = float(change.value)
            elif change.name in _POSE_PARAMS:
                pose[_POSE_PARAMS[change.name]] = float(change.value)
        if pose:
            self.pose_source.parameter_pose = replace(self.pose_source.parameter_pose, **pose)
        return SetParametersResult(successful=True)

    # --- worker thread ----------------------------------------------------------------------------
    def _work(self) -> None:
        log = self.get_logger()
        while not self.slot.closed:
            frame = self.slot.take(timeout=0.5)
            if frame is None:
                continue
            try:
                self._serve(frame)
            except ImageDecodeError as exc:
                self.rejected += 1
                self.last_problem = f"rejected: {exc}"
                log.warning(f"rejected frame: {exc}", throttle_duration_sec=THROTTLE_S)
            except Exception as exc:  # keep serving: one bad frame or a transient backend error must not end the node
                if self.slot.closed:
                    return
                self.errors += 1
                self.last_problem = f"failed: {type(exc).__name__}: {exc}"
                log.error(f"frame failed: {type(exc).__name__}: {exc}", throttle_duration_sec=THROTTLE_S)

    def _count_listeners(self) -> None:
        listened = self._listened
        for pub in listened:
            if pub is not None:
                listened[pub] = pub.get_subscription_count() > 0

    def _request(self) -> OutputRequest:
        """The outputs someone subscribes to, by this frame's counts."""
        listened = self._listened
        compressed = {key: listened[pub] for key, (pub, _) in self.pub_compressed.items()}
        return OutputRequest(
            mask=listened[self.pub_mask] or compressed.get("mask", False),
            confidence=listened[self.pub_conf],
            color=listened[self.pub_color] or compressed.get("color", False),
            overlay=listened[self.pub_overlay] or compressed.get("overlay", False),
            costmaps=any(listened[pub] for pub in self.pub_layers.values()),
            points=listened[self.pub_points],
        )

    def _serve(self, frame: _Frame) -> None:
        taken = _NOW()
        self._count_listeners()
        listened = self._listened
        request = self._request()
        want_info, want_latency = listened[self.pub_info], listened[self.pub_latency]
        if not (request.mask or request.confidence or request.color or request.overlay or request.costmaps
                or request.points or want_info or want_latency):
            self.idle += 1  # nobody listens: skip inference entirely
            return
        msg, pipeline = frame.msg, self.pipeline
        # Decode before the trace frame opens, so a rejected message leaves no half-recorded frame behind.
        if isinstance(msg, CompressedImage):
            rgb = pipeline.decode_compressed(msg.data, msg.format)
        else:
            rgb = pipeline.decode_raw(msg.data, msg.encoding, msg.height, msg.width, msg.step)
        decoded = _NOW()
        tracer = self.tracer
        slot = tracer.begin(conv.stamp_to_ns(msg.header.stamp))
        sent = transport_start(frame.arrival_ns, frame.transport_ns)
        if sent is not None:
            tracer.span(slot, trace.TRANSPORT, sent, frame.arrival_ns)
        else:
            self.get_logger().info(f"header stamps are {frame.transport_ns / 1e9:.0f} s off ROS time (a replayed "
                                   "bag?): transport is left out of the trace", once=True)
        tracer.span(slot, trace.WAIT, frame.arrival_ns, taken)
        tracer.span(slot, trace.DECODE, taken, decoded)
        cam_hw = rgb.shape[:2]
        k_source = self._intrinsics(cam_hw) if (request.costmaps or request.points or want_info) else None
        if request.costmaps:
            request = self._pose_for_frame(request, msg.header)
        stamp = conv.stamp_to_ns(msg.header.stamp)
        depth_source = (lambda: self._paired_depth(stamp, cam_hw)) if self.params.depth_topic else None
        self._depth_paired = False
        result = pipeline.process(rgb, request, slot, depth_source)
        if self._depth_paired and result.costmaps and self.projector.points_used == 0:
            self._depth_problem("no depth return falls in the costmap (all 0/NaN/inf?)")

        t_pub = _NOW()
        header = msg.header
        if request.mask and listened[self.pub_mask]:
            self.pub_mask.publish(self._out_mask.fill(header, result.mask))
        if request.confidence:
            self.pub_conf.publish(self._out_conf.fill(header, result.confidence))
        if request.color and listened[self.pub_color]:
            self.pub_color.publish(self._out_color.fill(header, result.color))
        if request.overlay and listened[self.pub_overlay]:
            self.pub_overlay.publish(self._out_overlay.fill(header, result.overlay))
        for key, (pub, out) in self.pub_compressed.items():
            if listened[pub]:
                pub.publish(out.fill(header, getattr(result, key)))
        for name, cells in result.costmaps.items():
            pub = self.pub_layers[name]
            if listened[pub]:
                pub.publish(self._out_layers[name].fill(header.stamp, cells))
        if request.points and result.points is not None:
            self.pub_points.publish(self._out_points.fill(header, result.points, result.points_hw))
        if want_info and k_source is not None:
            out_hw = cam_hw if self.params.output_resolution == "camera" else self.backend.info.input_size
            k, k_hw, source = k_source
            self.pub_info.publish(conv.scaled_camera_info(self._out_info, k, k_hw, out_hw, header, source,
                                                          self.rectified))
        tracer.span(slot, trace.PUBLISH, t_pub)
        tracer.commit(slot)
        self.published += 1
        if want_latency:
            self.pub_latency.publish(self._latency_msg(header, slot, result.inference_ms))

    def _paired_depth(self, stamp: int, cam_hw: tuple[int, int]) -> np.ndarray | None:
        """The depth image nearest the colour frame's stamp, decoded; None (counted, with the reason in
        last_problem) when there is none within depth_tolerance or it cannot be used."""
        p = self.params
        earliest = stamp - int(p.depth_tolerance * 1e9)
        with self._depths_arrived:
            newest = self._newest_depth_ns()
            if newest is not None and earliest > newest > stamp - DEPTH_LIVE_NS:
                self._depths_arrived.wait_for(lambda: self._newest_depth_ns() >= earliest, timeout=DEPTH_WAIT_S)
            msg = min(self._depths, key=lambda m: abs(conv.stamp_to_ns(m.header.stamp) - stamp), default=None)
        if msg is None:
            return self._depth_problem(f"no depth image on '{p.depth_topic}' yet")
        gap_ms = (conv.stamp_to_ns(msg.header.stamp) - stamp) / 1e6
        if abs(gap_ms) > p.depth_tolerance * 1e3:
            return self._depth_problem(f"nearest depth image is {gap_ms:+.0f} ms from the colour frame "
                                       f"(depth_tolerance {p.depth_tolerance * 1e3:.0f} ms)")
        try:
            depth = self._depth_decoder.decode(msg.data, msg.encoding, msg.height, msg.width, msg.step,
                                               msg.is_bigendian)
            check_registered(cam_hw, depth.shape)
            self._depth_paired = True
            return depth
        except DepthError as exc:
            return self._depth_problem(str(exc))

    def _newest_depth_ns(self) -> int | None:
        return conv.stamp_to_ns(self._depths[-1].header.stamp) if self._depths else None

    def _depth_problem(self, problem: str) -> None:
        self.depth_dropped += 1
        self.last_problem = f"depth: {problem}"
        self.get_logger().warning(f"depth-built outputs unknown for this frame: {problem}",
                                  throttle_duration_sec=THROTTLE_S)

    def _pose_for_frame(self, request: OutputRequest, header) -> OutputRequest:
        """Set the projector's camera pose for this frame; without one (TF chosen but unknown) skip the costmaps."""
        pose = self.pose_source.pose(header.frame_id, header.stamp)
        if pose is None:
            self.get_logger().warning(f"no costmaps: {self.pose_source.last_problem}", throttle_duration_sec=THROTTLE_S)
            return replace(request, costmaps=False)
        if self.pose_source.last_problem and self.pose_source.uses_tf:
            self.get_logger().warning(f"camera pose from the camera_* parameters: {self.pose_source.last_problem}",
                                      throttle_duration_sec=THROTTLE_S)
        self.projector.set_pose(pose)
        return request

    def _intrinsics(self, cam_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int], CameraInfo | None] | None:
        """K, the image size it belongs to and its CameraInfo: the last valid CameraInfo whose size fits the frame,
        else the fx/fy/cx/cy parameters (then no CameraInfo)."""
        arrived, fitting = self._camera_info, self._fitting_camera_info
        if arrived is not None and arrived is not self._misfit_camera_info and arrived is not fitting:
            k_hw = arrived[1].hw
            if same_aspect(k_hw, cam_hw):
                fitting = self._fitting_camera_info = arrived
            else:
                self._misfit_camera_info = arrived
                self._refuse_camera_info(f"it is for {k_hw[1]}x{k_hw[0]} images, the camera sends "
                                         f"{cam_hw[1]}x{cam_hw[0]} (another aspect ratio)")
        if fitting is not None and same_aspect(fitting[1].hw, cam_hw):
            info, camera = fitting  # a rectified image's K is P's 3x3: its mask is rectified too
            self.projector.set_camera(camera)
            return camera.k, camera.hw, info
        p = self.params
        if p.fx <= 0:
            self.get_logger().warning(
                f"no CameraInfo on '{self.inputs.camera_info}' and parameter fx is 0: costmaps and "
                f"semantic_mask/camera_info wait for intrinsics", throttle_duration_sec=THROTTLE_S)
            return None
        key = (cam_hw, p.fx, p.fy, p.cx, p.cy)
        if self._parameter_camera is None or self._parameter_camera[0] != key:  # built once per size and values
            h, w = cam_hw
            k = conv.k_matrix(p.fx, p.fy or p.fx, p.cx if p.cx >= 0 else (w - 1) / 2,
                              p.cy if p.cy >= 0 else (h - 1) / 2)
            self._parameter_camera = (key, CameraModel(k, cam_hw))
        camera = self._parameter_camera[1]
        self.projector.set_camera(camera)
        return camera.k, cam_hw, None

    def _latency_msg(self, header, slot: int, inference_ms: float) -> DiagnosticArray:
        durations = trace.span_durations_ms(self.tracer.spans[slot:slot + 1])[0]
        values = {f"{name}_ms": float(ms) for name, ms in zip(trace.STAGES + (trace.END_TO_END,), durations)
                  if not np.isnan(ms)}
        values["backend_inference_ms"] = float(inference_ms)
        device_ms = self.tracer.device_ms[slot]
        if not np.isnan(device_ms):
            values["device_inference_ms"] = float(device_ms)
        msg = self._latency
        msg.header = header
        msg.status = [DiagnosticStatus(level=DiagnosticStatus.OK,
                                       name=f"{self.get_fully_qualified_name()}: frame latency",
                                       hardware_id=self.backend.name, values=conv.key_values(values))]
        return msg

    # --- diagnostics ------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        counts = self.slot.counts
        health = self.health.report(_NOW(), Counts(counts.put, self.published, self.rejected, self.errors,
                                                             self.depth_dropped),
                                    self._last_arrival_ns, self.last_problem)
        info = self.backend.info
        values = {"input_rate_hz": health.input_hz, "output_rate_hz": health.output_hz, "frames_in": counts.put,
                  "frames_out": self.published, "dropped": counts.dropped, "rejected": self.rejected,
                  "errors": self.errors, "camera_info_rejected": self.camera_info_rejected,
                  "idle_no_subscribers": self.idle, "depth_dropped": self.depth_dropped,
                  "backend": self.backend.name,
                  "model": info.name, "model_input": f"{info.input_size[0]}x{info.input_size[1]}",
                  "input_topic": self.inputs.image, "last_problem": self.last_problem}
        for stage, s in self.tracer.summary(self.params.trace_window).items():
            values[f"{stage}_mean_ms"] = s.mean_ms
            if stage == trace.END_TO_END:
                values.update(latency_p50_ms=s.p50_ms, latency_p90_ms=s.p90_ms, latency_p99_ms=s.p99_ms,
                              latency_max_ms=s.max_ms)
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [DiagnosticStatus(level=health.level, name=status_name(self.get_fully_qualified_name()),
                                         message=health.message, hardware_id=self._camera_frame,
                                         values=conv.key_values(values))]
        try:
            self.pub_diag.publish(array)
        except Exception:  # rclpy's RCLError: SIGINT/SIGTERM shut the context down while this timer ran
            if self.context.ok():
                raise

    # --- shutdown ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker, then write the trace file and close the backend. A frame in flight is cut short where
        the backend can (ONNX Runtime) and waited for where it cannot: the backend is never closed under it."""
        self.slot.close()
        self.backend.interrupt()
        self._worker.join()
        if self.params.trace_file and self.tracer.committed:
            try:  # a trace that cannot be written must not spoil a clean exit
                from seg_perception.core.trace_export import write_trace

                info = self.backend.info
                write_trace(self.tracer, self.params.trace_file,
                            title=f"{self.get_fully_qualified_name()}, model {info.name} on {self.backend.name}")
                self.get_logger().info(f"trace of {self.tracer.committed} frames written to {self.params.trace_file}")
            except Exception as exc:
                self.get_logger().error(f"cannot write trace_file {self.params.trace_file}: {exc}")
        self.backend.close()
        self.pose_source.close()


class SegNode(SegNodeParts, Node):
    """The plain node: loads its model and subscribes as it is constructed."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__("seg_node", **node_kwargs)
        self._build()
        self._subscribe()
        self._start_diagnostics()
        self.get_logger().info(self._started_line())


def spin(node: SegNodeParts, finished: Future) -> None:
    """Run `node` until `finished` is done or a signal shuts the context down, then close and destroy it."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin_until_future_complete(finished)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # rclpy's RCLError
        if rclpy.ok():
            raise
        # SIGINT/SIGTERM shut the context down while the executor was building its wait set: a clean stop
    finally:
        node.close()
        executor.shutdown(timeout_sec=0.5)
        node.destroy_node()
        rclpy.try_shutdown()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)  # installs SIGINT and SIGTERM handlers that shut the context down
    try:
        node = SegNode()
    except (ParameterError, BackendError, ValueError, OSError) as exc:
        rclpy.logging.get_logger("seg_node").fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 2
    spin(node, Future())  # runs until a signal
    return 0


if __name__ == "__main__":
    sys.exit(main())
