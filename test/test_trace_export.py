"""Trace exports: Chrome Trace Event JSON (tracks per stage and thread, device time in args), CSV, PNG, table."""

from __future__ import annotations

import csv
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from seg_perception.core import trace
from seg_perception.core.trace import END_TO_END, INFERENCE_DEVICE, STAGES, Tracer
from seg_perception.core.trace_export import CSV_COLUMNS, chrome_trace, format_table, write_trace

FRAMES = 6
PIPELINE_STAGES = (trace.DECODE, trace.PREPROCESS, trace.INFERENCE, trace.POSTPROCESS)


@pytest.fixture
def traced() -> Tracer:
    """FRAMES frames like seg_node's: transport + wait recorded on a callback thread, the rest on this one;
    frame 2 has a device time; one extra frame is abandoned half-way."""
    tracer = Tracer(capacity=16)
    t = 5_000_000_000
    callback_thread = ThreadPoolExecutor(max_workers=1)  # one long-lived thread, like an executor's
    for i in range(FRAMES):
        slot = tracer.begin(stamp_ns=1_700_000_000_000_000_000 + i)

        def callback(slot=slot, t=t):
            tracer.span(slot, trace.TRANSPORT, t, t + 300_000)
            tracer.span(slot, trace.WAIT, t + 300_000, t + 1_000_000)

        callback_thread.submit(callback).result()
        t += 1_000_000
        for stage in PIPELINE_STAGES:
            tracer.span(slot, stage, t, t + 2_000_000 + stage * 100_000)
            t += 2_000_000 + stage * 100_000
        if i == 2:
            tracer.device_ms[slot] = 1.25
        tracer.commit(slot)
        t += 10_000_000
    callback_thread.shutdown()
    abandoned = tracer.begin()
    tracer.span(abandoned, trace.DECODE, t, t + 1)
    return tracer


def test_chrome_trace_is_valid_json_with_one_track_per_stage_and_thread(traced, tmp_path):
    path = write_trace(traced, tmp_path / "sub" / "trace.json")
    data = json.loads(path.read_text())
    events = data["traceEvents"]
    assert data["displayTimeUnit"] == "ms" and data["otherData"]["frames"] == FRAMES

    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    callback_tid = int(traced.tids[0, trace.TRANSPORT])
    main_tid = threading.get_native_id()
    assert callback_tid != main_tid
    expected = {"frames (end to end)"} | {f"{STAGES[s]} (thread {callback_tid})" for s in (0, 1)} | {
        f"{STAGES[s]} (thread {main_tid})" for s in PIPELINE_STAGES}
    assert set(names.values()) == expected
    sort_index = {e["tid"]: e["args"]["sort_index"] for e in events if e["name"] == "thread_sort_index"}
    assert set(sort_index) == set(names)
    order = [names[tid] for tid in sorted(sort_index, key=sort_index.get)]
    assert order[0].startswith("frames") and order[1].startswith("transport") and order[-1].startswith("postprocess")

    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == FRAMES * (1 + 2 + len(PIPELINE_STAGES))  # the abandoned frame is not exported
    for e in complete:
        assert {"name", "ts", "dur", "pid", "tid", "args"} <= set(e) and e["dur"] >= 0 and e["ts"] >= 0
        assert names[e["tid"]].split(" ")[0] == ("frames" if e["name"] == END_TO_END else e["name"])

    frames = {e["args"]["frame"]: e for e in complete if e["tid"] == 0}
    assert sorted(frames) == list(range(FRAMES))
    for e in complete:  # every stage span lies inside its frame's span on the frames track
        f = frames[e["args"]["frame"]]
        assert f["ts"] <= e["ts"] and e["ts"] + e["dur"] <= f["ts"] + f["dur"] + 1e-6
    stage_us = sum(e["dur"] for e in complete if e["args"]["frame"] == 0 and e["tid"] != 0)
    assert stage_us == pytest.approx(frames[0]["dur"])  # back-to-back spans: stages add up exactly
    assert frames[0]["ts"] == 0.0  # microseconds from the earliest span

    inference = {e["args"]["frame"]: e for e in complete if e["name"] == "inference"}
    assert inference[2]["args"]["inference_device_ms"] == 1.25 and frames[2]["args"]["inference_device_ms"] == 1.25
    assert "inference_device_ms" not in inference[1]["args"]
    assert inference[0]["dur"] == pytest.approx((2_000_000 + trace.INFERENCE * 100_000) / 1e3)


def test_chrome_trace_window_limits_frames(traced):
    data = chrome_trace(traced, window=2)
    frames = sorted(e["args"]["frame"] for e in data["traceEvents"] if e["ph"] == "X" and e["tid"] == 0)
    assert frames == [FRAMES - 2, FRAMES - 1]


def test_csv_has_one_row_per_frame_matching_durations(traced, tmp_path):
    path = write_trace(traced, tmp_path / "trace.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == FRAMES
    dur = traced.durations_ms()
    for row, expected in zip(rows, dur):
        for name, value in zip(STAGES + (END_TO_END,), expected):
            assert (row[f"{name}_ms"] == "") if np.isnan(value) else float(row[f"{name}_ms"]) == pytest.approx(value)
    assert [r[f"{INFERENCE_DEVICE}_ms"] for r in rows] == ["", "", "1.2500", "", "", ""]
    assert int(rows[1]["start_ns"]) - int(rows[0]["start_ns"]) == int(dur[0, -1] * 1e6) + 10_000_000


def test_png_has_histograms_and_timeline(traced, tmp_path):
    import matplotlib.image

    path = write_trace(traced, tmp_path / "trace.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 400 and image.shape[1] > 800
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_unknown_suffix_is_refused(traced, tmp_path):
    with pytest.raises(ValueError, match=r"\.json, \.csv, \.png"):
        write_trace(traced, tmp_path / "trace.txt")


def test_format_table_lists_every_stage_with_numbers(traced):
    text = format_table(traced.summary(), title="6 frames")
    lines = text.splitlines()
    assert lines[0] == "6 frames" and "p99" in lines[1]
    body = {line.split()[0]: line.split()[1:] for line in lines[3:] if not line.startswith("-")}
    assert set(body) == {"transport", "wait", "decode", "preprocess", "inference", "postprocess", END_TO_END,
                         INFERENCE_DEVICE}
    assert body["inference"][0] == str(FRAMES) and float(body["inference"][1]) == pytest.approx(2.4)
    assert body[INFERENCE_DEVICE][0] == "1"
