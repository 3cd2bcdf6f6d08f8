"""Evaluate a rosbag2 drive through the node's own pipeline: every frame is decoded by
`SegPipeline.decode_raw` / `decode_compressed` and run by `SegPipeline.process`, traced stage by stage; frames
whose header stamp matches a ground-truth stamp (mono8 train-id topic, or `<stamp_ns>.png` files) are scored.

A config's `window_ns` runs only the images logged in one time slice of the bag: fleet evaluation
(seg_perception/eval/fleet.py) splits long bags so and sums the slices' statistics.

`--write-bag` also stores what seg_node would publish (mask, colour mask, costmaps projected with the bag's
CameraInfo and the node's camera-pose / grid parameters) next to the camera topics, for RViz or Foxglove.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg_perception.backends import Backend, open_backend
from seg_perception.core.pipeline import OutputRequest, SegPipeline
from seg_perception.core.trace import Tracer
from seg_perception.eval import EvalError
from seg_perception.eval.bag_io import (CAMERA_INFO, COMPRESSED_IMAGE, IMAGE, IMAGE_TYPES, BagReader, BagWriter,
                                        gt_dir_index, image_msg, mono8_array, occupancy_grid_msg, stamp_ns)
from seg_perception.eval.cityscapes import read_ids
from seg_perception.eval.metrics import EvalStats, accumulate

MASK_TOPIC, COLOR_TOPIC = "/semantic_mask", "/semantic_mask/color"  # seg_node's names in the root namespace
# A slice reads ground truth and intrinsics logged this far beyond its window: a frame's ground truth is
# logged close to it, and may fall just past a slice boundary.
SLICE_MARGIN_NS = 1_000_000_000


@dataclass
class BagEvalConfig:
    bag: Path
    image_topic: str
    gt_topic: str = ""  # mono8 Image of train ids, same header stamps as the images
    gt_dir: Path | None = None  # or <stamp_ns>.png train-id files
    model: str = ""
    backend: str = "auto"
    threads: int = 0
    stamp_tolerance_ms: float = 1.0  # largest |image stamp - ground-truth stamp| that still matches
    camera_info_topic: str = "/camera/camera_info"  # for costmaps in --write-bag ('' = none)
    write_bag: Path | None = None
    write_storage: str = "mcap"
    params_file: Path | None = None  # seg_node parameters YAML: camera pose, grid, cost table for costmaps
    window_ns: tuple[int | None, int | None] | None = None  # log time [start, stop) of the images to run; None: all

    def __post_init__(self) -> None:
        if bool(self.gt_topic) == (self.gt_dir is not None):
            raise EvalError("give exactly one of --gt-topic and --gt-dir")


@dataclass
class BagEvalResult:
    stats: EvalStats
    tracer: Tracer
    num_frames: int  # images run through the pipeline
    unmatched_frames: int  # images without ground truth within the tolerance
    unmatched_gt: int  # ground-truth stamps no image matched
    model_info: object
    matched_gt: frozenset[int]  # ground-truth stamps some image matched (slices of one bag add up by union)


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


def _projector(config: BagEvalConfig, class_names):
    """The node's GroundProjector, from seg_node's parameter defaults plus --params-file."""
    from seg_perception.core.costmap import GroundProjector
    from seg_perception.ros.params import PARAMETERS, NodeParams, ParameterError, check

    values = {name: spec.default for name, spec in PARAMETERS.items()}
    if config.params_file is not None:
        overrides = _ros_parameters(config.params_file)
        unknown = sorted(set(overrides) - set(values))
        if unknown:
            raise EvalError(f"'{config.params_file}': unknown seg_node parameter(s) {unknown}")
        values.update(overrides)
    try:
        for name, value in values.items():
            check(name, value)
        p = NodeParams(**values)
        return GroundProjector(p.grid(), p.pose(), class_names, p.costs(), p.default_cost, p.costmap_classes)
    except (ParameterError, ValueError) as exc:
        raise EvalError(f"costmap parameters: {exc}") from exc


class _Outputs:
    """What seg_node would publish, written into a new bag beside the camera topics."""

    def __init__(self, config: BagEvalConfig, pipeline: SegPipeline, reader: BagReader) -> None:
        from seg_perception.ros.node import layer_topic  # the node's topic names, so RViz configs carry over

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
        n_frames = reader.count(config.image_topic)
        if n_frames == 0:
            raise EvalError(f"topic '{config.image_topic}' in '{config.bag}' has no messages")

        own_backend = backend is None
        if own_backend:
            backend = open_backend(config.model, config.backend, **({"threads": config.threads} if config.threads
                                                                    else {}))
        try:
            projector = _projector(config, backend.info.class_names) if config.write_bag and info_topic else None
            tracer = Tracer(capacity=n_frames)
            pipeline = SegPipeline(backend, "camera", projector, tracer)
            outputs = _Outputs(config, pipeline, reader) if config.write_bag else None
            try:
                return _run(config, reader, pipeline, outputs, image_type, info_topic, gt_stamps, gt_files,
                            n_frames, on_frame)
            finally:
                if outputs is not None:
                    outputs.close()
        finally:
            if own_backend:
                backend.close()


def _run(config: BagEvalConfig, reader: BagReader, pipeline: SegPipeline, outputs: _Outputs | None,
         image_type: str, info_topic: str, gt_stamps: list[int], gt_files: dict[int, Path], n_frames: int,
         on_frame) -> BagEvalResult:
    tracer, projector = pipeline.tracer, pipeline.projector
    request = OutputRequest(mask=True, color=outputs is not None, costmaps=projector is not None)
    tolerance_ns = int(config.stamp_tolerance_ms * 1e6)
    stats = EvalStats()
    gts: dict[int, np.ndarray] = {}  # ground truth that arrived before its image
    waiting: dict[int, np.ndarray] = {}  # predictions whose ground truth has not arrived yet
    matched: set[int] = set()
    frames = unmatched = 0

    def score(gt_ns: int, gt: np.ndarray, pred: np.ndarray) -> None:
        if gt.shape != pred.shape:
            raise EvalError(f"ground truth at stamp {gt_ns} is {gt.shape[1]}x{gt.shape[0]} but the image is "
                            f"{pred.shape[1]}x{pred.shape[0]}")
        accumulate(stats, gt, pred, "trainIds", "trainIds")

    if projector is not None:  # intrinsics before the first frame, whatever the message order
        msg = reader.first(info_topic)
        projector.set_intrinsics(np.asarray(msg.k).reshape(3, 3), (msg.height, msg.width))

    topics = [t for t in (config.image_topic, config.gt_topic, info_topic) if t]
    for conn, log_ns, raw in reader.raw_messages(topics, *_read_span(config)):
        if conn.topic == config.image_topic and not _in_window(config, log_ns):
            continue  # another slice's frame
        if outputs is not None and conn.topic != config.gt_topic:
            outputs.copy(conn, log_ns, raw)
        msg = reader.deserialize(raw, conn.msgtype)
        if conn.topic == info_topic:
            if projector is not None:
                projector.set_intrinsics(np.asarray(msg.k).reshape(3, 3), (msg.height, msg.width))
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
        result = pipeline.process(rgb, request, slot)
        tracer.commit(slot)
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
        if waiting:
            raise EvalError(f"'{config.bag}': the ground truth of {len(waiting)} frames is logged more than "
                            f"{SLICE_MARGIN_NS / 1e9:g} s from them; evaluate this bag whole (no slices)")
    elif stats.num_images == 0:
        raise no_match_error(config, frames, len(gt_stamps))
    return BagEvalResult(stats, tracer, frames, unmatched, len(gt_stamps) - len(matched), pipeline.info,
                         frozenset(matched))
