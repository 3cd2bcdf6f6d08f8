"""One-command device check: the torch backend per zoo family on a GPU, against ONNX Runtime on the CPU.

    python bench/gpu_check.py                                        # the measurement (--device cuda)
    python bench/gpu_check.py --device cpu --size 64x128 --out DIR   # the same logic on a CPU, tiny (CI)

It runs from the working tree alone: it puts the repository on sys.path and needs only what a GPU machine has
(torch, numpy, onnx, onnxruntime, opencv, matplotlib), nothing installed from this repo. For the default
variant of each family (its first registered one) at each size:
  - fp32, fp16 (autocast) and fp16 replayed as a CUDA graph: median and p99 of the device time (CUDA events)
    and of the wall time of `infer` (upload, forward, download) after warm-up, and the peak GPU memory;
  - label agreement on the same frames: fp16 vs fp32, and both vs the exported graph in ONNX Runtime (CPU);
  - the FLOP floor: the forward's FLOPs (torch's FlopCounterMode, 2 per multiply-add) / the fp16 rate, which
    is measured with a large fp16 GEMM unless --peak-tflops gives the data sheet's.
Then seg_node's pipeline (decode, resize, infer, mask + confidence + colour at camera size, costmap) on the
default model's architecture and input size, fp16 with a CUDA graph where it captures, 2x-sized camera frames.
Weights are random (seed 0) unless a spec names a checkpoint (metaseg-t:ckpt.pth): latency does not depend on
them, agreement does a little. ONNX Runtime comparisons run last and stop at --budget-s, so the GPU figures
always land. DIR gets gpu_check.json (written after each phase) and gpu_check.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the working tree, ahead of any installed copy

import numpy as np  # noqa: E402

CONFIGS = {"fp32": ("fp32", False), "fp16": ("fp16", False), "fp16_graph": ("fp16", True)}
GEMM_N = {"cuda": 8192, "cpu": 512}  # square GEMM side for the measured peak rate


def default_variants() -> list[str]:
    """The first registered variant of each family: its smallest, e.g. metaseg-t, segman-t, mask2former-r50."""
    from seg_perception.models.registry import VARIANTS

    first: dict[str, str] = {}
    for name, variant in VARIANTS.items():
        first.setdefault(variant.family, name)
    return list(first.values())


def stats(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": float(np.median(values)), "p99": float(np.percentile(values, 99)), "n": len(values)}


def model_frames(h: int, w: int) -> list[np.ndarray]:
    """The same smooth colour fields `seg-perception bench` uses, as model-size RGB arrays."""
    from seg_perception.core.bench import camera_frames

    return [np.frombuffer(data, np.uint8).reshape(h, w, 3) for data in camera_frames(h, w, "rgb8")]


def agreement(a: list[np.ndarray] | None, b: list[np.ndarray] | None) -> float | None:
    """Fraction of pixels with equal labels over the frames both have."""
    if not a or not b:
        return None
    return float(np.mean([np.mean(x == y) for x, y in zip(a, b)]))


def measure_peak_tflops(torch, device) -> dict:
    """Dense GEMM rate: fp16 on a GPU (tensor cores), fp32 on a CPU; the best of a few timed runs."""
    n = GEMM_N[device.type]
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(6):
        sync(torch, device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(torch, device)
        if i:  # the first run picks kernels
            best = min(best, time.perf_counter() - t0)
    return {"tflops": 2 * n ** 3 / best / 1e12, "dtype": str(dtype).removeprefix("torch."), "gemm": n}


def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(torch, module, size: tuple[int, int], device) -> float:
    """FLOPs of one forward of the deployed module (matmul, conv and attention; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.zeros((1, *size, 3), dtype=torch.uint8, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(image)
    return float(counter.get_total_flops())


def run_config(torch, cpu_model, info, device, precision: str, graphs: bool, frames: list[np.ndarray],
               args) -> tuple[dict, list[np.ndarray] | None, object]:
    """One backend configuration: timings, peak memory and the labels of the agreement frames."""
    from seg_perception.backends import BackendError
    from seg_perception.backends.torch_backend import TorchBackend

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        backend = TorchBackend(copy.deepcopy(cpu_model), info, str(device), precision, graphs, args.threads)
    except ValueError as exc:  # an option this device cannot take (fp16, graphs on a CPU): a skip, not a failure
        return {"skipped": str(exc)}, None, None
    except BackendError as exc:
        return {"error": str(exc)}, None, None
    try:
        backend.warm_up(args.warmup)
        device_ms, wall_ms = [], []
        for i in range(args.frames):
            t0 = time.perf_counter()
            backend.infer(frames[i % len(frames)])
            wall_ms.append((time.perf_counter() - t0) * 1e3)
            device_ms.append(backend.device_time_ms())
        labels = [backend.infer(f).labels.copy() for f in frames[:args.agree_frames]]
        row = {"backend": backend.describe(), "frames": args.frames, "device_ms": stats(device_ms),
               "wall_ms": stats(wall_ms),
               "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else None}
        return row, labels, backend
    except RuntimeError as exc:  # out of memory, or a kernel this precision lacks: the next one still runs
        backend.close()
        return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"}, None, None


def check_model(torch, spec: str, size: tuple[int, int], device, args, peak: dict) -> dict:
    """Every configuration of one model at one size; leaves the CPU model and labels for the ONNX phase."""
    from seg_perception.backends.deploy_model import build_for_classes, model_info_for
    from seg_perception.backends.torch_backend import parse_spec
    from seg_perception.models.registry import get_variant

    name, checkpoint = parse_spec(spec)
    torch.manual_seed(args.seed)
    model, classes, _ = build_for_classes(name, checkpoint=checkpoint)  # as the torch backend and export build it
    model.eval()
    info = model_info_for(name, size, classes, with_logits=True)
    frames = model_frames(*size)
    row = {"model": name, "family": get_variant(name).family, "checkpoint": checkpoint, "size": list(size),
           "runs": {}, "agreement": {}}
    labels = {}
    for config, (precision, graphs) in CONFIGS.items():
        run, labels[config], backend = run_config(torch, model, info, device, precision, graphs, frames, args)
        row["runs"][config] = run
        if backend is not None and config == "fp32":
            row["gflops"] = count_flops(torch, backend.module, size, device) / 1e9
        if backend is not None:
            backend.close()
        print(f"  {name} {size[0]}x{size[1]} {config}: {summary_line(run)}", flush=True)
    if "gflops" in row:
        row["gmac"] = row["gflops"] / 2  # the zoo table's and the papers' "GFLOPs"
        row["floor_ms"] = row["gflops"] / peak["used_tflops"]  # 1 TFLOP/s = 1 GFLOP per ms
        for run in row["runs"].values():
            timing = run.get("device_ms") or run.get("wall_ms")
            if timing:
                run["x_floor"] = timing["median"] / row["floor_ms"]
    row["agreement"] = {"fp16_vs_fp32": agreement(labels["fp16"], labels["fp32"]),
                        "fp16_graph_vs_fp16": agreement(labels["fp16_graph"], labels["fp16"])}
    row["_pending"] = (model, info, frames[:args.agree_frames], labels)  # for the ONNX Runtime phase
    return row


def summary_line(run: dict) -> str:
    if "skipped" in run or "error" in run:
        return next(f"{k}: {v}" for k, v in run.items() if k in ("skipped", "error"))
    dev = run["device_ms"]
    return (f"wall median {run['wall_ms']['median']:.2f} ms" +
            (f", device median {dev['median']:.2f} ms p99 {dev['p99']:.2f} ms" if dev else "") +
            (f", peak {run['peak_memory_mib']:.0f} MiB" if run["peak_memory_mib"] is not None else ""))


def onnxruntime_agreement(row: dict, args, tmp: Path) -> None:
    """Export the CPU model, run the agreement frames in ONNX Runtime on the CPU, compare the labels."""
    from dataclasses import replace

    from seg_perception.backends.onnxruntime_backend import OnnxRuntimeBackend
    from seg_perception.deploy.export import export_onnx

    model, info, frames, labels = row.pop("_pending")
    t0 = time.perf_counter()
    path = export_onnx(model, replace(info, has_logits=False), tmp / f"{info.name}.onnx")
    t1 = time.perf_counter()
    ort = OnnxRuntimeBackend(str(path), threads=args.threads or os.cpu_count() or 1, device="cpu")
    ort_labels = [ort.infer(f).labels.copy() for f in frames]
    ort.close()
    path.unlink()
    row["onnxruntime_cpu"] = {"export_s": t1 - t0, "infer_s": time.perf_counter() - t1, "frames": len(frames)}
    for config in CONFIGS:
        row["agreement"][f"{config}_vs_onnxruntime_cpu"] = agreement(labels[config], ort_labels)


def check_pipeline(torch, device, args) -> dict:
    """seg_node's pipeline end to end on the default model's architecture, the fastest configuration."""
    from seg_perception.backends import DEFAULT_MODEL, BackendError
    from seg_perception.backends.deploy_model import build_for_classes
    from seg_perception.backends.onnxruntime_backend import read_model_info
    from seg_perception.backends.torch_backend import TorchBackend
    from seg_perception.core.bench import measure

    info = read_model_info(DEFAULT_MODEL)
    if args.pipeline_size:
        info.input_size = args.pipeline_size
    h, w = info.input_size
    camera = (2 * h, 2 * w)
    cuda = device.type == "cuda"
    torch.manual_seed(args.seed)
    model = build_for_classes(info.name)[0].eval()
    precision = "fp16" if cuda else "fp32"
    try:
        backend = TorchBackend(model, info, str(device), precision, cuda, args.threads)
        note = ""
    except BackendError as exc:  # capture failed: the same run without a graph
        backend, note = TorchBackend(model, info, str(device), precision, False, args.threads), str(exc)
    with backend:
        tracer, wall = measure(backend, camera, args.pipeline_frames, args.warmup, costmaps=True)
        stages = {name: {"mean": s.mean_ms, "p50": s.p50_ms, "p99": s.p99_ms, "max": s.max_ms, "n": s.count}
                  for name, s in tracer.summary().items()}
        return {"model": info.name, "input_size": [h, w], "camera": list(camera), "backend": backend.describe(),
                "frames": args.pipeline_frames, "fps": args.pipeline_frames / wall, "stages_ms": stages,
                "note": note or "no DDS: decode -> publish-ready outputs, as seg_node's worker runs them"}


def environment(torch, device, args) -> dict:
    import onnxruntime

    import seg_perception

    env = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "onnxruntime": onnxruntime.__version__,
           "onnxruntime_providers": onnxruntime.get_available_providers(), "cpu_count": os.cpu_count(),
           "seg_perception": str(Path(seg_perception.__file__).parent), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   gpu_memory_gib=props.total_memory / 2 ** 30, cudnn=torch.backends.cudnn.version())
    else:
        env["cpu"] = f"CPU ({platform.processor() or platform.machine()})"
    return env


def write(result: dict, out: Path) -> None:
    path = out / "gpu_check.json"
    tmp = path.with_suffix(".json.tmp")
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in result["models"]]
    tmp.write_text(json.dumps({**result, "models": rows}, indent=1))
    tmp.replace(path)


def plot(result: dict, path: Path) -> None:
    """Left: median latency per model, size and configuration (device time where measured, else wall), with
    the FLOP floor; right: the pipeline's stages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 1.2 + 0.9 * max(1, len(result["models"]))),
                                 gridspec_kw={"width_ratios": [3, 2]})
    labels, colors, legend = [], {"fp32": "tab:blue", "fp16": "tab:orange", "fp16_graph": "tab:green"}, set()

    def once(name: str) -> str | None:
        """Each series is named in the legend once."""
        first = name not in legend
        legend.add(name)
        return name if first else None

    for i, row in enumerate(result["models"]):
        labels.append(f"{row['model']}\n{row['size'][0]}x{row['size'][1]}")
        for j, (config, color) in enumerate(colors.items()):
            run = row["runs"].get(config, {})
            timing = run.get("device_ms") or run.get("wall_ms")
            if timing:
                ax.barh(i + (j - 1) * 0.27, timing["median"], height=0.25, color=color, label=once(config))
        if row.get("floor_ms"):
            ax.plot([row["floor_ms"]] * 2, [i - 0.42, i + 0.42], color="black", lw=2, label=once("FLOP floor"))
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    where = result["environment"].get("gpu") or result["environment"].get("cpu", "CPU")
    ax.set_xlabel("median ms per frame (device time on CUDA, else wall)")
    ax.set_title(f"torch backend on {where}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    pipeline = result.get("pipeline") or {}
    stages = {k: v["p50"] for k, v in pipeline.get("stages_ms", {}).items()}
    if stages:
        bars = bx.barh(range(len(stages)), list(stages.values()), color="tab:gray")
        bx.bar_label(bars, [f"{v:.3g}" for v in stages.values()], fontsize=7, padding=2)
        bx.set_yticks(range(len(stages)), list(stages), fontsize=8)
        bx.invert_yaxis()
        bx.set_xscale("log")
        bx.set_xlabel("p50 ms")
        bx.set_title(f"seg_node pipeline: {pipeline['model']} {pipeline['input_size'][0]}x"
                     f"{pipeline['input_size'][1]}, camera {pipeline['camera'][0]}x{pipeline['camera'][1]}\n"
                     f"{pipeline['backend']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    from seg_perception.sizes import parse_hw

    return [parse_hw(s) for s in text.split(",") if s]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (the CI run)")
    p.add_argument("--size", dest="sizes", type=parse_sizes, default=[(512, 1024), (1024, 2048)],
                   help="model input sizes HxW, comma-separated (default 512x1024,1024x2048)")
    p.add_argument("--models", default="", help="zoo names[:checkpoint], comma-separated (default: the first "
                                                "variant of each family)")
    p.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    p.add_argument("--frames", type=int, default=30, help="timed frames per configuration")
    p.add_argument("--warmup", type=int, default=5, help="untimed frames first (kernel choice, allocation)")
    p.add_argument("--agree-frames", type=int, default=2, help="frames compared across configurations (<= 4)")
    p.add_argument("--pipeline-frames", type=int, default=100)
    p.add_argument("--pipeline-size", type=lambda t: parse_sizes(t)[0], default=None,
                   help="model input HxW for the pipeline run (default: the embedded default model's)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch and ONNX Runtime (0: all)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's dense fp16 rate for the FLOP floor (default: measured with a GEMM)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="start no ONNX Runtime comparison after this many seconds (the check's goal is 8 min)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from seg_perception.backends import BackendError
    from seg_perception.backends.torch_backend import torch_device

    try:
        device = torch.device(torch_device(args.device))
    except (BackendError, ValueError) as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    specs = [s for s in args.models.split(",") if s] or default_variants()
    measured = measure_peak_tflops(torch, device)
    peak = {**measured, "given_tflops": args.peak_tflops, "used_tflops": args.peak_tflops or measured["tflops"]}
    result = {"schema": 1, "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
              "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "environment": environment(torch, device, args), "peak": peak,
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "models": [], "pipeline": None,
              "complete": False}
    print(f"gpu_check on {result['environment'].get('gpu') or 'cpu'}: peak {peak['tflops']:.1f} TFLOP/s "
          f"({peak['dtype']} GEMM {peak['gemm']}); models {', '.join(specs)}", flush=True)

    for size in args.sizes:  # phase 1: the torch backend, every configuration
        for spec in specs:
            result["models"].append(check_model(torch, spec, size, device, args, peak))
            write(result, args.out)
    result["pipeline"] = check_pipeline(torch, device, args)  # phase 2
    write(result, args.out)
    e2e = result["pipeline"]["stages_ms"].get("end_to_end", {})
    print(f"  pipeline {result['pipeline']['backend']}: end to end p50 {e2e.get('p50', float('nan')):.2f} ms",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:  # phase 3: ONNX Runtime on the CPU, within the budget
        for row in result["models"]:
            if time.perf_counter() - start > args.budget_s:
                row.pop("_pending")
                row["onnxruntime_cpu"] = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
                continue
            try:
                onnxruntime_agreement(row, args, Path(tmp))
            except Exception as exc:  # one model that fails to export must not lose the others' figures
                row.pop("_pending", None)
                row["onnxruntime_cpu"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            print(f"  {row['model']} {row['size'][0]}x{row['size'][1]} vs ONNX Runtime: {row['agreement']}",
                  flush=True)
            write(result, args.out)
    result["elapsed_s"] = time.perf_counter() - start
    result["complete"] = True
    write(result, args.out)
    plot(result, args.out / "gpu_check.png")
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.png'} in {result['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
