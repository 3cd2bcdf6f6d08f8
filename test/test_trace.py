"""Tracer: spans nest and add up to end to end (known sleeps, driven directly and through the real
SegPipeline), summaries are right, abandoned frames stay out, and the ring buffer never grows."""

from __future__ import annotations

import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

from seg_perception.backends.base import Backend, InferenceOutputs
from seg_perception.core import trace
from seg_perception.core.trace import END_TO_END, INFERENCE_DEVICE, STAGES, Tracer

_NOW = trace._NOW


def _sleep_until(deadline_ns: int) -> None:
    # time.sleep overshoots by ~0.1 ms, enough; the assertions below only need "at least".
    time.sleep(max(0.0, (deadline_ns - _NOW()) / 1e9))


def _assert_spans_nest(tracer: Tracer, slot: int, stages: list[int]) -> None:
    """Each stage ends after it starts, and starts after the previous one ended."""
    spans = tracer.spans[slot, stages]
    assert (spans[:, 1] >= spans[:, 0]).all(), "a span ends before it starts"
    assert (spans[1:, 0] >= spans[:-1, 1]).all(), "stages overlap: they must follow one another"


def test_direct_spans_with_known_sleeps_nest_and_add_up():
    tracer = Tracer(capacity=8)
    sleeps_ms = {trace.DECODE: 2, trace.PREPROCESS: 1, trace.INFERENCE: 6, trace.POSTPROCESS: 2}
    for _ in range(5):
        slot = tracer.begin()
        t = _NOW()
        for stage, ms in sleeps_ms.items():
            _sleep_until(t + ms * 1_000_000)
            tracer.span(slot, stage, t)
            t = int(tracer.spans[slot, stage, 1])
        tracer.commit(slot)
        _assert_spans_nest(tracer, slot, list(sleeps_ms))

    for summary in (tracer.summary(), tracer.run_summary()):
        assert set(summary) == {STAGES[s] for s in sleeps_ms} | {END_TO_END}
        for stage, ms in sleeps_ms.items():
            assert summary[STAGES[stage]].count == 5
            assert ms <= summary[STAGES[stage]].p50_ms < ms + 5
        stage_sum = sum(summary[STAGES[s]].mean_ms for s in sleeps_ms)
        assert summary[END_TO_END].mean_ms == pytest.approx(stage_sum, rel=0.05)
        assert summary[END_TO_END].mean_ms >= sum(sleeps_ms.values())


class _SleepingBackend(Backend):
    """The real ONNX model, plus a known sleep in infer() and a known "device time"."""

    name = "sleeping"

    def __init__(self, inner: Backend, sleep_ms: float) -> None:
        self.inner, self.info, self.sleep_ms = inner, inner.info, sleep_ms

    def infer(self, image: np.ndarray, want_logits: bool = False) -> InferenceOutputs:
        time.sleep(self.sleep_ms / 1e3)
        return self.inner.infer(image, want_logits)

    def device_time_ms(self) -> float | None:
        return self.sleep_ms


class _SleepingProjector:
    """Stands in for GroundProjector with a known cost, so the costmap stage is measured too."""

    def __init__(self, sleep_ms: float) -> None:
        self.sleep_ms = sleep_ms

    def project(self, labels: np.ndarray, camera_hw: tuple[int, int]) -> dict[str, np.ndarray]:
        time.sleep(self.sleep_ms / 1e3)
        return {"": np.zeros((4, 4), np.int8)}

    def project_depth(self, labels: np.ndarray, camera_hw: tuple[int, int], depth) -> dict[str, np.ndarray]:
        return self.project(labels, camera_hw)


