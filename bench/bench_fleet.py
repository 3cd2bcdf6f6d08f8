"""Fleet evaluation (`eval bags`): frames per second in one process, and on a local Ray with 1 and with 2 workers,
on the same bags in one run, with the numbers checked equal (confusion matrices identical).

Each Ray run starts its own local Ray (timed apart: a cluster is started once, not per evaluation); the timed part
includes what every evaluation pays: workers fetching the model from the object store and loading it, reading
the bags, decoding, inference and scoring. Bags are synthetic drives (`synth --bag`) written once to a temporary
folder; the model is the embedded default (MetaSeg-T at 512x1024) unless --model says otherwise.

    python bench/bench_fleet.py [--bags 4] [--frames 6] [--size 256x512] [--model PATH.onnx]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from seg_perception.bags import write_drive_bag
from seg_perception.data.synthetic import render_drive
from seg_perception.eval.bag_eval import BagEvalConfig
from seg_perception.eval.fleet import evaluate_fleet, find_bags, plan_fleet
from seg_perception.sizes import parse_hw


def fleet_run(config: BagEvalConfig, root: Path, workers: int) -> tuple[float, float, np.ndarray, int]:
    """(Ray start-up s, evaluation s, summed confusion matrix, frames); workers 0: in this process, no Ray."""
    plans = plan_fleet(find_bags([root]), config)
    startup = 0.0
    if workers:
        import ray

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        result = evaluate_fleet(config, plans, workers)
        seconds = time.perf_counter() - t0
    finally:
        if workers:
            ray.shutdown()
    failed = [b.error for b in result.bags if b.error]
    if failed:
        raise SystemExit(f"bags failed: {failed}")
    matrix = sum(b.stats.matrix for b in result.bags)
    return startup, seconds, matrix, sum(b.frames for b in result.bags)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=4)
    parser.add_argument("--frames", type=int, default=6, help="frames per bag")
    parser.add_argument("--size", type=parse_hw, default=(256, 512), help="camera HxW")
    parser.add_argument("--model", default="", help="ONNX file (default: the embedded model)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(args.bags):
            write_drive_bag(root / f"bag{i}", render_drive(rng, args.frames, *args.size), storage="mcap")
        # One inference thread per task: a worker is one CPU, as Ray schedules it.
        config = BagEvalConfig(Path(), "/camera/image_raw", "/camera/semantic_gt", model=args.model, threads=1)
        rows = []
        for workers in (0, 1, 2):
            startup, seconds, matrix, frames = fleet_run(config, root, workers)
            rows.append((workers, startup, seconds, matrix, frames))
    reference = rows[0][3]
    if any(not np.array_equal(m, reference) for _, _, _, m, _ in rows):
        raise SystemExit("confusion matrices differ between runs")
    frames = rows[0][4]
    print(f"{args.bags} bags x {args.frames} frames at {args.size[0]}x{args.size[1]}, model "
          f"{args.model or 'embedded default'}, 1 inference thread per task; confusion matrices identical")
    print(f"{'run':<22}{'Ray start s':>12}{'eval s':>9}{'frames/s':>10}{'vs 1 worker':>13}")
    one_worker = rows[1][2]
    for workers, startup, seconds, _, _ in rows:
        name = "one process, no Ray" if workers == 0 else f"Ray, {workers} worker{'s' if workers > 1 else ''}"
        print(f"{name:<22}{startup:>12.1f}{seconds:>9.1f}{frames / seconds:>10.2f}{one_worker / seconds:>12.2f}x")
    print(f"(os.cpu_count() {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
