"""What tracing costs: frame time with the Tracer on against off, interleaved in one run.

Runs seg-perception bench's loop (raw rgb8 decode -> resize -> inference -> mask + confidence + colour at
camera resolution) with tracing switched on and off frame by frame (ABBA order, so drift of a shared machine
hits both alike) and prints the median frame times and their ratio. Frame-time noise on a busy CPU is larger
than tracing's cost, so it also times the tracing calls alone (begin + 8 spans + device time + commit, what
seg_node makes per frame) in a tight loop, and Tracer.summary over a /diagnostics window.

    python bench/bench_trace_overhead.py [--model FILE.onnx] [--input-size 1024x2048] [--frames 200]

Without --model it uses the embedded default model, or exports metaseg-t (needs torch) when that is absent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from seg_perception.backends import DEFAULT_MODEL, open_backend
from seg_perception.core import trace
from seg_perception.core.bench import camera_frames, frame_decoder
from seg_perception.core.pipeline import OutputRequest, SegPipeline
from seg_perception.deploy.export import parse_hw

_NOW = trace._NOW
_FALLBACK = ("metaseg-t", (512, 1024))  # exported when the default model is not built yet
_DIAGNOSTICS_WINDOW = 300  # seg_node's default trace_window


def _model_path(model: str, tmp: str) -> str:
    if model or DEFAULT_MODEL.is_file():
        return model or str(DEFAULT_MODEL)
    import torch

    from seg_perception.deploy.export import export_onnx, model_info_for
    from seg_perception.models.registry import build_model

    name, size = _FALLBACK
    torch.manual_seed(0)
    print(f"no default model at {DEFAULT_MODEL}: exporting {name} at {size[0]}x{size[1]} (random weights)")
    return str(export_onnx(build_model(name).eval(), model_info_for(name, size), Path(tmp) / f"{name}.onnx"))


def _tracing_calls_ns(frames: int) -> float:
    """Mean cost of one frame's tracing calls, as the node makes them, without any work in between."""
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
    p.add_argument("--frames", type=int, default=200, help="timed frames per setting")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        backend = open_backend(_model_path(args.model, tmp), "onnxruntime", threads=args.threads)
    h, w = args.input_size
    tracer = trace.Tracer(capacity=4096)
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
    # Groups of four frames of the same content, on-off-off-on then off-on-on-off: the finest interleaving
    # that cancels linear drift and gives both settings the same images.
    times: dict[bool, list[int]] = {True: [], False: []}
    for group in range(args.frames // 2):
        data = frames[group % len(frames)]
        first = group % 2 == 0
        for enabled in (first, not first, not first, first):
            tracer.enabled = enabled
            times[enabled].append(frame_ns(data))
    backend.close()

    on, off = (statistics.median(times[k]) / 1e6 for k in (True, False))
    calls_us = _tracing_calls_ns(20000) / 1e3
    info = backend.info
    print(f"model {info.name} ({info.input_size[0]}x{info.input_size[1]}), onnxruntime {args.threads} thread(s), "
          f"camera {h}x{w} rgb8; {len(times[True])} frames per setting, interleaved")
    ratio = on / off
    print(f"{'frame time p50, tracing off / on':<44}{off:.3f} / {on:.3f} ms")
    print(f"{'tracing on / off, side by side':<44}{ratio:.4f}x  ({(ratio - 1) * 100:+.2f}%, "
          f"{(on - off) * 1e3:+.1f} us per frame)")
    print(f"{'tracing calls alone, tight loop':<44}{calls_us:.2f} us per frame (warm caches; between frames of "
          f"real work the same calls run cold and cost more)")
    print(f"{f'Tracer.summary({_DIAGNOSTICS_WINDOW}) for /diagnostics':<44}{_summary_ms(50):.3f} ms, "
          f"once per diagnostics_period (1 s), on the timer thread")
    print(f"goal: tracing adds < 1% to the frame: {'met' if ratio < 1.01 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
