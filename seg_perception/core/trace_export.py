"""A Tracer's frames out to files people can look at: Chrome trace JSON, per-frame CSV, a PNG, a text table.

`write_trace(tracer, path)` picks the format from the suffix: .json opens in https://ui.perfetto.dev and
chrome://tracing (one track per stage and thread), .csv has one row per frame, .png shows latency histograms
and a timeline. Reading happens off the hot path, so allocation here is fine.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from pathlib import Path

import numpy as np

from seg_perception.core import trace
from seg_perception.core.trace import END_TO_END, INFERENCE_DEVICE, STAGES, StageSummary, Tracer
from seg_perception.output_files import replace_file

_PROCESS_NAME = "seg_perception"
_FRAME_TRACK = 0  # Chrome trace tid of the per-frame (end-to-end) track; stage tracks follow it
TRACE_SUFFIXES = (".json", ".csv", ".png")  # what write_trace writes, by suffix


def write_trace(tracer: Tracer, path: str | os.PathLike, window: int | None = None, title: str = "") -> Path:
    """Write the last `window` committed frames (default: all still in the ring) as .json, .csv or .png;
    `title` (what was traced: model, backend) heads the PNG."""
    path = Path(path)
    writers = dict(zip(TRACE_SUFFIXES, (write_chrome_trace, write_csv, functools.partial(write_png, title=title))))
    writer = writers.get(path.suffix.lower())
    if writer is None:
        raise ValueError(f"trace file '{path}': suffix must be one of {', '.join(TRACE_SUFFIXES)}")
    return replace_file(path, lambda tmp: writer(tracer, tmp, window))


# --- Chrome Trace Event format -------------------------------------------------------------------
def chrome_trace(tracer: Tracer, window: int | None = None) -> dict:
    """Trace Event Format dict: "X" complete events per stage span, one track per (stage, thread).

    Timestamps are microseconds since the earliest span exported; `otherData.origin_ns` is that instant
    on the tracer's perf_counter_ns clock.
    """
    slots = tracer.recent_slots(window)
    spans, tids = tracer.spans[slots], tracer.tids[slots]
    ran = spans[:, :, 1] > 0
    origin = int(spans[:, :, 0][ran].min()) if ran.any() else 0
    pid = os.getpid()

    def us(ns: int) -> float:
        return (ns - origin) / 1e3

    tracks: dict[tuple[int, int], int] = {}  # (stage, native thread id) -> Chrome tid
    for stage, thread in sorted({(int(s), int(tids[f, s])) for f, s in zip(*np.nonzero(ran))}):
        tracks[(stage, thread)] = _FRAME_TRACK + 1 + len(tracks)

    events: list[dict] = [{"name": "process_name", "ph": "M", "pid": pid, "args": {"name": _PROCESS_NAME}}]
    events += _track_meta(pid, _FRAME_TRACK, "frames (end to end)")
    for (stage, thread), tid in tracks.items():
        events += _track_meta(pid, tid, f"{STAGES[stage]} (thread {thread})")
    for f, slot in enumerate(slots):
        stages = np.flatnonzero(ran[f])
        if stages.size == 0:
            continue
        frame, stamp = int(tracer.frame_ids[slot]), int(tracer.stamps[slot])
        device_ms = float(tracer.device_ms[slot])
        start, end = int(spans[f, stages, 0].min()), int(spans[f, stages, 1].max())
        frame_args = {"frame": frame, "stamp_ns": stamp}
        e2e_args = dict(frame_args, end_to_end_ms=(end - start) / 1e6)
        if not np.isnan(device_ms):
            e2e_args["inference_device_ms"] = device_ms
        events.append(_complete(END_TO_END, us(start), (end - start) / 1e3, pid, _FRAME_TRACK, e2e_args))
        for s in stages:
            s0, s1 = int(spans[f, s, 0]), int(spans[f, s, 1])
            args = frame_args
            if s == trace.INFERENCE and not np.isnan(device_ms):
                args = dict(frame_args, inference_device_ms=device_ms)
            events.append(_complete(STAGES[s], us(s0), (s1 - s0) / 1e3, pid, tracks[(int(s), int(tids[f, s]))],
                                    args))
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"clock": "perf_counter_ns", "origin_ns": origin, "frames": len(slots)}}


def _track_meta(pid: int, tid: int, name: str) -> list[dict]:
    # thread_sort_index keeps the viewer's track order = pipeline order rather than alphabetical.
    return [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}},
            {"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}}]


def _complete(name: str, ts_us: float, dur_us: float, pid: int, tid: int, args: dict) -> dict:
    return {"name": name, "cat": _PROCESS_NAME, "ph": "X", "ts": ts_us, "dur": dur_us, "pid": pid, "tid": tid,
            "args": args}


def write_chrome_trace(tracer: Tracer, path: str | os.PathLike, window: int | None = None) -> None:
    with open(path, "w") as f:
        json.dump(chrome_trace(tracer, window), f)


# --- CSV ----------------------------------------------------------------------------------------
CSV_COLUMNS: tuple[str, ...] = (("frame", "stamp_ns", "start_ns") + tuple(f"{s}_ms" for s in STAGES)
                                + (f"{END_TO_END}_ms", f"{INFERENCE_DEVICE}_ms"))


def write_csv(tracer: Tracer, path: str | os.PathLike, window: int | None = None) -> None:
    """One row per frame: ids, the first span's start (perf_counter_ns), each stage's ms (empty if not run)."""
    slots = tracer.recent_slots(window)
    spans = tracer.spans[slots]
    ran = spans[:, :, 1] > 0
    dur = trace.span_durations_ms(spans)
    start = np.where(ran, spans[:, :, 0], np.iinfo(np.int64).max).min(axis=1)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS)
        for f_i, slot in enumerate(slots):
            values = list(dur[f_i]) + [tracer.device_ms[slot]]
            out.writerow([int(tracer.frame_ids[slot]), int(tracer.stamps[slot]),
                          int(start[f_i]) if ran[f_i].any() else ""]
                         + ["" if np.isnan(v) else f"{v:.4f}" for v in values])


# --- PNG ----------------------------------------------------------------------------------------
def write_png(tracer: Tracer, path: str | os.PathLike, window: int | None = None, title: str = "") -> None:
    """Latency histogram per stage (and end to end) above a per-frame timeline of stacked stage times, under
    a title naming what was traced."""
    import matplotlib

    matplotlib.use("Agg")  # headless: the node and CI have no display
    import matplotlib.pyplot as plt

    dur = tracer.durations_ms(window)
    names = STAGES + (END_TO_END,)
    shown = [i for i in range(len(names)) if not np.isnan(dur[:, i]).all()]
    cols = 3
    hist_rows = max(1, -(-len(shown) // cols))
    fig = plt.figure(figsize=(12, 2.6 * hist_rows + 3.6), layout="constrained")
    fig.suptitle(f"stage latency{': ' + title if title else ''} ({dur.shape[0]} frames)", fontsize=10)
    grid = fig.add_gridspec(hist_rows + 1, cols, height_ratios=[1] * hist_rows + [1.4])
    colors = plt.get_cmap("tab10")
    for k, i in enumerate(shown):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        col = dur[:, i][~np.isnan(dur[:, i])]
        ax.hist(col, bins=min(50, max(5, col.size // 4)), color=colors(i % 10))
        p50, p99 = np.percentile(col, [50, 99])
        ax.set_title(f"{names[i]}: p50 {p50:.2f} / p99 {p99:.2f} ms", fontsize=9)
        ax.set_xlabel("ms", fontsize=8)
        ax.tick_params(labelsize=7)
    timeline = fig.add_subplot(grid[hist_rows, :])
    frames = np.arange(dur.shape[0])
    stage_cols = [i for i in shown if i < len(STAGES)]
    if stage_cols:
        timeline.stackplot(frames, np.nan_to_num(dur[:, stage_cols]).T, labels=[names[i] for i in stage_cols],
                           colors=[colors(i % 10) for i in stage_cols])
        timeline.plot(frames, dur[:, -1], color="black", linewidth=0.8, label=END_TO_END)
        timeline.legend(loc="upper left", fontsize=7, ncols=min(len(stage_cols) + 1, 5))
    timeline.set_xlabel("frame (oldest first)")
    timeline.set_ylabel("ms")
    timeline.set_title(f"{dur.shape[0]} frames, stage times stacked", fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- text table ---------------------------------------------------------------------------------
def format_table(summary: dict[str, StageSummary], title: str = "") -> str:
    """Fixed-width stage table (ms) of a `Tracer.summary()` / `run_summary()` result."""
    header = f"{'stage':<18}{'count':>8}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}"
    lines = ([title] if title else []) + [header + "  (ms)", "-" * len(header)]
    for name, s in summary.items():
        if name == END_TO_END:
            lines.append("-" * len(header))
        lines.append(f"{name:<18}{s.count:>8d}{s.mean_ms:>10.3f}{s.p50_ms:>10.3f}{s.p90_ms:>10.3f}"
                     f"{s.p99_ms:>10.3f}{s.max_ms:>10.3f}")
    return "\n".join(lines)
