"""Costmap stage with depth against flat ground, and against inference, at 1024x2048; what a moving camera and
the labelled point cloud cost per frame.

1. Per-frame costs, no model (a synthetic 480x640 frame with exact depth, labels at 256x512 as a model would give
   them, the default 200x200 grid), modes interleaved frame by frame, medians:
   - the costmaps with a fixed camera pose, a pose that only turns every frame (a pan-tilt head), a pose that
     moves and turns every frame (TF into odom), and rebuilt from scratch every frame (the same moving poses with
     intrinsics that alternate in their 12th digit, which forces a fresh table and geometry: what every new pose
     cost before the geometry was re-aimed in place); flat ground and depth;
   - a points-only frame (semantic_points the only subscriber, stride 4): before, the mask and confidence resized
     to the camera and the cloud sampled from them; now, the cloud sampled from the model-resolution arrays.
2. In process, one synthetic 1024x2048 frame with exact depth: the default model's inference at its input size,
   then the costmap stage on its labels, flat ground (`project`) and depth (`project_depth`, the 1024x2048
   depth image), and the labelled point cloud (stride 4, before and now as above); medians, side by side.
3. Through seg_node (a real process on a private DDS domain, bench_node_overhead's harness): the same frames with
   the fused costmap subscribed, once with flat-ground costmaps and once with depth_topic set (the depth image
   published with every frame); the depth, costmap and end-to-end latency from semantic_mask/latency (the depth
   stage is pairing and decoding the depth image, apart from the costmap projection).

Goals: the depth mode's costmap stage a small fraction of inference; a moving pose far cheaper than a rebuild.
"""

from __future__ import annotations

import argparse
import math
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


