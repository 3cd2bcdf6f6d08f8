"""Evaluate a rosbag2 drive through the node's own pipeline: every frame is decoded by
`SegPipeline.decode_raw` / `decode_compressed` and run by `SegPipeline.process`, traced stage by stage; frames
whose header stamp matches a ground-truth stamp (a mono8 topic, or `<stamp_ns>.png` files, of the model's class
ids) are scored: Cityscapes models by Cityscapes' metrics, others per their model card's classes.

A config's `window_ns` runs only the images logged in one time slice of the bag: fleet evaluation
(seg_perception/eval/fleet.py) splits long bags so and sums the slices' statistics.

`--write-bag` also stores what seg_node would publish (mask, colour mask, costmaps projected with the bag's
CameraInfo and the node's camera-pose / grid parameters; built from the bag's depth when those parameters set
`depth_topic`, as seg_node builds them) next to the camera topics, for RViz or Foxglove.

When the bag holds a true top-down map (OccupancyGrid of train ids, as `seg-perception synth --bag` writes), the
costmaps are scored too: flat-ground and, with a registered depth topic, depth-built, side by side
(eval.costmap_metrics). An image pairs with the depth image nearest its stamp within the node's depth_tolerance.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg_perception.backends import Backend, open_backend
from seg_perception.bags import (CAMERA_INFO, COMPRESSED_IMAGE, IMAGE, IMAGE_TYPES, OCCUPANCY_GRID, BagReader,
                                 BagWriter, grid_array, gt_dir_index, image_msg, mono8_array, occupancy_grid_msg,
                                 stamp_ns)
from seg_perception.core.camera_model import camera_from_info, is_rectified
from seg_perception.core.costmap import cost_lut, layer_topic
from seg_perception.core.depth_costmap import DepthProjector
from seg_perception.core.node_params import PARAMETERS, NodeParams, ParameterError, check
from seg_perception.core.pipeline import OutputRequest, SegPipeline
from seg_perception.core.trace import Tracer
from seg_perception.eval import EvalError
from seg_perception.eval.class_metrics import ClassStats, stats_for
from seg_perception.eval.costmap_metrics import CostmapIoU
from seg_perception.eval.image_eval import read_ids
from seg_perception.eval.metrics import EvalStats

MASK_TOPIC, COLOR_TOPIC = "/semantic_mask", "/semantic_mask/color"  # seg_node's names in the root namespace
# A slice reads ground truth and intrinsics logged this far beyond its window: a frame's ground truth is
# logged close to it, and may fall just past a slice boundary.
SLICE_MARGIN_NS = 1_000_000_000


@dataclass
class BagEvalConfig:
    bag: Path
    image_topic: str
    gt_topic: str = ""  # mono8 Image of the model's class ids, same header stamps as the images
    gt_dir: Path | None = None  # or <stamp_ns>.png files of them
    model: str = ""
    backend: str = "auto"
    threads: int = 0
    stamp_tolerance_ms: float = 1.0  # largest |image stamp - ground-truth stamp| that still matches
    camera_info_topic: str = "/camera/camera_info"  # for costmaps in --write-bag ('' = none)
    write_bag: Path | None = None
    write_storage: str = "mcap"
    params_file: Path | None = None  # seg_node parameters YAML: camera pose, grid, cost table for costmaps
    depth_topic: str = "/camera/depth/image_raw"  # registered depth for depth costmaps (absent from the bag: none)
    topdown_topic: str = "/camera/semantic_gt_topdown"  # true top-down map: costmap scoring (absent: none)
    window_ns: tuple[int | None, int | None] | None = None  # log time [start, stop) of the images to run; None: all

    def __post_init__(self) -> None:
        if bool(self.gt_topic) == (self.gt_dir is not None):
            raise EvalError("give exactly one of --gt-topic and --gt-dir")


@dataclass
class BagEvalResult:
    stats: EvalStats | ClassStats
    tracer: Tracer
    num_frames: int  # images run through the pipeline
    unmatched_frames: int  # images without ground truth within the tolerance
    unmatched_gt: int  # ground-truth stamps no image matched
    model_info: object
    matched_gt: frozenset[int]  # ground-truth stamps some image matched (slices of one bag add up by union)
    costmap_iou: CostmapIoU | None = None  # counts (.report() scores them) when the bag has a top-down map


def no_match_error(config: BagEvalConfig, frames: int, gt_stamps: int) -> EvalError:
    return EvalError(f"no image on '{config.image_topic}' has ground truth within {config.stamp_tolerance_ms} ms "
                     f"of its header stamp ({frames} images, {gt_stamps} ground-truth stamps)")


def report_source(config: BagEvalConfig, num_frames: int, unmatched_frames: int, unmatched_gt: int) -> dict:
    """The `source` block of a bag's report."""
    return {"dataset": "bag", "bag": str(config.bag), "image_topic": config.image_topic,
            "gt": config.gt_topic or str(config.gt_dir), "num_frames": num_frames,
            "unmatched_frames": unmatched_frames, "unmatched_gt": unmatched_gt,
            "write_bag": str(config.write_bag) if config.write_bag else None}


