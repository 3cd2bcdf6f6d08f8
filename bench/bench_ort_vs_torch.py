"""ONNX Runtime CPU against torch eager CPU, per registered model, measured side by side in one run.

For each model: build it (random weights, seed 0), export it at the input size, then time the exported graph in
ONNX Runtime and the same weights in torch eager through the same DeployWrapper (uint8 image in, labels and
confidence out), alternating the two frame by frame (ABBA) so a busy machine slows both alike. Prints the
median latency of each, their ratio, and how many pixels' labels agree.

    python bench/bench_ort_vs_torch.py [--models metaseg-t,scaseg-t] [--input-size 512x1024] [--threads 1]
                                       [--budget-s 30] [--max-iters 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def time_pair(ort, torch_backend, image: np.ndarray, budget_s: float, max_iters: int) -> tuple[list, list, float]:
    """Interleaved timings (ms) of both backends until the budget or max_iters is reached; >= 2 each."""
    ort.warm_up(2)  # ORT plans its memory on the first run and first-touches that block on the second
    torch_backend.warm_up(2)
    t_ort, t_torch = [], []
    start = time.perf_counter()
    order = [(ort, t_ort), (torch_backend, t_torch)]
    while len(t_ort) < max_iters and (len(t_ort) < 2 or time.perf_counter() - start < budget_s):
        for backend, sink in order:
            t0 = time.perf_counter()
            backend.infer(image)
            sink.append((time.perf_counter() - t0) * 1e3)
        order.reverse()
    agree = float((ort.infer(image).labels == torch_backend.infer(image).labels).mean())
    return t_ort, t_torch, agree


def main(argv: list[str] | None = None) -> int:
    import torch

    from seg_perception.backends.deploy_model import model_info_for
    from seg_perception.backends.onnxruntime_backend import OnnxRuntimeBackend
    from seg_perception.backends.torch_backend import TorchBackend
    from seg_perception.deploy.export import export_onnx
    from seg_perception.models.registry import VARIANTS, build_model
    from seg_perception.sizes import parse_hw

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated zoo names (default: every registered model)")
    p.add_argument("--input-size", type=parse_hw, default=(512, 1024))
    p.add_argument("--threads", type=int, default=1, help="threads for each runtime (1: steady on a shared box)")
    p.add_argument("--budget-s", type=float, default=30.0, help="timing budget per model (both backends)")
    p.add_argument("--max-iters", type=int, default=8)
    args = p.parse_args(argv)
    names = [n for n in args.models.split(",") if n] or sorted(VARIANTS)
    torch.set_num_threads(args.threads)
    h, w = args.input_size
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    print(f"input {h}x{w}, {args.threads} threads each, torch {torch.__version__}, random weights; "
          "median ms per frame (uint8 image -> labels + confidence)")
    print(f"{'model':<24}{'torch eager':>13}{'onnxruntime':>13}{'speed-up':>10}{'labels agree':>14}{'frames':>8}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            torch.manual_seed(0)
            model = build_model(name).eval()
            info = model_info_for(name, (h, w))
            path = export_onnx(model, info, Path(tmp) / f"{name}.onnx")
            ort = OnnxRuntimeBackend(str(path), threads=args.threads, device="cpu")
            eager = TorchBackend(model, info, threads=args.threads)
            t_ort, t_torch, agree = time_pair(ort, eager, image, args.budget_s, args.max_iters)
            m_ort, m_torch = statistics.median(t_ort), statistics.median(t_torch)
            rows.append((name, m_torch / m_ort))
            print(f"{name:<24}{m_torch:>13.1f}{m_ort:>13.1f}{m_torch / m_ort:>9.2f}x{agree:>14.4%}{len(t_ort):>8}",
                  flush=True)
            ort.close()
            eager.close()
            path.unlink()
    ratios = [r for _, r in rows]
    print(f"speed-up of onnxruntime over torch eager: median {statistics.median(ratios):.2f}x, "
          f"min {min(ratios):.2f}x ({min(rows, key=lambda r: r[1])[0]}), max {max(ratios):.2f}x; "
          f"goal >= 2x met by {sum(r >= 2 for r in ratios)}/{len(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