def interleaved_medians(cases: dict, runs: int) -> dict[str, float]:
    """Median ms of each case's callable (given the frame number), the cases taking turns frame by frame so that
    a load change on the shared machine falls on all of them."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(runs + 1):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn(i)
            if i:  # frame 0 builds what every case keeps
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def points_cases(projector_for, labels: np.ndarray, confidence: np.ndarray, cam_hw: tuple[int, int], depth,
                 stride: int) -> dict:
    """A points-only frame, before (resize to the camera, then sample) and now (sample the model's arrays), each
    on its own projector (projector_for() makes one), so that each keeps its cloud's samples."""
    size = (cam_hw[1], cam_hw[0])
    mask, mask_confidence = np.empty(cam_hw, np.uint8), np.empty(cam_hw, np.uint8)
    before, now = projector_for(), projector_for()

    def resized(_):
        cv2.resize(labels, size, dst=mask, interpolation=cv2.INTER_NEAREST)
        cv2.resize(confidence, size, dst=mask_confidence, interpolation=cv2.INTER_NEAREST)
        before.points(mask, mask_confidence, cam_hw, depth, stride)

    return {"points before (resize, sample)": resized,
            "points now (sample the model's)": lambda _: now.points(labels, confidence, cam_hw, depth, stride,
                                                                    cloud_hw=cam_hw)}


def per_frame_costs(runs: int) -> dict[str, float]:
    from seg_perception.core.costmap import CameraPose
    from seg_perception.data.synthetic import CAMERA_HEIGHT_M, Camera, render_drive
    from seg_perception.eval.bag_eval import node_projector
    from seg_perception.labels import CITYSCAPES_CLASSES

    cam_hw, labels_hw = (480, 640), (256, 512)
    frame = next(render_drive(np.random.default_rng(1), 1, *cam_hw))
    labels = cv2.resize(frame.train_ids, labels_hw[::-1], interpolation=cv2.INTER_NEAREST)
    confidence = np.random.default_rng(2).integers(128, 256, labels_hw, dtype=np.uint8)
    k = Camera.for_image(*cam_hw).pinhole().k()
    k_other = k * np.array([[1 + 1e-12], [1], [1]])  # the same camera to 12 digits, another cache key

    def projector():
        proj, _ = node_projector({"camera_height": CAMERA_HEIGHT_M, "camera_pitch": 0.0}, CITYSCAPES_CLASSES)
        proj.set_intrinsics(k, cam_hw)
        return proj

    def fixed(i):
        return CameraPose(height=CAMERA_HEIGHT_M, pitch=0.05)

    def turns(i):  # a pan-tilt head sweeping
        return CameraPose(height=CAMERA_HEIGHT_M, pitch=0.05 + 0.02 * math.sin(i / 7), yaw=0.4 * math.sin(i / 11))

    def moves(i):  # driving and turning in odom, the camera rocking on the suspension
        return CameraPose(x=0.05 * i, y=0.01 * i, height=CAMERA_HEIGHT_M + 0.01 * math.sin(i),
                          roll=0.01 * math.sin(i / 3), pitch=0.05 + 0.01 * math.cos(i / 5), yaw=0.003 * i)

    def case(kind: str, poses, rebuild: bool = False):
        proj = projector()

        def run(i):
            proj.set_pose(poses(i))
            if rebuild:
                proj.set_intrinsics(k_other if i % 2 else k, cam_hw)
            if kind == "flat":
                proj.project(labels, cam_hw)
            else:
                proj.project_depth(labels, cam_hw, frame.depth)
        return run

    cases = {f"{kind} {mode}": case(kind, poses, mode == "rebuilt")
             for kind in ("flat", "depth")
             for mode, poses in (("fixed", fixed), ("turns", turns), ("moves", moves), ("rebuilt", moves))}
    cases.update(points_cases(projector, labels, confidence, cam_hw, frame.depth, 4))
    return interleaved_medians(cases, runs)


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

    def new_projector():
        proj, _ = node_projector({"camera_height": CAMERA_HEIGHT_M, "camera_pitch": 0.0,
                                  "costmap_ignore_bottom": HOOD_FRACTION[1]}, class_names)
        proj.set_intrinsics(Camera.for_image(H, W).pinhole().k(), (H, W))
        return proj

    projector = new_projector()
    confidence = np.full(labels.shape, 200, np.uint8)
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
            **interleaved_medians(points_cases(new_projector, labels, confidence, (H, W), frame.depth, 4), runs),
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
    parser.add_argument("--costs-only", action="store_true",
                        help="only the per-frame costs of a moving camera and of the point cloud (no model)")
    parser.add_argument("--frames-per-mode", type=int, default=60,
                        help="frames per mode for the per-frame costs (interleaved)")
    args = parser.parse_args(argv)
    from seg_perception.data.synthetic import render_drive

    c = per_frame_costs(args.frames_per_mode)
    print(f"[per-frame costs] 480x640 camera and 32FC1 depth, 256x512 labels, 200x200 grid; median ms over "
          f"{args.frames_per_mode} frames, modes interleaved")
    print(f"  {'costmap':<12}{'fixed pose':>12}{'turns':>9}{'moves':>9}{'rebuilt':>10}{'rebuilt / moves':>17}"
          f"{'moves - fixed':>15}")
    for kind in ("flat", "depth"):
        v = [c[f"{kind} {mode}"] for mode in ("fixed", "turns", "moves", "rebuilt")]
        print(f"  {kind:<12}{v[0]:12.2f}{v[1]:9.2f}{v[2]:9.2f}{v[3]:10.2f}{v[3] / v[2]:16.1f}x{v[2] - v[0]:15.2f}")
    before, now = c["points before (resize, sample)"], c["points now (sample the model's)"]
    print(f"  points-only frame, stride 4: before {before:.2f} ms (resize mask and confidence, sample), now "
          f"{now:.2f} ms (sample the model's arrays): {before / now:.1f}x")
    if args.costs_only:
        return 0
    frame = next(render_drive(np.random.default_rng(0), 1, H, W))
    with tempfile.TemporaryDirectory(prefix="bench_depth_model_") as tmp:
        model = Path(args.model) if args.model else default_model(Path(tmp))
        print(f"model: {model}; frame {H}x{W} with depth")
        r = in_process(model, frame, args.runs)
        inference = r["inference"]
        print(f"\n[in process] median ms; labels {r['labels']} px, costmap {r['grid cells']} cells")
        print(f"  {'stage':<32}{'ms':>9}{'/ inference':>13}")
        for key in ("inference", "flat ground", "depth (32FC1 metres)", "depth (16UC1 millimetres)",
                    "depth, first frame (tables)", "points before (resize, sample)",
                    "points now (sample the model's)"):
            print(f"  {key:<32}{r[key]:9.2f}{r[key] / inference:13.3f}")
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
