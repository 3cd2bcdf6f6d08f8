"""What tracing costs: frame time with the Tracer on against off, interleaved in one run.

Runs seg-perception bench's loop (raw rgb8 decode -> resize -> inference -> mask + confidence + colour at
camera resolution) with tracing switched on and off frame by frame, in groups of four frames ordered
on-off-off-on / off-on-on-off so that drift of a shared machine hits both settings alike. It prints:
  - the side-by-side figure: median of the per-group paired differences, a bootstrap 95% interval, and the
    on/off ratio. On a busy CPU frame-time noise is far larger than tracing's cost, so the interval is wide;
  - the cost of the tracing calls timed in place, inside those same real frames (where their code runs cold
    in the CPU caches) as a share of the frame: the precise figure the < 1% goal is judged on;
  - the same calls in a tight loop (warm caches), and Tracer.summary over a /diagnostics window.

    python bench/bench_trace_overhead.py [--model FILE.onnx] [--input-size 1024x2048] [--frames 100]

Without --model it uses the embedded default model, or exports metaseg-t (needs torch) when that is absent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from seg_perception.backends import DEFAULT_MODEL, open_backend
from seg_perception.core import trace
from seg_perception.core.bench import camera_frames, frame_decoder
from seg_perception.core.pipeline import OutputRequest, SegPipeline
from seg_perception.sizes import parse_hw

_NOW = trace._NOW
_FALLBACK = ("metaseg-t", (512, 1024))  # exported when the default model is not built yet
_DIAGNOSTICS_WINDOW = 300  # seg_node's default trace_window


class _TimedTracer(trace.Tracer):
    """A Tracer that adds up the time spent in its own recording calls (the timer's cost included)."""

    spent_ns = 0

    def begin(self, stamp_ns: int = 0) -> int:
        t0 = _NOW()
        slot = super().begin(stamp_ns)
        self.spent_ns += _NOW() - t0
        return slot

    def span(self, slot: int, stage: int, start_ns: int, end_ns: int | None = None) -> None:
        t0 = _NOW()
        super().span(slot, stage, start_ns, t0 if end_ns is None else end_ns)
        self.spent_ns += _NOW() - t0

    def commit(self, slot: int) -> None:
        t0 = _NOW()
        super().commit(slot)
        self.spent_ns += _NOW() - t0


def _model_path(model: str, tmp: str) -> str:
    if model or DEFAULT_MODEL.is_file():
        return model or str(DEFAULT_MODEL)
    import torch

    from seg_perception.backends.deploy_model import model_info_for
    from seg_perception.deploy.export import export_onnx
    from seg_perception.models.registry import build_model

    name, size = _FALLBACK
    torch.manual_seed(0)
    print(f"no default model at {DEFAULT_MODEL}: exporting {name} at {size[0]}x{size[1]} (random weights)")
    return str(export_onnx(build_model(name).eval(), model_info_for(name, size), Path(tmp) / f"{name}.onnx"))


def _tight_loop_ns(frames: int) -> float:
    """Mean cost of one frame's tracing calls as the node makes them, with no work in between."""
    tracer = trace.Tracer(capacity=4096)
    t0 = _NOW()
    for _ in range(frames):
        slot = tracer.begin(123)
        t = _NOW()
        for stage in range(len(trace.STAGES)):
            tracer.span(slot, stage, t)
        tracer.device_ms[slot] = 1.0
        tracer.commit(slot)
    return (_NOW() - t0) / frames


def _summary_ms(reps: int) -> float:
    tracer = trace.Tracer(capacity=2 * _DIAGNOSTICS_WINDOW)
    for _ in range(2 * _DIAGNOSTICS_WINDOW):
        slot = tracer.begin()
        for stage in range(len(trace.STAGES)):
            tracer.span(slot, stage, _NOW())
        tracer.commit(slot)
    t0 = time.perf_counter()
    for _ in range(reps):
        tracer.summary(_DIAGNOSTICS_WINDOW)
    return (time.perf_counter() - t0) / reps * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="", help="ONNX file (default: the embedded model)")
    p.add_argument("--input-size", type=parse_hw, default=(1024, 2048), help="HxW of the generated camera frames")
    p.add_argument("--frames", type=int, default=100, help="timed frames per setting")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        backend = open_backend(_model_path(args.model, tmp), "onnxruntime", threads=args.threads)
    h, w = args.input_size
    tracer = _TimedTracer(capacity=4096)
    pipeline = SegPipeline(backend, "camera", None, tracer)
    request = OutputRequest(mask=True, confidence=True, color=True)
    frames = camera_frames(h, w, "rgb8")
    decode = frame_decoder(pipeline, "rgb8", h, w)

    def frame_ns(data: bytes) -> int:
        t0 = _NOW()
        slot = tracer.begin()
        pipeline.process(decode(data, slot), request, slot)
        tracer.commit(slot)
        return _NOW() - t0

    for data in frames:  # warm-up: allocations, ORT's first-run work
        frame_ns(data)
    off_ns, diffs_ns, spent_ns = [], [], []
    for group in range(args.frames // 2):
        data = frames[group % len(frames)]
        first = group % 2 == 0
        elapsed = {True: 0, False: 0}
        for enabled in (first, not first, not first, first):
            tracer.enabled, tracer.spent_ns = enabled, 0
            t = frame_ns(data)
            elapsed[enabled] += t
            (spent_ns if enabled else off_ns).append(tracer.spent_ns if enabled else t)
        diffs_ns.append((elapsed[True] - elapsed[False]) / 2)
    backend.close()

    off_us = statistics.median(off_ns) / 1e3
    diffs_us = np.array(diffs_ns) / 1e3
    boot = np.median(np.random.default_rng(0).choice(diffs_us, (2000, diffs_us.size)), axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    diff_us, in_place_us = float(np.median(diffs_us)), statistics.median(spent_ns) / 1e3
    info = backend.info
    print(f"model {info.name} ({info.input_size[0]}x{info.input_size[1]}), onnxruntime {args.threads} thread(s), "
          f"camera {h}x{w} rgb8; {len(off_ns)} frames per setting, interleaved")
    rows = [
        ("frame time p50, tracing off", f"{off_us / 1e3:.3f} ms"),
        ("side by side: on - off (paired median)", f"{diff_us:+.1f} us per frame (95% CI {lo:+.1f} .. {hi:+.1f})"),
        ("side by side: ratio on / off", f"{1 + diff_us / off_us:.4f}x (95% CI {1 + lo / off_us:.4f} .. "
                                         f"{1 + hi / off_us:.4f})"),
        ("tracing calls timed in real frames (p50)", f"{in_place_us:.1f} us per frame = "
                                                     f"{in_place_us / off_us * 100:.3f}% of the frame"),
        ("same calls, tight loop (warm caches)", f"{_tight_loop_ns(20000) / 1e3:.2f} us per frame"),
        (f"Tracer.summary({_DIAGNOSTICS_WINDOW}) for /diagnostics", f"{_summary_ms(50):.3f} ms once per "
                                                                   f"diagnostics_period, on the timer thread"),
    ]
    for name, value in rows:
        print(f"{name:<42}{value}")
    print(f"goal < 1% of the frame: {'met' if in_place_us < 0.01 * off_us else 'NOT met'} (in-place cost)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
