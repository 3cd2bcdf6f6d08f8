"""Costmap stage with depth against flat ground, and against inference, at 1024x2048.

1. In process, one synthetic 1024x2048 frame with exact depth: the default model's inference at its input size,
   then the costmap stage on its labels, flat ground (`project`) and depth (`project_depth`, the 1024x2048
   depth image), and the labelled point cloud (stride 4 of the 1024x2048 mask); medians, side by side.
2. Through seg_node (a real process on a private DDS domain, bench_node_overhead's harness): the same frames with
   the fused costmap subscribed, once with flat-ground costmaps and once with depth_topic set (the depth image
   published with every frame); the depth, costmap and end-to-end latency from semantic_mask/latency (the depth
   stage is pairing and decoding the depth image, apart from the costmap projection).

Goal: the depth mode's costmap stage a small fraction of inference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_node_overhead import default_model, ros_environment, run_case  # noqa: E402

H, W = 1024, 2048


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def in_process(model: Path, frame, runs: int) -> dict[str, float]:
    from seg_perception.backends import open_backend
    from seg_perception.core.costmap import GridSpec
    from seg_perception.data.synthetic import CAMERA_HEIGHT_M, HOOD_FRACTION, Camera
    from seg_perception.eval.bag_eval import node_projector

    with open_backend(str(model), "onnxruntime") as backend:
        h, w = backend.info.input_size
        rgb = cv2.resize(frame.rgb, (w, h), interpolation=cv2.INTER_AREA)
        backend.warm_up(2)
        inference = median_ms(lambda: backend.infer(rgb), 3)
        labels = backend.infer(rgb).labels.copy()
        class_names = backend.info.class_names
    projector, _ = node_projector({"camera_height": CAMERA_HEIGHT_M, "camera_pitch": 0.0,
                                   "costmap_ignore_bottom": HOOD_FRACTION[1]}, class_names)
    projector.set_intrinsics(Camera.for_image(H, W).pinhole().k(), (H, W))
    mask = cv2.resize(labels, (W, H), interpolation=cv2.INTER_NEAREST)
    confidence = np.full((H, W), 200, np.uint8)
    grid = GridSpec()
    millimetres = np.round(frame.depth * 1000)
    millimetres = np.where(millimetres > 65535, 0, millimetres).astype(np.uint16)  # as 16UC1 carries it
    t0 = time.perf_counter()
    projector.project_depth(labels, (H, W), frame.depth)
    first = (time.perf_counter() - t0) * 1e3
    return {"inference": inference, "flat ground": median_ms(lambda: projector.project(labels, (H, W)), runs),
            "depth (32FC1 metres)": median_ms(lambda: projector.project_depth(labels, (H, W), frame.depth), runs),
            "depth (16UC1 millimetres)": median_ms(lambda: projector.project_depth(labels, (H, W), millimetres),
                                                   runs),
            "depth, first frame (tables)": first,
            "points (stride 4)": median_ms(lambda: projector.points(mask, confidence, (H, W), frame.depth, 4), runs),
            "grid cells": grid.width * grid.height, "labels": labels.size}


def through_node(model: Path, frame, frames: int, warmup: int, threads: int) -> dict[str, dict[str, float]]:
    from seg_perception.data.synthetic import CAMERA_HEIGHT_M, Camera

    cam = Camera.for_image(H, W)
    params = {"fx": cam.focal, "cx": cam.cx, "cy": cam.cy, "camera_height": CAMERA_HEIGHT_M, "camera_pitch": 0.0}
    env = ros_environment()
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench_depth_") as tmp:
        for name, extra, depth in (("flat ground", {}, None),
                                   ("depth", {"depth_topic": "/camera/depth"}, frame.depth)):
            results = run_case(model, env, ("/semantic_costmap",), frames, warmup, threads, Path(tmp),
                               {**params, **extra}, depth)
            # depth: pairing (a wait for a late image) and decoding, traced apart from the costmap projection
            out[name] = {key: statistics.median(r[1].get(f"{key}_ms", 0.0) if key == "depth" else r[1][f"{key}_ms"]
                                                for r in results)
                         for key in ("depth", "costmap", "inference", "end_to_end")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ONNX model (default: embedded default, else metaseg-t 512x1024)")
    parser.add_argument("--runs", type=int, default=20, help="in-process repetitions per costmap mode")
    parser.add_argument("--frames", type=int, default=10, help="frames through seg_node per mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0 = ONNX Runtime default)")
    parser.add_argument("--no-node", action="store_true", help="skip the seg_node part")
    args = parser.parse_args(argv)
    from seg_perception.data.synthetic import render_drive

    frame = next(render_drive(np.random.default_rng(0), 1, H, W))
    with tempfile.TemporaryDirectory(prefix="bench_depth_model_") as tmp:
        model = Path(args.model) if args.model else default_model(Path(tmp))
        print(f"model: {model}; frame {H}x{W} with depth")
        r = in_process(model, frame, args.runs)
        inference = r["inference"]
        print(f"\n[in process] median ms; labels {r['labels']} px, costmap {r['grid cells']} cells")
        print(f"  {'stage':<30}{'ms':>9}{'/ inference':>13}")
        for key in ("inference", "flat ground", "depth (32FC1 metres)", "depth (16UC1 millimetres)",
                    "depth, first frame (tables)", "points (stride 4)"):
            print(f"  {key:<30}{r[key]:9.2f}{r[key] / inference:13.3f}")
        if not args.no_node:
            node = through_node(model, frame, args.frames, args.warmup, args.threads)
            print(f"\n[seg_node] medians over {args.frames} frames, ms")
            print(f"  {'mode':<14}{'depth':>8}{'costmap':>10}{'inference':>11}{'end to end':>12}"
                  f"{'costmap / inf.':>16}")
            for mode, v in node.items():
                print(f"  {mode:<14}{v['depth']:8.2f}{v['costmap']:10.2f}{v['inference']:11.1f}{v['end_to_end']:12.1f}"
                      f"{v['costmap'] / v['inference']:16.3f}")
            extra = node["depth"]["costmap"] - node["flat ground"]["costmap"]
            print(f"  depth mode's extra costmap latency: {extra:.2f} ms = "
                  f"{extra / node['depth']['inference']:.3f} of inference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