def _read_span(config: BagEvalConfig) -> tuple[int | None, int | None]:
    """The log times to read: all, or a slice's window widened by SLICE_MARGIN_NS."""
    if config.window_ns is None:
        return None, None
    start, stop = config.window_ns
    return (None if start is None else start - SLICE_MARGIN_NS), (None if stop is None else stop + SLICE_MARGIN_NS)


def _in_window(config: BagEvalConfig, log_ns: int) -> bool:
    if config.window_ns is None:
        return True
    start, stop = config.window_ns
    return (start is None or log_ns >= start) and (stop is None or log_ns < stop)


def _nearest(stamps: list[int], ns: int, tolerance_ns: int) -> int | None:
    i = bisect.bisect_left(stamps, ns)
    best = min((stamps[j] for j in (i - 1, i) if 0 <= j < len(stamps)), key=lambda s: abs(s - ns), default=None)
    return best if best is not None and abs(best - ns) <= tolerance_ns else None


def _ros_parameters(path: Path) -> dict:
    """The `ros__parameters` block of a node parameters YAML (the first one in the file)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    for node in data.values():
        if isinstance(node, dict) and "ros__parameters" in node:
            return node["ros__parameters"]
    raise EvalError(f"'{path}' has no ros__parameters block")


def node_projector(overrides: dict, class_names, source: str = "seg_node parameters"):
    """seg_node's projector (flat ground and depth) and its fused cost table, from the node's parameter defaults
    plus `overrides` (what --ros-args or a parameters file set)."""
    values = {name: spec.default for name, spec in PARAMETERS.items()}
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise EvalError(f"{source}: unknown seg_node parameter(s) {unknown}")
    values.update(overrides)
    try:
        for name, value in values.items():
            check(name, value)
        p = NodeParams(**values)
        return (DepthProjector(p.grid(), p.pose(), class_names, p.costs(), p.default_cost, p.costmap_classes,
                               p.depth()), cost_lut(class_names, p.costs(), p.default_cost))
    except (ParameterError, ValueError) as exc:
        raise EvalError(f"costmap parameters: {exc}") from exc


def _node_parameters(config: BagEvalConfig) -> dict:
    """The seg_node parameters --params-file sets (none without one)."""
    return _ros_parameters(config.params_file) if config.params_file else {}


def _rectified(parameters: dict, image_topic: str) -> bool:
    """seg_node's rule for the bag's image topic: its `rectified` parameter in --params-file, else auto."""
    return is_rectified(parameters.get("rectified", "auto"), image_topic)


class _Outputs:
    """What seg_node would publish, written into a new bag beside the camera topics."""

    def __init__(self, config: BagEvalConfig, pipeline: SegPipeline, reader: BagReader) -> None:
        self.writer = BagWriter(config.write_bag, config.write_storage)
        self.reader = reader
        self.projector = pipeline.projector
        self.layer_topics = {}
        if self.projector is not None:
            self.layer_topics = {name: "/" + layer_topic(name) for name in self.projector.layers}

    def copy(self, conn, log_ns: int, raw: bytes) -> None:
        self.writer.write_raw(conn.topic, conn.msgtype, log_ns, raw)

    def frame(self, log_ns: int, msg_header, result) -> None:
        ns, frame_id = stamp_ns(msg_header), msg_header.frame_id
        self.writer.write(MASK_TOPIC, log_ns, image_msg(ns, frame_id, result.mask, "mono8"))
        self.writer.write(COLOR_TOPIC, log_ns, image_msg(ns, frame_id, result.color, "rgb8"))
        for name, cells in result.costmaps.items():
            self.writer.write(self.layer_topics[name], log_ns, occupancy_grid_msg(ns, self.projector.grid, cells))

    def close(self) -> None:
        self.writer.close()


def evaluate_bag(config: BagEvalConfig, on_frame: Callable[[int], None] | None = None,
                 backend: Backend | None = None) -> BagEvalResult:
    """on_frame(total_frames) is called after every image, e.g. to move a progress bar. backend: an open backend
    to run (left open, e.g. one a fleet worker keeps for all its bags); None opens config.model."""
    with BagReader(config.bag) as reader:
        image_type = reader.topic(config.image_topic, IMAGE_TYPES)
        if config.gt_topic:
            reader.topic(config.gt_topic, (IMAGE,))
            gt_stamps = sorted(stamp_ns(m.header)
                               for _, _, m in reader.messages([config.gt_topic], *_read_span(config)))
            gt_files = {}
        else:
            gt_files = gt_dir_index(config.gt_dir)
            gt_stamps = sorted(gt_files)
        if not gt_stamps and config.window_ns is None:  # a slice may hold none; its bag as a whole is checked
            raise EvalError(f"no ground truth in '{config.gt_topic or config.gt_dir}'")
        info_topic = config.camera_info_topic if config.camera_info_topic in reader.topics else ""
        if info_topic:
            reader.topic(info_topic, (CAMERA_INFO,))
        topdown_topic = config.topdown_topic if info_topic and config.topdown_topic in reader.topics else ""
        parameters = _node_parameters(config)
        # seg_node with a `depth_topic` builds its costmaps from depth ('': flat ground): so does --write-bag
        write_depth = bool(config.write_bag and info_topic and parameters.get("depth_topic", ""))
        if write_depth and config.depth_topic not in reader.topics:
            raise EvalError(f"'{config.params_file}' sets depth_topic, but '{config.bag}' has no depth topic "
                            f"'{config.depth_topic}' (--depth-topic) to build --write-bag's costmaps from")
        depth_topic = config.depth_topic if (topdown_topic or write_depth) and config.depth_topic in reader.topics \
            else ""
        if topdown_topic:
            reader.topic(topdown_topic, (OCCUPANCY_GRID,))
        if depth_topic:
            reader.topic(depth_topic, (IMAGE,))
        n_frames = reader.count(config.image_topic)
        if n_frames == 0:
            raise EvalError(f"topic '{config.image_topic}' in '{config.bag}' has no messages")

        own_backend = backend is None
        if own_backend:
            backend = open_backend(config.model, config.backend, **({"threads": config.threads} if config.threads
                                                                    else {}))
        try:
            projector, fused_lut = (node_projector(parameters, backend.info.class_names, f"'{config.params_file}'")
                                    if (config.write_bag or topdown_topic) and info_topic else (None, None))
            tracer = Tracer(capacity=n_frames)
            pipeline = SegPipeline(backend, "camera", projector if config.write_bag else None, tracer)
            outputs = _Outputs(config, pipeline, reader) if config.write_bag else None
            max_pixels = parameters.get("max_input_pixels", PARAMETERS["max_input_pixels"].default)
            depth = (_DepthPairing(depth_topic, projector.depth.pairing_tolerance_s, max_pixels) if depth_topic
                     else None)
            scoring = (_CostmapScoring(projector, fused_lut, backend.info.class_names, depth)
                       if topdown_topic else None)
            try:
                result = _run(config, reader, pipeline, outputs, image_type, info_topic, gt_stamps, gt_files,
                              n_frames, on_frame, _rectified(parameters, config.image_topic), scoring,
                              topdown_topic, depth, write_depth)
                if scoring is not None:
                    result.costmap_iou = scoring.iou
                return result
            finally:
                if outputs is not None:
                    outputs.close()
        finally:
            if own_backend:
                backend.close()


class _DepthPairing:
    """The bag's recent depth images, and the one seg_node pairs with a colour frame: the nearest its stamp within
    depth_tolerance, decoded (metres) and checked to be registered to the frame."""

    def __init__(self, topic: str, tolerance_s: float, max_pixels: int) -> None:
        """max_pixels: seg_node's max_input_pixels."""
        from seg_perception.core.depth_costmap import DepthDecoder

        self.topic = topic
        self.tolerance_ns = int(tolerance_s * 1e9)
        self.decoder = DepthDecoder(max_pixels)
        self.depths: collections.deque = collections.deque(maxlen=8)  # (stamp, message) of recent depth images

    def on_depth(self, msg) -> None:
        self.depths.append((stamp_ns(msg.header), msg))

    def paired(self, ns: int, camera_hw: tuple[int, int]) -> np.ndarray | None:
        from seg_perception.core.depth_costmap import check_registered

        stamp, msg = min(self.depths, key=lambda d: abs(d[0] - ns), default=(None, None))
        if msg is None or abs(stamp - ns) > self.tolerance_ns:
            return None
        depth = self.decoder.decode(msg.data, msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian)
        check_registered(camera_hw, depth.shape)
        return depth


