"""`seg-perception bench`: the node's pipeline standalone on generated camera frames, stage by stage.

Frames are made once up front (smooth random colour fields at the camera size, stored as the message bytes
a camera driver would send), then each iteration decodes, resizes to the model input, infers, post-processes
mask + confidence + colour at camera resolution and optionally projects costmaps, exactly as seg_node does.
No ROS and no torch: what is timed is the deployed path minus DDS.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable

import cv2
import numpy as np

from seg_perception.backends import BACKENDS, DEFAULT_MODEL, BackendError, open_backend
from seg_perception.core import trace
from seg_perception.core.costmap import CameraPose, GridSpec, GroundProjector
from seg_perception.core.pipeline import OutputRequest, SegPipeline
from seg_perception.core.trace_export import format_table, write_trace
from seg_perception.progress import progress_bar
from seg_perception.sizes import parse_hw

ENCODINGS = ("rgb8", "bgr8", "jpeg")
_DISTINCT_FRAMES = 4  # cycled, so the loop itself allocates nothing
_HFOV_RAD = math.radians(60.0)  # --costmaps intrinsics: a typical automotive camera


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help="ONNX file or TensorRT engine (default: the embedded model)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--threads", type=int, default=0, help="CPU inference threads (0 = the backend's default)")
    p.add_argument("--input-size", type=parse_hw, default=(1024, 2048),
                   help="HxW of the generated CAMERA frames; the pipeline resizes them to the model input")
    p.add_argument("--frames", type=int, default=100, help="timed frames")
    p.add_argument("--warmup", type=int, default=5, help="untimed frames first (allocation, lazy init)")
    p.add_argument("--encoding", default="rgb8", choices=ENCODINGS,
                   help="how frames arrive: raw sensor_msgs/Image encodings or a jpeg CompressedImage")
    p.add_argument("--output-resolution", default="camera", choices=("camera", "model"))
    p.add_argument("--costmaps", action="store_true",
                   help="also project a fused costmap (default 20 m grid, 60 deg camera 1.2 m up, pitched down)")
    p.add_argument("--trace", metavar="FILE", help="write the trace: .json (Chrome/Perfetto), .csv or .png")


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.warmup < 0:
        return _fail("--frames must be >= 1 and --warmup >= 0")
    if not args.model and not DEFAULT_MODEL.is_file():
        return _fail(f"no --model given and the embedded default model {DEFAULT_MODEL} is not there; "
                     "pass --model FILE.onnx (make one with `seg-perception export metaseg-t --random-weights "
                     "--out FILE.onnx`)")
    try:
        backend = open_backend(args.model, args.backend, **({"threads": args.threads} if args.threads else {}))
    except (BackendError, ValueError) as exc:
        return _fail(str(exc))
    cam_h, cam_w = args.input_size
    with backend:
        info = backend.info
        tracer, wall = measure(backend, (cam_h, cam_w), args.frames, args.warmup, args.encoding,
                               args.output_resolution, args.costmaps)
        print(f"model {info.name} ({info.input_size[0]}x{info.input_size[1]}) on {backend.describe()}; "
              f"camera {cam_h}x{cam_w} {args.encoding}, "
              f"output at {args.output_resolution} resolution")
        print(format_table(tracer.summary(), title=f"{args.frames} frames after {args.warmup} warm-up"))
        print(f"throughput {args.frames / wall:.2f} frames/s (one frame at a time)")
        if args.trace:
            title = f"seg-perception bench, model {info.name} on {backend.describe()}, camera {cam_h}x{cam_w}"
            print(f"trace written to {write_trace(tracer, args.trace, title=title)}")
    return 0


def measure(backend, cam_hw: tuple[int, int], frames: int, warmup: int, encoding: str = "rgb8",
            output_resolution: str = "camera", costmaps: bool = False) -> tuple[trace.Tracer, float]:
    """seg_node's pipeline on generated camera frames: decode, resize, infer, mask + confidence + colour (and a
    fused costmap). Returns the tracer holding the `frames` timed frames and their wall time in seconds."""
    projector = _projector(backend.info.class_names, cam_hw) if costmaps else None
    tracer = trace.Tracer(capacity=frames)
    pipeline = SegPipeline(backend, output_resolution, projector, tracer)
    request = OutputRequest(mask=True, confidence=True, color=True, costmaps=costmaps)
    data = camera_frames(*cam_hw, encoding)
    decode = frame_decoder(pipeline, encoding, *cam_hw)
    with progress_bar(warmup + frames, "frame") as bar:  # drawn only on a terminal
        for i in range(warmup):
            pipeline.process(decode(data[i % len(data)], -1), request)
            bar.update()
        t0 = time.perf_counter()
        for i in range(frames):
            slot = tracer.begin()
            pipeline.process(decode(data[i % len(data)], slot), request, slot)
            tracer.commit(slot)
            bar.update()
        wall = time.perf_counter() - t0
    return tracer, wall


def _fail(message: str) -> int:
    print(f"seg-perception bench: {message}", file=sys.stderr)
    return 2


def camera_frames(h: int, w: int, encoding: str) -> list[bytes]:
    """A few distinct smooth colour fields, as the bytes a camera would publish in `encoding`."""
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(_DISTINCT_FRAMES):
        coarse = rng.integers(0, 256, (max(2, h // 64), max(2, w // 64), 3), dtype=np.uint8)
        rgb = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        if encoding == "jpeg":
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok, "OpenCV failed to encode a jpeg"
            frames.append(buf.tobytes())
        else:
            frames.append((cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if encoding == "bgr8" else rgb).tobytes())
    return frames


def frame_decoder(pipeline: SegPipeline, encoding: str, h: int, w: int) -> Callable[[bytes, int], np.ndarray]:
    """frame bytes, trace slot -> RGB, through the same decode calls seg_node makes."""
    if encoding == "jpeg":
        return lambda data, slot: pipeline.decode_compressed(data, "jpeg", slot)
    return lambda data, slot: pipeline.decode_raw(data, encoding, h, w, w * 3, slot)


def _projector(class_names: tuple[str, ...], cam_hw: tuple[int, int]) -> GroundProjector:
    """A fused costmap (road free, everything else lethal) with made-up but plausible intrinsics."""
    h, w = cam_hw
    f = (w / 2) / math.tan(_HFOV_RAD / 2)
    costs = {"road": 0} if "road" in class_names else {}
    projector = GroundProjector(GridSpec(), CameraPose(height=1.2, pitch=0.1), class_names, costs, default_cost=100)
    projector.set_intrinsics(np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]]), cam_hw)
    return projector
