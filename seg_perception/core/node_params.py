"""seg_node's parameters, ROS-free: one table gives each its default, description, range and mutability.

The node declares them through `seg_perception.ros.params`; bag evaluation and the demo read the same table to
project costmaps as the node does, without rclpy. config/seg.yaml documents the same names (a test keeps the two in
step). An invalid value stops start-up with a `ParameterError` naming the parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from seg_perception.backends import BACKENDS, backend_for
from seg_perception.backends.device import parse_device
from seg_perception.backends.onnxruntime_backend import provider_names
from seg_perception.backends.torch_backend import PRECISIONS
from seg_perception.core.costmap import CameraPose, GridSpec
from seg_perception.core.depth_costmap import DepthSpec
from seg_perception.core.image_codec import MAX_PIXELS
from seg_perception.core.trace_export import TRACE_SUFFIXES
from seg_perception.errors import UsageError

INPUT_QOS = ("sensor_data", "best_effort", "reliable")
OUTPUT_QOS = ("reliable", "best_effort")
# Building the ground remap table peaks at ~125 bytes per cell (measured): 10 M cells (100 m x 100 m at 3 cm) ~1.2 GB.
MAX_GRID_CELLS = 10_000_000


class ParameterError(UsageError, ValueError):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"parameter '{name}': {problem}")
        self.name = name


@dataclass(frozen=True)
class Spec:
    default: object
    description: str
    choices: tuple[str, ...] = ()
    range: tuple[float, float] | None = None
    read_only: bool = True  # False: may change at run time (the node applies it on the next frame)


# Camera pose parameters may be tuned live (e.g. while calibrating the pitch against a known floor).
PARAMETERS: dict[str, Spec] = {
    "model": Spec("", "ONNX file, TensorRT engine (.engine/.plan) or zoo name; empty = the embedded default model"),
    "trust_checkpoint": Spec(False, "with model 'zoo-name:checkpoint', unpickle a checkpoint that holds more than "
                                    "arrays and plain data, running any code it holds; only for files you trust"),
    "backend": Spec("auto", "inference backend", choices=BACKENDS),
    "device": Spec("auto", "where inference runs: auto (the GPU when the backend has one: torch's CUDA, ONNX "
                           "Runtime's TensorRT/CUDA providers; else the CPU), cpu, cuda or cuda:N (an error when "
                           "there is none)"),
    "precision": Spec("fp32", "torch backend precision: fp32, or fp16 through autocast (CUDA only; TensorRT's is "
                              "trt_precision)", choices=PRECISIONS),
    "cuda_graphs": Spec(False, "torch backend on CUDA: capture the forward once as a CUDA graph and replay it for "
                               "every frame (the input size is fixed)"),
    "providers": Spec("", "ONNX Runtime execution providers in preference order, e.g. 'tensorrt,cuda' (empty = "
                          "chosen by device); a provider this onnxruntime lacks is an error"),
    "threads": Spec(0, "CPU inference threads (0 = the backend's default)", range=(0, 256)),
    "warmup_frames": Spec(2, "black frames run through the model before subscribing: the first runs allocate and "
                             "pick kernels, several times slower than later ones", range=(0, 100)),
    "trt_precision": Spec("fp16", "TensorRT engine precision when building from an ONNX file",
                          choices=("fp32", "fp16", "int8")),
    "engine_rebuild": Spec(True, "rebuild a cached TensorRT engine whose sidecar does not match this machine "
                                 "(false = stop with a message naming what differs)"),
    "engine_cache_dir": Spec("", "where engines built from ONNX files are cached (empty = beside the ONNX file)"),
    "input_topic": Spec("image_raw", "camera topic (relative names follow the node's namespace and remaps); with "
                                     "input_type compressed, '/compressed' is appended unless the name ends with it"),
    "input_type": Spec("raw", "raw = sensor_msgs/Image, compressed = sensor_msgs/CompressedImage (jpeg, png)",
                       choices=("raw", "compressed")),
    "input_qos": Spec("sensor_data", "input QoS reliability", choices=INPUT_QOS),
    "input_depth": Spec(1, "input queue depth (1 = newest frame only)", range=(1, 100)),
    "max_input_pixels": Spec(MAX_PIXELS, "colour frames and depth images of more pixels are refused before decoding "
                                         "(size from the message or PNG/JPEG header)", range=(1, 1_000_000_000)),
    "output_qos": Spec("reliable", "output QoS reliability (a reliable publisher also serves best-effort "
                                   "subscribers)", choices=OUTPUT_QOS),
    "camera_info_topic": Spec("camera_info", "sensor_msgs/CameraInfo topic; left at camera_info it is the image "
                                             "topic's sibling (image_transport's rule); empty = use fx/fy/cx/cy"),
    "rectified": Spec("auto", "whether the images are rectified (image_proc's image_rect: costmaps use CameraInfo's "
                              "P, no distortion) or raw (K and the lens distortion D); auto = the image topic's "
                              "resolved name contains 'rect'", choices=("auto", "true", "false")),
    "output_resolution": Spec("camera", "size of mask, confidence, colour and overlay", choices=("camera", "model")),
    "publish_overlay": Spec(True, "offer semantic_mask/overlay (computed only while subscribed)"),
    "publish_compressed": Spec(False, "also offer <topic>/compressed (sensor_msgs/CompressedImage) for the mask (PNG), "
                                      "colour and overlay, for remote viewers (encoded only while subscribed)"),
    "compressed_format": Spec("jpeg", "format of the compressed colour and overlay (the mask is always PNG)",
                              choices=("jpeg", "png")),
    "jpeg_quality": Spec(90, "JPEG quality of the compressed colour and overlay", range=(1, 100)),
    "overlay_alpha": Spec(0.5, "weight of the class colours in the overlay", range=(0.0, 1.0), read_only=False),
    "fx": Spec(0.0, "fallback focal length x in pixels when no CameraInfo arrives (0 = none)", range=(0.0, 1e6)),
    "fy": Spec(0.0, "fallback focal length y in pixels (0 = same as fx)", range=(0.0, 1e6)),
    "cx": Spec(-1.0, "fallback principal point x in pixels (-1 = image centre)", range=(-1.0, 1e6)),
    "cy": Spec(-1.0, "fallback principal point y in pixels (-1 = image centre)", range=(-1.0, 1e6)),
    "camera_pose_source": Spec("auto", "where the camera pose in costmap_frame comes from: tf = the transform to "
                                       "the image's frame_id at its stamp, parameters = camera_x..camera_yaw, auto = "
                                       "tf where tf2_ros is installed and the transform is known, else the parameters",
                               choices=("auto", "tf", "parameters")),
    "tf_timeout": Spec(0.05, "seconds to wait for the camera transform at an image's stamp", range=(0.0, 10.0)),
    "camera_x": Spec(0.0, "camera position along costmap_frame x (m, forward)", range=(-100.0, 100.0),
                     read_only=False),
    "camera_y": Spec(0.0, "camera position along costmap_frame y (m, left)", range=(-100.0, 100.0),
                     read_only=False),
    "camera_height": Spec(1.2, "camera height above the ground plane (m)", range=(0.01, 100.0), read_only=False),
    "camera_roll": Spec(0.0, "camera roll (rad, > 0 clockwise seen from behind)", range=(-math.pi, math.pi),
                        read_only=False),
    "camera_pitch": Spec(0.0, "camera pitch (rad, > 0 looks down)", range=(-math.pi / 2, math.pi / 2),
                         read_only=False),
    "camera_yaw": Spec(0.0, "camera yaw (rad, > 0 looks left)", range=(-math.pi, math.pi), read_only=False),
    "costmap_frame": Spec("base_link", "frame_id of the costmaps (the frame the camera pose is given in)"),
    "costmap_resolution": Spec(0.1, "costmap cell size (m)", range=(0.01, 10.0)),
    "costmap_size_x": Spec(20.0, "costmap extent along x (m)", range=(0.1, 1000.0)),
    "costmap_size_y": Spec(20.0, "costmap extent along y (m)", range=(0.1, 1000.0)),
    "costmap_origin_x": Spec(0.0, "x of the costmap's first cell corner (m)", range=(-1000.0, 1000.0)),
    "costmap_origin_y": Spec(-10.0, "y of the costmap's first cell corner (m); -size_y/2 centres it",
                             range=(-1000.0, 1000.0)),
    "costmap_max_range": Spec(0.0, "cells farther than this from the camera stay unknown (m, 0 = no limit)",
                              range=(0.0, 1000.0)),
    "costmap_ignore_bottom": Spec(0.0, "fraction of image rows, from the bottom, left out of the costmaps (the "
                                       "ego hood or bumper)", range=(0.0, 0.9)),
    "cost_table": Spec(["road:0", "sidewalk:30", "terrain:50", "person:100", "rider:100", "car:100",
                        "truck:100", "bus:100", "train:100", "motorcycle:100", "bicycle:100"],
                       "'class:cost' entries (cost 0..100, -1 = unknown) for the fused semantic_costmap"),
    "default_cost": Spec(100, "fused cost of classes missing from cost_table", range=(-1, 100)),
    "costmap_classes": Spec(["road", "person", "car"], "one semantic_costmap/<class> layer per name "
                                                       "(spaces become underscores in the topic)"),
    "depth_topic": Spec("", "depth image registered to the colour camera (16UC1 mm or 32FC1 m); costmaps are then "
                            "built from depth and semantic_points is offered. Empty = flat-ground costmaps"),
    "depth_tolerance": Spec(0.02, "largest |depth stamp - colour stamp| that still pairs them (s)", range=(0.0, 1.0)),
    "min_obstacle_height": Spec(0.1, "depth points of obstacle classes below this height, and of ground classes "
                                     "farther than this from the ground, mark nothing (m)", range=(0.0, 10.0)),
    "max_obstacle_height": Spec(2.0, "depth points above this height mark nothing (m)", range=(0.01, 100.0)),
    "ground_classes": Spec(["road", "sidewalk", "terrain"], "classes whose depth points near the ground mark the "
                                                            "ground; every other class is an obstacle"),
    "points_stride": Spec(4, "semantic_points keeps every n-th mask pixel in both directions", range=(1, 64)),
    "points_organized": Spec(True, "semantic_points as an organised cloud (NaN for no return) rather than only "
                                   "the points with a return"),
    "diagnostics_period": Spec(1.0, "seconds between /diagnostics messages", range=(0.1, 60.0)),
    "stale_timeout": Spec(3.0, "/diagnostics turns WARN when no camera frame has arrived for this many seconds",
                          range=(0.1, 3600.0)),
    "trace_file": Spec("", "write the stage trace here on shutdown (.json Chrome trace, .csv or .png)"),
    "trace_window": Spec(300, "frames behind the latency percentiles in /diagnostics", range=(10, 100000)),
}


@dataclass
class NodeParams:
    model: str
    trust_checkpoint: bool
    backend: str
    device: str
    precision: str
    cuda_graphs: bool
    providers: str
    threads: int
    warmup_frames: int
    trt_precision: str
    engine_rebuild: bool
    engine_cache_dir: str
    input_topic: str
    input_type: str
    input_qos: str
    input_depth: int
    max_input_pixels: int
    output_qos: str
    camera_info_topic: str
    rectified: str
    output_resolution: str
    publish_overlay: bool
    publish_compressed: bool
    compressed_format: str
    jpeg_quality: int
    overlay_alpha: float
    fx: float
    fy: float
    cx: float
    cy: float
    camera_pose_source: str
    tf_timeout: float
    camera_x: float
    camera_y: float
    camera_height: float
    camera_roll: float
    camera_pitch: float
    camera_yaw: float
    costmap_frame: str
    costmap_resolution: float
    costmap_size_x: float
    costmap_size_y: float
    costmap_origin_x: float
    costmap_origin_y: float
    costmap_max_range: float
    costmap_ignore_bottom: float
    cost_table: list[str]
    default_cost: int
    costmap_classes: list[str]
    depth_topic: str
    depth_tolerance: float
    min_obstacle_height: float
    max_obstacle_height: float
    ground_classes: list[str]
    points_stride: int
    points_organized: bool
    diagnostics_period: float
    stale_timeout: float
    trace_file: str
    trace_window: int

    def backend_options(self) -> dict:
        """Keyword options for `open_backend`, those of the backend that will run the model. An option that
        backend does not take, set away from its default, is an error rather than silently ignored."""
        try:
            kind = backend_for(self.model, self.backend)
        except ValueError as exc:
            raise ParameterError("backend", str(exc)) from None
        unused = {"precision": (self.precision != "fp32", "torch"), "cuda_graphs": (self.cuda_graphs, "torch"),
                  "providers": (bool(self.providers), "onnxruntime"),
                  "trust_checkpoint": (self.trust_checkpoint, "torch")}  # only zoo-name:checkpoint reads pickles
        for name, (is_set, owner) in unused.items():
            if is_set and kind != owner:
                raise ParameterError(name, f"applies to the {owner} backend only; this model runs on {kind}")
        options = {"threads": self.threads} if self.threads else {}
        if kind == "torch":
            options.update(device=self.device, precision=self.precision, cuda_graphs=self.cuda_graphs)
            if self.trust_checkpoint:
                options["trusted"] = True
        elif kind == "onnxruntime":
            options.update(device=self.device, providers=self.providers)
        else:
            device = parse_device(self.device)
            if device.kind == "cpu":
                raise ParameterError("device", "TensorRT runs on a GPU; use auto, cuda or cuda:N")
            options["device"] = device.gpu_index
            if self.model.endswith(".onnx"):
                options.update(precision=self.trt_precision, rebuild=self.engine_rebuild,
                               cache_dir=self.engine_cache_dir or None)
        return options

    def pose(self) -> CameraPose:
        return CameraPose(self.camera_x, self.camera_y, self.camera_height, self.camera_roll, self.camera_pitch,
                          self.camera_yaw)

    def grid(self) -> GridSpec:
        grid = GridSpec(self.costmap_resolution, self.costmap_size_x, self.costmap_size_y, self.costmap_origin_x,
                        self.costmap_origin_y, self.costmap_frame, self.costmap_max_range, self.costmap_ignore_bottom)
        if grid.width * grid.height > MAX_GRID_CELLS:
            raise ParameterError("costmap_resolution", f"a {self.costmap_size_x:g} m x {self.costmap_size_y:g} m grid "
                                 f"at {self.costmap_resolution:g} m is {grid.width * grid.height:.3g} cells, more than "
                                 f"{MAX_GRID_CELLS:.0e}: use coarser cells or a smaller costmap")
        return grid

    def depth(self) -> DepthSpec:
        if self.min_obstacle_height >= self.max_obstacle_height:
            raise ParameterError("min_obstacle_height", f"{self.min_obstacle_height} is not below "
                                                        f"max_obstacle_height {self.max_obstacle_height}")
        return DepthSpec(self.min_obstacle_height, self.max_obstacle_height, tuple(self.ground_classes),
                         self.depth_tolerance)

    def costs(self) -> dict[str, int]:
        """cost_table as {class name: cost}."""
        out = {}
        for entry in self.cost_table:
            name, sep, cost = entry.rpartition(":")
            try:
                out[name.strip()] = int(cost)
            except ValueError:
                sep = ""
            if not sep or not name.strip():
                raise ParameterError("cost_table", f"entry '{entry}' is not 'class name:integer cost'")
        return out


assert {f.name for f in fields(NodeParams)} == set(PARAMETERS), "PARAMETERS and NodeParams disagree"


def check(name: str, value: object) -> None:
    """Raise ParameterError when `value` is not acceptable for `name`. Ranges are enforced by rclpy where the node
    declares them (checked here too, for callers without rclpy), topic names by `seg_perception.ros.params.check_topic_name` (rclpy's own validator)."""
    spec = PARAMETERS[name]
    if spec.choices and value not in spec.choices:
        raise ParameterError(name, f"'{value}' is not one of {', '.join(spec.choices)}")
    if spec.range is not None:  # what rclpy refuses where the node declares them
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(name, f"'{value}' is not a number")
        if not spec.range[0] <= value <= spec.range[1]:
            raise ParameterError(name, f"{value} is outside [{spec.range[0]:g}, {spec.range[1]:g}]")
    if name == "input_topic" and not value:
        raise ParameterError(name, "must not be empty")
    if name == "trace_file" and value and not value.lower().endswith(TRACE_SUFFIXES):
        raise ParameterError(name, f"'{value}' must end in one of {', '.join(TRACE_SUFFIXES)}")
    validate = {"device": parse_device, "providers": provider_names}.get(name)
    if validate is not None:
        try:
            validate(value)
        except ValueError as exc:
            raise ParameterError(name, str(exc)) from None