def test_pipeline_stages_with_known_sleeps_add_up_to_end_to_end(tiny_onnx):
    from seg_perception.backends.onnxruntime_backend import OnnxRuntimeBackend
    from seg_perception.core.pipeline import OutputRequest, SegPipeline

    inner = OnnxRuntimeBackend(str(tiny_onnx), threads=1)
    h, w = inner.info.input_size
    cam_h, cam_w = 2 * h, 2 * w  # a real resize in preprocess and postprocess
    tracer = Tracer(capacity=16)
    pipeline = SegPipeline(_SleepingBackend(inner, sleep_ms=8), "camera", _SleepingProjector(3), tracer)
    request = OutputRequest(mask=True, confidence=True, color=True, costmaps=True)
    raw = np.random.default_rng(0).integers(0, 256, (cam_h, cam_w, 3), dtype=np.uint8).tobytes()
    frames, walls = 12, []
    for _ in range(frames):
        t0 = _NOW()
        slot = tracer.begin()
        rgb = pipeline.decode_raw(raw, "rgb8", cam_h, cam_w, cam_w * 3, slot)
        result = pipeline.process(rgb, request, slot)
        tracer.commit(slot)
        walls.append((_NOW() - t0) / 1e6)
        assert result.mask.shape == (cam_h, cam_w) and result.costmaps
        stages = [trace.DECODE, trace.PREPROCESS, trace.INFERENCE, trace.POSTPROCESS, trace.COSTMAP]
        _assert_spans_nest(tracer, slot, stages)

    s = tracer.summary()
    assert s["inference"].count == frames and s["costmap"].count == frames
    assert s["inference"].p50_ms >= 8 and s["costmap"].p50_ms >= 3
    assert s[INFERENCE_DEVICE].mean_ms == pytest.approx(8.0)
    assert "transport" not in s and "publish" not in s  # stages nobody recorded stay out
    # Medians over frames: a preemption by another process on the shared CPU may open a gap in one frame.
    dur = tracer.durations_ms()
    stage_sum = np.nansum(dur[:, :-1], axis=1)
    assert np.median(stage_sum / dur[:, -1]) == pytest.approx(1.0, rel=0.05)
    # End to end is what a stopwatch around the frame sees, minus begin/commit bookkeeping.
    assert np.median(dur[:, -1]) == pytest.approx(np.median(walls), rel=0.05)


def test_a_late_depth_image_is_traced_as_depth_not_as_costmap(tiny_onnx):
    """The depth lookup may wait for a late depth image (seg_node: up to 0.1 s); that wait is the depth stage's,
    and the costmap stage is the projection alone."""
    from seg_perception.backends.onnxruntime_backend import OnnxRuntimeBackend
    from seg_perception.core.pipeline import OutputRequest, SegPipeline

    backend = OnnxRuntimeBackend(str(tiny_onnx), threads=1)
    h, w = backend.info.input_size
    tracer = Tracer(capacity=8)
    pipeline = SegPipeline(backend, "camera", _SleepingProjector(3), tracer)
    depth = np.ones((h, w), np.float32)

    def late_depth() -> np.ndarray:
        time.sleep(0.03)
        return depth

    rgb = np.zeros((h, w, 3), np.uint8)
    for _ in range(5):
        slot = tracer.begin()
        assert pipeline.process(rgb, OutputRequest(costmaps=True), slot, late_depth).costmaps
        tracer.commit(slot)
    backend.close()
    s = tracer.summary()
    assert 3 <= s["costmap"].p50_ms < 30  # the 3 ms projection, without the 30 ms wait
    assert s["depth"].count == s["costmap"].count == 5 and s["depth"].p50_ms >= 30
    for slot in tracer.recent_slots():
        _assert_spans_nest(tracer, slot, [trace.INFERENCE, trace.POSTPROCESS, trace.DEPTH, trace.COSTMAP])
    dur = tracer.durations_ms()
    assert np.median(np.nansum(dur[:, :-1], axis=1) / dur[:, -1]) == pytest.approx(1.0, rel=0.05)


def test_summaries_window_exact_and_whole_run_from_histograms():
    tracer = Tracer(capacity=32)
    ms = np.arange(1, 101)  # 1..100 ms inference, 0.5 ms decode, frames back to back
    t = 1_000_000_000
    for d in ms:
        slot = tracer.begin(stamp_ns=int(d))
        tracer.span(slot, trace.DECODE, t, t + 500_000)
        tracer.span(slot, trace.INFERENCE, t + 500_000, t + 500_000 + int(d) * 1_000_000)
        tracer.commit(slot)
        t += 200_000_000
        if d == 50:
            tracer.summary()  # a reader folds mid-run; the ring wrapping folds the rest

    last10 = tracer.summary(window=10)["inference"]
    assert last10.count == 10
    assert last10.p50_ms == pytest.approx(95.5) and last10.max_ms == pytest.approx(100.0)
    ring = tracer.summary()
    assert ring["inference"].count == 32  # the ring holds the last `capacity` frames
    assert ring[END_TO_END].mean_ms == pytest.approx(ring["inference"].mean_ms + 0.5)

    run = tracer.run_summary()
    assert run["inference"].count == 100 and run["decode"].count == 100
    assert run["inference"].mean_ms == pytest.approx(50.5)
    assert run["inference"].max_ms == pytest.approx(100.0)
    exact = np.percentile(ms, [50, 90, 99])
    got = [run["inference"].p50_ms, run["inference"].p90_ms, run["inference"].p99_ms]
    np.testing.assert_allclose(got, exact, rtol=0.02)  # bins are ~1.2% wide
    assert run["decode"].p50_ms == pytest.approx(0.5, rel=0.01) and run["decode"].p99_ms <= 0.5
    assert run[END_TO_END].max_ms == pytest.approx(100.5)


