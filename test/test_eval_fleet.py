"""`seg-perception eval bags`: five small synthetic bags with the tiny_onnx model, two of them bad (an mcap cut off
mid-write fails when opened, a frame cut short fails mid-read, inside a task). On a local Ray with 2 CPUs, shared
by the tests here: the fleet's numbers equal `eval bag`'s summed over the good bags, the bad bags are listed, a
worker killed mid-run changes nothing, Ctrl-C stops the cluster's tasks and writes nothing. In one process
(without Ray importable): time slices add up to the same numbers."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from seg_perception.bags import BagWriter, image_msg, write_drive_bag
from seg_perception.cli import main
from seg_perception.core.costmap import GridSpec
from seg_perception.data.synthetic import Camera, render_drive
from seg_perception.eval.fleet import find_bags, slice_windows

REPO = Path(__file__).resolve().parent.parent
H, W = 72, 144
TOPICS = ["--image-topic", "/camera/image_raw", "--gt-topic", "/camera/semantic_gt"]
TASK_TITLE = b"ray::_evaluate_task"  # a Ray worker's process title while it runs a fleet task


def _drive(root: Path, name: str, frames: int, seed: int, topdown: bool = False, **kw) -> Path:
    """A synthetic drive; topdown: with the true top-down map, so that eval bag scores its costmaps too."""
    grid = GridSpec() if topdown else None
    if topdown:
        kw.update(camera_info=Camera.for_image(H, W).pinhole(), topdown_grid=grid)
    return write_drive_bag(root / name, render_drive(np.random.default_rng(seed), frames, H, W, topdown=grid), **kw)


def _frame_cut_short(path: Path) -> Path:
    """Three frames with ground truth; the last image holds half its pixels."""
    with BagWriter(path) as bag:
        for i, frame in enumerate(render_drive(np.random.default_rng(5), 3, H, W)):
            ns = 1_700_000_000_000_000_000 + i * 100_000_000
            msg = image_msg(ns, "camera", frame.rgb, "rgb8")
            if i == 2:
                msg = dataclasses.replace(msg, data=msg.data[: msg.data.size // 2])
            bag.write("/camera/image_raw", ns, msg)
            bag.write("/camera/semantic_gt", ns, image_msg(ns, "camera", frame.train_ids, "mono8"))
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> dict:
    """root/ with day1/{a (sqlite3, costmaps scored too), b (mcap)}, day2/long (sqlite3, 6 frames over 2.5 s,
    costmaps scored too), and the bad ones: day2/corrupt (mcap cut short), day2/cut_frame."""
    root = tmp_path_factory.mktemp("fleet")
    bags = [_drive(root, "day1/a", 3, 1, topdown=True), _drive(root, "day1/b", 3, 2, storage="mcap"),
            _drive(root, "day2/long", 6, 3, topdown=True, rate_hz=2.0)]
    corrupt = _drive(root, "day2/corrupt", 3, 4, storage="mcap")
    mcap = next(corrupt.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])  # a recording cut off mid-write
    return {"root": root, "bags": bags, "corrupt": corrupt, "cut_frame": _frame_cut_short(root / "day2/cut_frame")}


@pytest.fixture(scope="module")
def reference(fleet, tiny_onnx, tmp_path_factory) -> dict[Path, dict]:
    """`eval bag`'s report of each good bag."""
    out = tmp_path_factory.mktemp("reference")
    reports = {}
    for i, bag in enumerate(fleet["bags"]):
        path = out / f"{i}.json"
        assert main(["eval", "bag", str(bag), *TOPICS, "--model", str(tiny_onnx), "--threads", "1", "--quiet",
                     "--out", str(path)]) == 0
        reports[bag] = json.loads(path.read_text())
    return reports


def _summed(reference: dict[Path, dict]) -> np.ndarray:
    return sum(np.asarray(r["confusion_matrix"]) for r in reference.values())


def _check_fleet(out: Path, fleet: dict, reference: dict[Path, dict]) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert np.array_equal(np.asarray(report["confusion_matrix"]), _summed(reference))
    assert report["num_images"] == sum(r["num_images"] for r in reference.values()) == 12
    assert report["latency_ms"]["inference"]["count"] == 12
    failed = {Path(r["bag"]): r["error"] for r in report["bags"][:2]}  # failed bags first
    assert "cannot open bag" in failed[fleet["corrupt"]] and "ImageDecodeError" in failed[fleet["cut_frame"]]
    assert report["source"]["num_bags"] == 5 and report["source"]["failed_bags"] == 2
    for row in report["bags"][2:]:
        want = reference[Path(row["bag"])]
        got = json.loads((out / row["report"]).read_text())
        assert np.array_equal(got["confusion_matrix"], want["confusion_matrix"])
        assert got["source"] == want["source"] and row["miou"] == want["miou"]
        assert got.get("costmap_iou") == want.get("costmap_iou")  # a and long have a top-down map, b none
    assert [r["miou"] for r in report["bags"][2:]] == sorted(r["miou"] for r in report["bags"][2:])
    assert "day2/corrupt" in (out / "report.md").read_text()
    frames = report["costmap_iou"]["frames"]  # counts of a and long added up
    assert frames == {mode: 3 + 6 for mode in ("flat_ground", "depth")}
    return report


