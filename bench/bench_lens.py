"""Costmaps through a lens: what lens distortion costs when tables are built, and that a frame costs the same.

No model: a synthetic 480x640 frame with exact depth, labels at 256x512, the default 200x200 grid, as
bench_depth_costmap's per-frame costs. Three cameras with the same K: pinhole (no D), plumb_bob (k1 -0.3, k2 0.1)
and equidistant (fisheye). Cases interleaved frame by frame, medians:
- table build: the flat-ground table, and the depth geometry with it, rebuilt every frame (intrinsics that alternate
  in their 12th digit force a fresh one), fixed pose;
- a moving pose: the tables re-aimed every frame (a distorted flat-ground table projects its cells through OpenCV
  again; depth rays are undistorted once, at build);
- per frame: fixed pose, the tables kept: flat ground and depth.

Goal: per-frame cost equal with and without distortion; the build a one-off cost (per CameraInfo).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_depth_costmap import interleaved_medians  # noqa: E402

LENSES = {"pinhole": ("", ()), "plumb_bob": ("plumb_bob", (-0.3, 0.1, 0.0, 0.0, 0.0)),
          "equidistant": ("equidistant", (0.05, -0.02, 0.004, 0.0))}


def lens_costs(runs: int) -> dict[str, float]:
    from seg_perception.core.costmap import CameraPose
    from seg_perception.data.synthetic import CAMERA_HEIGHT_M, Camera, render_drive
    from seg_perception.eval.bag_eval import node_projector
    from seg_perception.labels import CITYSCAPES_CLASSES

    cam_hw, labels_hw = (480, 640), (256, 512)
    frame = next(render_drive(np.random.default_rng(1), 1, *cam_hw))
    labels = cv2.resize(frame.train_ids, labels_hw[::-1], interpolation=cv2.INTER_NEAREST)
    k = Camera.for_image(*cam_hw).pinhole().k()
    k_other = k * np.array([[1 + 1e-12], [1], [1]])  # the same camera to 12 digits, another cache key
    fixed = CameraPose(height=CAMERA_HEIGHT_M, pitch=0.05)

    def moves(i):  # driving and turning in odom, the camera rocking on the suspension
        return CameraPose(x=0.05 * i, y=0.01 * i, height=CAMERA_HEIGHT_M + 0.01 * math.sin(i),
                          roll=0.01 * math.sin(i / 3), pitch=0.05 + 0.01 * math.cos(i / 5), yaw=0.003 * i)

    def case(lens: str, kind: str, mode: str):
        model, d = LENSES[lens]
        proj, _ = node_projector({"camera_height": CAMERA_HEIGHT_M, "camera_pitch": 0.05}, CITYSCAPES_CLASSES)
        proj.set_intrinsics(k, cam_hw, model, d)

        def run(i):
            if mode == "moves":
                proj.set_pose(moves(i))
            elif mode == "build":
                proj.set_intrinsics(k_other if i % 2 else k, cam_hw, model, d)
            if kind == "flat":
                proj.project(labels, cam_hw)
            else:
                proj.project_depth(labels, cam_hw, frame.depth)
        proj.set_pose(fixed)
        return run

    cases = {f"{kind} {mode} {lens}": case(lens, kind, mode)
             for kind in ("flat", "depth") for mode in ("frame", "moves", "build") for lens in LENSES}
    return interleaved_medians(cases, runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-per-mode", type=int, default=30, help="frames per case (interleaved)")
    args = parser.parse_args(argv)
    ms = lens_costs(args.frames_per_mode)
    print(f"median ms over {args.frames_per_mode} frames per case, cases interleaved; ratios to pinhole in ()")
    print(f"{'case':<18}" + "".join(f"{lens:>22}" for lens in LENSES))
    for kind in ("flat", "depth"):
        for mode in ("frame", "moves", "build"):
            base = ms[f"{kind} {mode} pinhole"]
            cells = [f"{ms[f'{kind} {mode} {lens}']:.2f} ({ms[f'{kind} {mode} {lens}'] / base:.2f}x)"
                     for lens in LENSES]
            print(f"{kind + ' ' + mode:<18}" + "".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
