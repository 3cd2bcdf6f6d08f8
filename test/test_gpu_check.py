"""bench/gpu_check.py on a CPU at tiny size, run the way a GPU machine runs it: the working tree alone."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

import cv2
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.py"
# Distributions this repo depends on that a lent GPU machine lacks (it has torch, numpy, onnx, onnxruntime, opencv,
# matplotlib, pyyaml): the ROS 2 wheels and these.
NOT_ON_A_GPU_MACHINE = {"rosbags", "cityscapesscripts", "fvcore", "tensorrt", "cuda-python"}
# Runs the script with those packages, and the editable install of seg_perception, out of reach: the path finder
# answers "not found" for them, as on a machine without them.
LAUNCHER = """
import runpy, sys
from importlib.machinery import PathFinder
absent = set(sys.argv[1].split(","))

class PathFinderWithout(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in absent else super().find_spec(name, path, target)

sys.meta_path = [PathFinderWithout if f is PathFinder else f for f in sys.meta_path
                 if "__editable__" not in getattr(f, "__module__", "")]
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
FAMILIES = {"metaseg", "scaseg", "segman", "mask2former"}
SIZE = (64, 128)


def absent_modules() -> set[str]:
    """Top-level modules of the distributions a GPU machine lacks."""
    names = {"rosbags", "cityscapesscripts", "fvcore", "tensorrt"}
    for dist in distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"].lower())
        if name.startswith("ros-") or name in NOT_ON_A_GPU_MACHINE:
            names.update(f.parts[0].removesuffix(".py") for f in dist.files or [] if len(f.parts) > 1
                         and f.parts[0] not in ("..", "bin") and ".dist-info" not in f.parts[0])
    return names


def run_check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    absent = absent_modules()
    assert {"rclpy", "sensor_msgs", "rosbags"} <= absent
    return subprocess.run([sys.executable, "-I", "-c", LAUNCHER, ",".join(sorted(absent)), str(SCRIPT), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=540)


@pytest.fixture(scope="module")
def cpu_check(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    proc = run_check(tmp, "--device", "cpu", "--size", "64x128", "--out", "out", "--frames", "2", "--warmup", "1",
                     "--pipeline-frames", "2", "--pipeline-size", "64x128", "--threads", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((tmp / "out" / "gpu_check.json").read_text()), tmp / "out" / "gpu_check.png"


def test_every_family_is_timed_counted_and_checked_against_onnxruntime(cpu_check):
    result, _ = cpu_check
    assert result["complete"] and result["environment"]["seg_perception"] == str(REPO / "seg_perception")
    assert result["peak"]["tflops"] > 0 and result["peak"]["used_tflops"] == result["peak"]["tflops"]
    rows = result["models"]
    assert {r["family"] for r in rows} == FAMILIES and len(rows) == len(FAMILIES)
    for row in rows:
        assert row["size"] == list(SIZE)
        fp32 = row["runs"]["fp32"]
        assert fp32["backend"] == "torch cpu fp32" and fp32["wall_ms"]["n"] == 2 and fp32["wall_ms"]["median"] > 0
        assert fp32["wall_ms"]["p99"] >= fp32["wall_ms"]["median"]
        assert fp32["device_ms"] is None and fp32["peak_memory_mib"] is None  # CUDA-only figures
        for config in ("fp16", "fp16_graph"):  # CUDA only: a skip with the backend's reason, not a failure
            assert "needs a CUDA device" in row["runs"][config]["skipped"]
        assert row["gflops"] > 0 and row["floor_ms"] == pytest.approx(row["gflops"] * 1e9 / (result["peak"]["tflops"] * 1e12) * 1e3)
        assert fp32["x_floor"] == pytest.approx(fp32["wall_ms"]["median"] / row["floor_ms"])
        # the exported graph in ONNX Runtime gives the same labels as torch on the same frames
        assert row["agreement"]["fp32_vs_onnxruntime_cpu"] >= 0.999
        assert row["agreement"]["fp16_vs_fp32"] is None and row["onnxruntime_cpu"]["frames"] == 2
    # FlopCounterMode's count of metaseg-t agrees with the zoo's fvcore count scaled to this size (2 FLOPs per MAC)
    metaseg = next(r for r in rows if r["model"] == "metaseg-t")
    zoo_gmac = 44.203 * (SIZE[0] * SIZE[1]) / (1024 * 2048)
    assert 0.75 < metaseg["gmac"] / zoo_gmac < 1.25


def test_the_node_pipeline_runs_end_to_end_and_the_png_is_drawn(cpu_check):
    result, png = cpu_check
    pipeline = result["pipeline"]
    assert pipeline["model"] == "metaseg-t" and pipeline["camera"] == [128, 256] and pipeline["frames"] == 2
    stages = pipeline["stages_ms"]
    assert {"decode", "preprocess", "inference", "postprocess", "costmap", "end_to_end"} <= set(stages)
    assert stages["end_to_end"]["p50"] >= stages["inference"]["p50"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(png))
    assert image.shape[1] >= 1000 and image.shape[0] >= 300


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_where_there_is_none_is_one_line_and_exit_2(tmp_path):
    proc = run_check(tmp_path, "--out", "out")  # the default device is cuda
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "gpu_check: device 'cuda' requested but torch" in proc.stderr