class _CostmapScoring:
    """Flat-ground and depth costmaps of every image, scored against the true top-down map of the same stamp
    (whichever of the two arrives first waits for the other)."""

    def __init__(self, projector, fused_lut: np.ndarray, class_names, depth: _DepthPairing | None) -> None:
        self.projector, self.depth = projector, depth
        self.iou = CostmapIoU(tuple(class_names), fused_lut)
        # Top-down maps that arrived before their image, and layers (copies) and view of images whose map has not
        # arrived; both by stamp, dropped once SLICE_MARGIN_NS older than the newest frame: a map is logged close
        # to its image, and a bag with maps for some frames only would otherwise keep every other frame's layers.
        self.truths: dict[int, np.ndarray] = {}
        self.waiting: dict[int, tuple[dict, np.ndarray]] = {}
        self._visible_key: tuple | None = None

    def on_truth(self, msg) -> None:
        from seg_perception.eval.costmap_metrics import resample_truth

        ns = stamp_ns(msg.header)
        truth = resample_truth(grid_array(msg), msg.info.resolution, msg.info.origin.position.x,
                               msg.info.origin.position.y, self.projector.grid)
        if ns in self.waiting:
            self._score(*self.waiting.pop(ns), truth)
        else:
            self.truths[ns] = truth

    def on_frame(self, ns: int, labels: np.ndarray, camera_hw: tuple[int, int],
                 depth_layers: dict[str, np.ndarray] | None = None) -> None:
        """depth_layers: the depth-built costmaps of this frame when the pipeline made them (else built here)."""
        layers = {"flat_ground": self.projector.project(labels, camera_hw)}
        if depth_layers is not None:
            layers["depth"] = depth_layers
        elif self.depth is not None:
            layers["depth"] = self.projector.project_depth(labels, camera_hw, self.depth.paired(ns, camera_hw))
        visible = self._visible(camera_hw)
        if ns in self.truths:
            self._score(layers, visible, self.truths.pop(ns))
        else:  # the projector reuses its buffers
            self.waiting[ns] = ({m: {k: v.copy() for k, v in grids.items()} for m, grids in layers.items()}, visible)
        for pending in (self.truths, self.waiting):
            for stale in [stamp for stamp in pending if stamp < ns - SLICE_MARGIN_NS]:
                del pending[stale]

    def _visible(self, camera_hw: tuple[int, int]) -> np.ndarray:
        from seg_perception.eval.costmap_metrics import visible_cells

        camera = self.projector.camera
        key = (camera.key, camera_hw, self.projector.pose)
        if key != self._visible_key:
            self._cells_visible = visible_cells(self.projector.grid, self.projector.pose, camera, camera_hw)
            self._visible_key = key
        return self._cells_visible

    def _score(self, layers: dict, visible: np.ndarray, truth: np.ndarray) -> None:
        for mode, grids in layers.items():
            self.iou.add(mode, grids, truth, visible)


