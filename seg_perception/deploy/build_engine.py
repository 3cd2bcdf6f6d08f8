"""`seg-perception build-engine`: an exported ONNX -> a TensorRT engine (fp32 / fp16 / int8) plus its sidecar.

Build ahead of deployment on the target (Jetson builds take minutes); the engine lands where the node's tensorrt
backend looks for it (`<onnx stem>.<precision>.engine` beside the ONNX, or in --cache-dir), so the node loads it
instead of building. The building itself is backends/engine_build.py's, which the backend also calls.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seg_perception.backends.base import BackendError
from seg_perception.backends.engine_build import HW, INPUT, BuildConfig, build_engine, engine_for, input_shapes
from seg_perception.backends.engine_cache import PRECISIONS, engine_path_for
from seg_perception.sizes import parse_hw


def parse_shapes(text: str) -> tuple[HW, HW, HW]:
    """'256x512/512x1024/1024x2048' (min/opt/max) or a single 'HxW' for all three."""
    parts = [parse_hw(p) for p in text.split("/")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected min/opt/max as HxW/HxW/HxW, got '{text}'")
    (h0, w0), (h1, w1), (h2, w2) = parts
    if not (h0 <= h1 <= h2 and w0 <= w1 <= w2):
        raise argparse.ArgumentTypeError(f"shapes must satisfy min <= opt <= max, got '{text}'")
    return tuple(parts)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", help="ONNX file from `seg-perception export`")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16")
    p.add_argument("--calib-images", metavar="DIR", help="INT8: folder of representative images")
    p.add_argument("--calib-cache", metavar="FILE", help="INT8 calibration cache (read if present, else written)")
    p.add_argument("--workspace", type=int, default=1024, metavar="MB", help="builder workspace limit in MiB")
    p.add_argument("--shapes", type=parse_shapes, metavar="MIN/OPT/MAX",
                   help="HxW/HxW/HxW profile for an ONNX with dynamic axes (default: its export size)")
    p.add_argument("--timing-cache", metavar="FILE", help="timing cache file (default: beside the engine)")
    p.add_argument("--cache-dir", help="where engines live (default: beside the ONNX); the node's cache_dir")
    p.add_argument("--out", help="engine path (default: the cache path the tensorrt backend looks up)")
    p.add_argument("--force", action="store_true", help="rebuild even if a matching engine exists")


def run(args) -> int:
    config = BuildConfig(precision=args.precision, workspace_mb=args.workspace, shapes=args.shapes,
                         calib_images=args.calib_images, calib_cache=args.calib_cache, timing_cache=args.timing_cache)
    try:
        input_shapes(args.onnx, config)  # argument errors first, on any machine
        if args.out or args.force:
            out = Path(args.out or engine_path_for(args.onnx, args.precision, args.cache_dir))
            sidecar = build_engine(args.onnx, out, config)
        else:
            out, sidecar = engine_for(args.onnx, config, rebuild=True, cache_dir=args.cache_dir)
    except BackendError as exc:
        print(f"build-engine: {exc}")
        return 2
    key = sidecar.key
    print(f"{out}: TensorRT {key.trt_version}, {key.gpu_name} (sm {key.compute_capability}), {key.precision}, "
          f"input {key.input_shapes[INPUT]}, built in {sidecar.build.get('seconds', '?')} s")
    return 0
