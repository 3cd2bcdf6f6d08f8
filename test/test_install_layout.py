"""The install layout is real: pip and colcon both put the package where ROS 2 tooling looks for it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _tracked_copy(dest: Path) -> Path:
    """The files a clean clone has (tracked + untracked-not-ignored), nothing built."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _share_dir(prefix: Path) -> str:
    code = ("from ament_index_python.packages import get_package_share_directory as g;"
            "print(g('seg_perception'))")
    env = dict(os.environ, AMENT_PREFIX_PATH=str(prefix))
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_pip_install_registers_package_with_ament_index(tmp_path):
    src = _tracked_copy(tmp_path / "src")
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it pip uninstalls the environment's own (editable) copy first.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--ignore-installed", "--prefix", str(prefix), str(src)], check=True, capture_output=True)
    share = Path(_share_dir(prefix))
    assert share == prefix / "share" / "seg_perception"
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "seg.launch.py").is_file()
    assert (share / "config" / "seg.yaml").is_file()
    assert (share / "config" / "fastdds_shm.xml").is_file()
    for viewer in ("seg.rviz", "foxglove_layout.json"):
        assert (share / "config" / viewer).is_file()
    assert (share / "launch" / "multi_camera.launch.py").is_file()


def test_colcon_build_installs_ros_run_layout(tmp_path):
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment (pip install colcon-common-extensions)")
    ws = tmp_path / "ws"
    _tracked_copy(ws / "src" / "seg_perception")
    proc = subprocess.run([str(colcon), "build", "--event-handlers", "console_direct-"], cwd=ws,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prefix = ws / "install" / "seg_perception"
    # `ros2 run seg_perception seg_node` looks in lib/<package>/.
    assert (prefix / "lib" / "seg_perception" / "seg_node").is_file()
    assert (prefix / "lib" / "seg_perception" / "seg-perception").is_file()
    share = Path(_share_dir(prefix))
    assert (share / "launch" / "seg.launch.py").is_file()
    assert (share / "config" / "seg.yaml").is_file()
    assert (ws / "install" / "setup.bash").is_file()


# Python imports -> rosdep keys (ros/rosdistro rosdep/python.yaml; onnx and cityscapesscripts have none).
ROSDEP_KEYS = {"numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml",
               "onnxruntime": "python3-onnxruntime-pip", "rosbags": "python3-rosbags-pip",
               "matplotlib": "python3-matplotlib", "tqdm": "python3-tqdm", "tf2_ros": "tf2_ros_py"}


def test_package_xml_declares_what_the_node_and_launch_files_import():
    import ast
    import xml.etree.ElementTree as ET

    declared = {e.text for e in ET.parse(REPO / "package.xml").getroot() if e.tag == "exec_depend"}
    imported = set()
    for path in [*(REPO / "seg_perception").rglob("*.py"), *(REPO / "launch").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    ros = {m for m in imported if m.endswith(("_msgs", "_interfaces")) or m in ("rclpy", "launch", "launch_ros")}
    needed = ros | {ROSDEP_KEYS[m] for m in imported if m in ROSDEP_KEYS}
    assert {"vision_msgs", "tf2_ros_py", "rcl_interfaces", "builtin_interfaces"} <= needed
    assert needed - declared == set()
