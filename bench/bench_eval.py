"""Cityscapes evaluation of prediction PNGs: ours against cityscapesscripts' evalPixelLevelSemanticLabeling on the
same files in one run, with and without instance-level iIoU, on one core and with worker processes.
Workers are timed on the file list repeated (`--worker-repeat`), as on a real validation set: a pool's start-up
(one interpreter importing numpy and OpenCV, ~0.4 s) is paid once per evaluation, not per image.

Files are 1024x2048 like Cityscapes: blocky labelIds, 16-bit instanceIds (~500 instances per image) and
label-id predictions with about 10 % of pixels wrong, as a model gets them wrong (shifted boundaries, blobs);
`--noise` scatters the errors as salt noise instead, the worst case for PNG decoding. The numbers of both
evaluators are checked to agree (1e-6).

    python bench/bench_eval.py [--pairs 10] [--workers 2] [--worker-repeat 50]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from seg_perception.eval.cityscapes import CityscapesJob, find_samples, match_predictions
from seg_perception.eval.image_eval import evaluate, read_ids
from seg_perception.eval.metrics import CITYSCAPES_CLASSES, scores

H, W = 1024, 2048


def write_pairs(root: Path, n: int, seed: int = 0, noise: bool = False) -> None:
    rng = np.random.default_rng(seed)
    city = root / "gtFine" / "val" / "benchcity"
    city.mkdir(parents=True)
    results = root / "results"
    results.mkdir()
    ids = np.arange(34)
    for i in range(n):
        gt = cv2.resize(rng.choice(ids, size=(H // 32, W // 32)).astype(np.uint8), (W, H),
                        interpolation=cv2.INTER_NEAREST)
        k = cv2.resize(rng.integers(0, 40, size=(H // 32, W // 32)).astype(np.uint16), (W, H),
                       interpolation=cv2.INTER_NEAREST)
        inst = np.where(gt >= 24, gt.astype(np.uint16) * 1000 + k, gt.astype(np.uint16))
        if noise:  # worst case for PNG decoding: salt noise compresses badly
            pred = gt.copy()
            changed = rng.random((H, W)) < 0.1
            pred[changed] = rng.choice(ids, size=int(changed.sum()))
        else:  # like a model's output: boundaries off by a few pixels, blobs of wrong classes (~10 % of pixels)
            pred = np.roll(gt, int(rng.integers(-4, 5)), axis=1)
            for _ in range(25):
                y, x, h, w = rng.integers(0, H), rng.integers(0, W), rng.integers(16, 160), rng.integers(16, 240)
                cv2.ellipse(pred, (int(x), int(y)), (int(w) // 2, int(h) // 2), 0, 0, 360, int(rng.choice(ids)), -1)
        key = f"benchcity_{i:06d}_000019"
        cv2.imwrite(str(city / f"{key}_gtFine_labelIds.png"), gt)
        cv2.imwrite(str(city / f"{key}_gtFine_instanceIds.png"), inst)
        cv2.imwrite(str(results / f"{key}_leftImg8bit.png"), pred)


def official(preds, gts, instances: bool) -> tuple[float, dict]:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    ev.args.quiet, ev.args.JSONOutput, ev.args.evalInstLevelScore = True, False, instances
    t0 = time.perf_counter()
    result = ev.evaluateImgLists([str(p) for p in preds], [str(g) for g in gts], ev.args)
    return time.perf_counter() - t0, result


def ours(job: CityscapesJob, workers: int, repeats: int):
    times, stats = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        stats, _ = evaluate(job, workers)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), scores(stats)


def check_equal(ours_scores, ref: dict, instances: bool) -> float:
    """Largest difference over every class / category score; raises when above 1e-6."""
    pairs = [(ours_scores.per_class_iou[c], ref["classScores"][c]) for c in CITYSCAPES_CLASSES]
    pairs += [(v, ref["categoryScores"][c]) for c, v in ours_scores.category_iou.items()]
    pairs += [(ours_scores.miou, ref["averageScoreClasses"])]
    if instances:
        pairs += [(v, ref["classInstScores"][c]) for c, v in ours_scores.per_class_iiou.items()]
        pairs += [(v, ref["categoryInstScores"][c]) for c, v in ours_scores.category_iiou.items()]
        pairs += [(ours_scores.iiou, ref["averageScoreInstClasses"])]
    worst = 0.0
    for a, b in pairs:
        if (a is None) != math.isnan(b):
            raise SystemExit(f"disagreement: ours {a}, official {b}")
        if a is not None:
            worst = max(worst, abs(a - b))
    if worst > 1e-6:
        raise SystemExit(f"scores differ by {worst:.2e} > 1e-6")
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10, help="1024x2048 image pairs")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the parallel run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours (median); the official runs once")
    parser.add_argument("--worker-repeat", type=int, default=50,
                        help="the worker comparison evaluates the pairs this many times over (default: as many "
                             "pairs as Cityscapes val, 500)")
    parser.add_argument("--noise", action="store_true", help="salt-noise predictions (slow to decode)")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # "one core": OpenCV's PNG decoding and LUTs stay on this thread

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_pairs(root, args.pairs, noise=args.noise)
        print(f"{args.pairs} pairs of {H}x{W} written in {time.perf_counter() - t0:.1f} s")
        samples = find_samples(root, "val", need_images=False)
        preds = match_predictions(root / "results", samples)
        gts = [s.gt for s in samples]

        t0 = time.perf_counter()
        for s, p in zip(samples, preds):
            read_ids(s.gt), read_ids(p), read_ids(s.instances)
        decode_ms = (time.perf_counter() - t0) / args.pairs * 1e3

        rows = []
        for instances in (False, True):
            label = "with iIoU" if instances else "IoU only"
            job = CityscapesJob(samples, preds, "labelIds", instances=instances)
            t_off, ref = official(preds, gts, instances)
            t_one, s_one = ours(job, 1, args.repeats)
            big = CityscapesJob(samples * args.worker_repeat, preds * args.worker_repeat, "labelIds",
                                instances=instances)
            t_big, _ = ours(big, 1, 1)
            t_par, s_par = ours(big, args.workers, 1)
            check_equal(s_par, ref, instances)  # the same pairs k times over: the same scores
            worst = check_equal(s_one, ref, instances)
            rows.append((label, t_off, t_one, t_big / args.worker_repeat, t_par / args.worker_repeat, worst,
                         ref["averageScoreClasses"]))

    per = 1e3 / args.pairs
    print(f"PNG decoding alone (gt + prediction + instanceIds, OpenCV): {decode_ms:.1f} ms per pair")
    n_big = args.pairs * args.worker_repeat
    print(f"{'':<10}{'official':>12}{'ours':>10}{'ratio':>8}{'max |diff|':>12}   "
          f"{n_big} pairs: {'1 proc':>9}{f'{args.workers} proc':>10}{'speed-up':>10}")
    for label, t_off, t_one, t_big, t_par, worst, miou in rows:
        print(f"{label:<10}{t_off * per:>9.1f} ms{t_one * per:>7.1f} ms{t_off / t_one:>7.1f}x{worst:>12.1e}   "
              f"{'':>{len(str(n_big)) + 8}}{t_big * per:>6.1f} ms{t_par * per:>7.1f} ms{t_big / t_par:>9.2f}x")
    print(f"(ms per 1024x2048 pair; mIoU {100 * rows[0][6]:.2f} by both; ours is the median of {args.repeats} runs; "
          f"os.cpu_count() {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