def _run(config: BagEvalConfig, reader: BagReader, pipeline: SegPipeline, outputs: _Outputs | None,
         image_type: str, info_topic: str, gt_stamps: list[int], gt_files: dict[int, Path], n_frames: int,
         on_frame, rectified: bool, scoring: _CostmapScoring | None = None, topdown_topic: str = "",
         depth: _DepthPairing | None = None, write_depth: bool = False) -> BagEvalResult:
    """rectified: how CameraInfo is read (seg_node's rule); depth: the bag's depth images, for scoring and, when
    write_depth, for --write-bag's costmaps (else flat ground)."""
    tracer = pipeline.tracer
    projector = scoring.projector if scoring is not None else pipeline.projector
    request = OutputRequest(mask=True, color=outputs is not None, costmaps=pipeline.projector is not None)
    tolerance_ns = int(config.stamp_tolerance_ms * 1e6)
    stats = stats_for(pipeline.info.class_names)
    gts: dict[int, np.ndarray] = {}  # ground truth that arrived before its image
    waiting: dict[int, np.ndarray] = {}  # predictions whose ground truth has not arrived yet
    matched: set[int] = set()
    frames = unmatched = 0

    def score(gt_ns: int, gt: np.ndarray, pred: np.ndarray) -> None:
        if gt.shape != pred.shape:
            raise EvalError(f"ground truth at stamp {gt_ns} is {gt.shape[1]}x{gt.shape[0]} but the image is "
                            f"{pred.shape[1]}x{pred.shape[0]}")
        try:
            stats.add(gt, pred)
        except ValueError as exc:
            raise EvalError(f"ground truth at stamp {gt_ns}: {exc}") from None

    def set_intrinsics(msg) -> None:
        try:
            camera = camera_from_info(msg, rectified)
        except ValueError as exc:
            raise EvalError(f"CameraInfo on '{info_topic}': {exc}") from None
        projector.set_camera(camera)

    if projector is not None:  # intrinsics before the first frame, whatever the message order
        set_intrinsics(reader.first(info_topic))

    depth_topic = depth.topic if depth is not None else ""
    topics = [t for t in (config.image_topic, config.gt_topic, info_topic, depth_topic, topdown_topic) if t]
    for conn, log_ns, raw in reader.raw_messages(topics, *_read_span(config)):
        if conn.topic == config.image_topic and not _in_window(config, log_ns):
            continue  # another slice's frame
        if outputs is not None and conn.topic not in (config.gt_topic, depth_topic, topdown_topic):
            outputs.copy(conn, log_ns, raw)
        msg = reader.deserialize(raw, conn.msgtype)
        if conn.topic == info_topic:
            if projector is not None:
                set_intrinsics(msg)
            continue
        if conn.topic == depth_topic:
            depth.on_depth(msg)
            continue
        if conn.topic == topdown_topic:
            scoring.on_truth(msg)
            continue
        ns = stamp_ns(msg.header)
        if conn.topic == config.gt_topic:
            gt = mono8_array(msg)
            if ns in waiting:
                score(ns, gt, waiting.pop(ns))
            else:
                gts[ns] = gt.copy()
            continue
        frames += 1
        slot = tracer.begin(ns)
        if image_type == COMPRESSED_IMAGE:
            rgb = pipeline.decode_compressed(msg.data, msg.format, slot)
        else:
            rgb = pipeline.decode_raw(msg.data, msg.encoding, msg.height, msg.width, msg.step, slot)
        depth_source = (lambda: depth.paired(ns, rgb.shape[:2])) if write_depth else None
        result = pipeline.process(rgb, request, slot, depth_source)
        tracer.commit(slot)
        if scoring is not None:  # the depth image is decoded and projected once: the pipeline's costmaps are scored
            scoring.on_frame(ns, result.model_labels, rgb.shape[:2], result.costmaps if write_depth else None)
        if outputs is not None:
            outputs.frame(log_ns, msg.header, result)
        if on_frame is not None:
            on_frame(n_frames)
        gt_ns = _nearest(gt_stamps, ns, tolerance_ns)
        if gt_ns is None:
            unmatched += 1
            continue
        matched.add(gt_ns)
        if gt_files:
            score(gt_ns, read_ids(gt_files[gt_ns]), result.mask)
        elif gt_ns in gts:
            score(gt_ns, gts.pop(gt_ns), result.mask)
        else:
            waiting[gt_ns] = result.mask.copy()  # the pipeline reuses its buffers
    if config.window_ns is not None:
        late = len(waiting)  # ground truth that exists (its stamp is listed) but was not read within the margin
        if late:
            raise EvalError(f"'{config.bag}': the ground truth of {late} frames is logged more than "
                            f"{SLICE_MARGIN_NS / 1e9:g} s from them; evaluate this bag whole (no slices)")
    elif stats.num_images == 0:
        raise no_match_error(config, frames, len(gt_stamps))
    return BagEvalResult(stats, tracer, frames, unmatched, len(gt_stamps) - len(matched), pipeline.info,
                         frozenset(matched))