def test_find_bags_and_slices(fleet, tmp_path):
    assert find_bags([fleet["root"]]) == sorted(fleet["bags"] + [fleet["corrupt"], fleet["cut_frame"]])
    loose = tmp_path / "loose.mcap"
    loose.write_bytes(b"")
    assert find_bags([tmp_path, fleet["bags"][0]]) == sorted([loose, fleet["bags"][0]])
    for windows in (slice_windows((10, 85), 20), slice_windows((10, 90), 20)):
        starts = [w[0] for w in windows]
        assert starts[0] is None and windows[-1][1] is None and len(windows) == 4
        assert [w[1] for w in windows[:-1]] == starts[1:] == [30, 50, 70]  # back to back: nothing lost or twice
    assert slice_windows((10, 25), 20) == slice_windows((10, 95), 0) == [None]


def test_bad_fleet_input_writes_nothing(fleet, tiny_onnx, tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "mine.txt").write_text("keep")
    args = ["eval", "bags", str(fleet["root"]), *TOPICS, "--model", str(tiny_onnx), "--quiet", "--out"]
    assert main([*args, str(used)]) == 2
    assert "not an empty folder" in capsys.readouterr().err and os.listdir(used) == ["mine.txt"]
    assert main([*args, str(tmp_path / "r"), "--model", str(tmp_path / "none.onnx")]) == 2
    assert "model file not found" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["eval", "bags", str(tmp_path / "missing"), *TOPICS, "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    if importlib.util.find_spec("ray") is not None:  # port 1: nothing listens, so no cluster either
        assert main([*args, str(tmp_path / "r"), "--ray", "127.0.0.1:1"]) == 2
        assert "no Ray cluster answers at '127.0.0.1:1'" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_one_process_without_ray_slices_add_up(fleet, reference, tiny_onnx, tmp_path):
    """Ray blocked from import; 1 s slices split the 2.5 s bag into three tasks, which add up exactly."""
    out = tmp_path / "out"
    code = ("import sys; sys.modules['ray'] = None; from seg_perception.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "eval", "bags", str(fleet["root"]), *TOPICS, "--model",
                           str(tiny_onnx), "--slice-seconds", "1", "--threads", "1", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1, proc.stderr  # 1: a bag failed, the report lists it
    assert "3 of 5 bags scored (in process)" in proc.stdout
    report = _check_fleet(out, fleet, reference)
    assert report["source"]["tasks"] == 6  # a, b, cut_frame, three slices of long; the corrupt bag gets none
    assert "failed: " + str(fleet["corrupt"]) in proc.stderr


# --- on Ray -----------------------------------------------------------------------------------------------
# Ray's processes inherit this from the test process: it tells this session's workers from another suite's.
SESSION_MARK = f"SEG_FLEET_TEST_SESSION={os.getpid()}"


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray (2 CPUs) for the tests below; `eval bags` uses the Ray this process has joined."""
    ray = pytest.importorskip("ray", reason="the [fleet] extra")
    name, value = SESSION_MARK.split("=")
    os.environ[name] = value
    try:
        context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield context.address_info["gcs_address"]
        ray.shutdown()
    finally:
        del os.environ[name]


def _task_pids() -> list[int]:
    """This session's Ray workers that are running a fleet task now."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if not f.read().startswith(TASK_TITLE):
                        continue
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    if SESSION_MARK.encode() in f.read().split(b"\0"):
                        pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _wait_for(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    return None


@pytest.mark.xdist_group("ray")
def test_ray_fleet_equals_eval_bag_summed(fleet, reference, tiny_onnx, ray_session, tmp_path):
    out = tmp_path / "out"
    assert main(["eval", "bags", str(fleet["root"]), *TOPICS, "--model", str(tiny_onnx), "--workers", "2",
                 "--quiet", "--out", str(out)]) == 1
    report = _check_fleet(out, fleet, reference)
    assert report["source"]["tasks"] == 4 and report["source"]["runner"].startswith("ray")


@pytest.mark.xdist_group("ray")
def test_ray_worker_killed_mid_run_is_retried_exactly(fleet, reference, tiny_onnx, ray_session, tmp_path):
    killed = []

    def kill_first_task_worker():
        pids = _wait_for(_task_pids, timeout=120)
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    killer = threading.Thread(target=kill_first_task_worker)
    killer.start()
    out = tmp_path / "out"
    try:
        rc = main(["eval", "bags", str(fleet["root"]), *TOPICS, "--model", str(tiny_onnx), "--workers", "2",
                   "--slice-seconds", "1", "--quiet", "--out", str(out)])
    finally:
        killer.join()
    assert killed, "no worker was running a fleet task"
    assert rc == 1
    _check_fleet(out, fleet, reference)


@pytest.mark.xdist_group("ray")
def test_ctrl_c_stops_cluster_tasks_and_writes_nothing(tiny_onnx, ray_session, tmp_path):
    """A second process joins this Ray as a cluster (--ray ADDRESS); SIGINT while its tasks run."""
    slow = [_drive(tmp_path / "bags", f"long{i}", 120, 10 + i) for i in range(2)]
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "seg_perception.cli", "eval", "bags", *map(str, slow), *TOPICS,
                             "--model", str(tiny_onnx), "--ray", ray_session, "--quiet", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert _wait_for(_task_pids, timeout=180), "the fleet's tasks never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "no report was written" in err
    assert not out.exists() and not list(tmp_path.glob("out.partial*"))
    assert _wait_for(lambda: not _task_pids(), timeout=30), "tasks still running after Ctrl-C"
