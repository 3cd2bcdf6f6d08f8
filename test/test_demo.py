"""`seg-perception demo`: a shortened run through a real seg_node over real DDS, and its helpers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from seg_perception.backends import DEFAULT_MODEL
from seg_perception.core import trace
from seg_perception.core.trace_export import write_chrome_trace
from seg_perception.demo import durations_from_chrome_trace
from seg_perception.output_files import MADE_BY

pytest.importorskip("rclpy", reason="the demo talks ROS 2 (the [ros] extra)")

# The demo process must run without torch: block its import and run the CLI.
_NO_TORCH = ("import sys; sys.modules['torch'] = None; from seg_perception.cli import main; "
             "sys.exit(main(sys.argv[1:]))")


def test_trace_json_reads_back_without_transport(tmp_path):
    tracer = trace.Tracer(capacity=8)
    for k in range(3):
        slot = tracer.begin(k)
        t = 1_000_000_000 * (k + 1)
        tracer.span(slot, trace.TRANSPORT, t - 5_000_000, t)
        tracer.span(slot, trace.DECODE, t, t + 1_000_000)
        tracer.span(slot, trace.INFERENCE, t + 1_000_000, t + (11 + k) * 1_000_000)
        tracer.span(slot, trace.PUBLISH, t + 12_000_000 + k * 1_000_000, t + 14_000_000 + k * 1_000_000)
        tracer.commit(slot)
    path = tmp_path / "trace.json"
    write_chrome_trace(tracer, path)
    got = durations_from_chrome_trace(path)
    want = tracer.durations_ms()
    assert got.shape == want.shape == (3, len(trace.STAGES) + 1)
    assert np.isnan(got[:, trace.TRANSPORT]).all()
    np.testing.assert_allclose(got[:, trace.INFERENCE], [10, 11, 12], atol=1e-3)
    np.testing.assert_allclose(got[:, trace.DECODE], want[:, trace.DECODE], atol=1e-3)
    np.testing.assert_allclose(got[:, -1], [14, 15, 16], atol=1e-3)  # decode start to publish end


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason=f"embedded default model missing: {DEFAULT_MODEL}")
def test_short_demo_runs_seg_node_and_reports(tmp_path, ros_env):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, "demo", "--frames", "6", "--rate", "1",
                           "--out", str(out)], env=ros_env, capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:] + (out / "seg_node.log").read_text()[-2000:]
    assert "mIoU" in proc.stdout and "seg_node stage latency" in proc.stdout
    for stage in ("inference", "costmap", "publish", "end_to_end"):
        assert f"\n{stage} " in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] >= 4 and report["source"]["masks_received"] >= 4
    assert report["miou"] > 0.6, report["per_class_iou"]  # the trained default model, through the node
    assert report["latency_ms"]["inference"]["count"] >= 4
    assert report["model"]["name"] and report["model"]["sha256"]
    assert len(list(out.glob("overlay_*.png"))) >= 2 and (out / "costmap.png").is_file()
    assert (out / "overview.png").is_file()
    # seg_node's depth costmaps against flat ground, both scored against the drive's true top-down map
    costmap = report["costmap_iou"]
    assert costmap["frames"]["depth"] == costmap["frames"]["flat_ground"] >= 1 and "costmap IoU" in proc.stdout
    assert costmap["depth"]["lethal"] > 0.5 > 0.1 > costmap["flat_ground"]["lethal"], costmap
    assert (out / "costmap_compare.png").is_file()
    # the closing line names exactly the files the demo wrote
    listed = proc.stdout.rsplit("outputs in", 1)[1].split(": ", 1)[1].rsplit(" (", 1)[0].split(", ")
    assert {p.name for p in out.iterdir() if p.is_file() and not p.name.endswith(".log")} == set(listed) | {MADE_BY}
    assert set(listed) <= set(json.loads((out / MADE_BY).read_text())["files"])  # what the next run may replace
    # replayed stamps are years old: no transport span, so the trace opens on the frames
    spans = [e for e in json.loads((out / "trace.json").read_text())["traceEvents"] if e["ph"] == "X"]
    assert spans and "transport" not in {e["name"] for e in spans}
    assert max(e["dur"] for e in spans) < 60e6
    assert (out / "report.md").read_text().startswith("# ")