def test_abandoned_frame_is_never_reported():
    tracer = Tracer(capacity=4)
    for i, commit in enumerate([True, False, True, True]):
        slot = tracer.begin(stamp_ns=i)
        tracer.span(slot, trace.INFERENCE, 10, 10 + (i + 1) * 1_000_000)
        if commit:
            tracer.commit(slot)
    slots = tracer.recent_slots()
    assert tracer.stamps[slots].tolist() == [0, 2, 3]  # oldest first, frame 1 failed half-way
    assert tracer.summary()["inference"].max_ms == pytest.approx(4.0)
    assert tracer.run_summary()["inference"].count == 3
    # Once newer frames reuse the slots, the old commits drop out rather than pointing at new data.
    for i in range(3):
        tracer.begin(stamp_ns=100 + i)
    assert tracer.stamps[tracer.recent_slots()].tolist() == [3]


def test_disabled_tracer_records_nothing():
    tracer = Tracer(capacity=4, enabled=False)
    slot = tracer.begin()
    assert slot == -1
    tracer.span(slot, trace.INFERENCE, 1, 2)
    tracer.commit(slot)
    assert tracer.committed == 0 and not tracer.spans.any()
    assert tracer.summary() == {} and tracer.run_summary() == {}


def test_ring_buffer_has_fixed_capacity_and_flat_memory():
    tracer = Tracer(capacity=64)
    arrays = (tracer.spans, tracer.tids, tracer.stamps, tracer.device_ms, tracer.frame_ids)
    shapes = [a.shape for a in arrays]

    def frames(n: int) -> None:
        for _ in range(n):
            slot = tracer.begin(stamp_ns=123)
            t = _NOW()
            for stage in range(len(STAGES)):
                tracer.span(slot, stage, t)
            tracer.device_ms[slot] = 1.5
            tracer.commit(slot)

    frames(200)  # first-use allocations (lazy caches, int objects) happen here
    tracemalloc.start()
    try:
        frames(50)
        before = tracemalloc.get_traced_memory()[0]
        frames(5000)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 2048, f"tracing grew by {after - before} bytes over 5000 frames"
    assert [a.shape for a in arrays] == shapes
    assert all(a is b for a, b in zip(arrays, (tracer.spans, tracer.tids, tracer.stamps, tracer.device_ms,
                                                tracer.frame_ids)))
    assert tracer.committed == 5250 and tracer.recent_slots().size == 64
    assert tracer.run_summary()[INFERENCE_DEVICE].count == 5250


def test_readers_on_another_thread_lose_and_double_count_nothing():
    """The node's diagnostics timer folds statistics while its worker begins and commits frames."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows, to hit the races
    tracer = Tracer(capacity=32)
    frames, done = 3000, threading.Event()

    def reader() -> None:
        while not done.is_set():
            tracer.summary(window=16)
            tracer.run_summary()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(frames):
            slot = tracer.begin(stamp_ns=i)
            tracer.span(slot, trace.INFERENCE, 1_000, 1_000 + (i % 7 + 1) * 1_000_000)
            tracer.commit(slot)
    finally:
        done.set()
        thread.join()
        sys.setswitchinterval(interval)
    run = tracer.run_summary()["inference"]
    assert run.count == frames
    assert run.mean_ms == pytest.approx(np.mean(np.arange(frames) % 7 + 1))
    assert tracer.stamps[tracer.recent_slots()].tolist() == list(range(frames - 32, frames))


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        Tracer(capacity=0)
