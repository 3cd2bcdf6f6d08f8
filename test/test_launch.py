"""launch/*.launch.py: always parsed; their LaunchDescriptions are built and evaluated where launch_ros exists
(not on PyPI, so only on a ROS 2 install)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

LAUNCH_DIR = Path(__file__).resolve().parent.parent / "launch"
LAUNCH_FILE = LAUNCH_DIR / "seg.launch.py"
MULTI_CAMERA = LAUNCH_DIR / "multi_camera.launch.py"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.name.split(".")[0] + "_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", [LAUNCH_FILE, MULTI_CAMERA], ids=lambda p: p.name)
def test_launch_file_parses_and_defines_its_description(path):
    tree = ast.parse(path.read_text(), str(path))
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in functions


def test_seg_launch_names_the_node_and_remaps_its_relative_inputs():
    tree = ast.parse(LAUNCH_FILE.read_text())
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert {"name", "namespace", "image_raw", "camera_info"} <= strings
    (node_call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and "package" in {k.arg for k in n.keywords}]
    assert {"name", "namespace", "remappings", "parameters"} <= {k.arg for k in node_call.keywords}


def test_seg_launch_chooses_the_managed_node_by_an_argument_and_both_executables_are_installed():
    tree = ast.parse(LAUNCH_FILE.read_text())
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert {"managed", "seg_node", "seg_lifecycle_node"} <= strings
    assert {"Node", "LifecycleNode"} <= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                                         and node.module == "launch_ros.actions" for alias in node.names}
    scripts = (LAUNCH_DIR.parent / "setup.py").read_text()
    assert "seg_lifecycle_node = seg_perception.ros.lifecycle_node:main" in scripts
    assert "seg_node = seg_perception.ros.node:main" in scripts


def test_launch_description_arguments_and_overrides(tmp_path):
    pytest.importorskip("launch_ros", reason="launch_ros comes with a ROS 2 install, not from PyPI")
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch_ros.actions import LifecycleNode

    from seg_perception.core.node_params import PARAMETERS

    module = _load(LAUNCH_FILE)
    description = module.generate_launch_description()
    declared = {e.name: e for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert {"model", "input_topic", "params_file", "namespace", "name", "image_raw", "camera_info",
            "use_sim_time", "managed"} <= set(declared)
    assert {param for param, _ in module.OVERRIDES.values()} <= set(PARAMETERS)

    context = LaunchContext()
    context.launch_configurations.update(
        {name: "" for name in declared} | {"model": "/m.engine", "params_file": str(tmp_path / "p.yaml"),
                                          "namespace": "front", "name": "seg_front", "use_sim_time": "true",
                                          "log_level": "info", "image_raw": "/cams/front/image_color",
                                          "managed": "false"})
    opaque = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    (node,) = opaque.execute(context)
    assert node.node_package == "seg_perception" and node.node_executable == "seg_node"
    context.launch_configurations["managed"] = "true"
    (managed,) = opaque.execute(context)
    assert isinstance(managed, LifecycleNode) and managed.node_executable == "seg_lifecycle_node"
    # Empty arguments keep the params file's values; only the given remap is made.
    assert module.parameter_overrides(context) == {"model": "/m.engine", "use_sim_time": True}
    assert module.remappings(context) == [("image_raw", "/cams/front/image_color")]


def test_multi_camera_launch_includes_one_node_per_camera():
    pytest.importorskip("launch_ros", reason="launch_ros comes with a ROS 2 install, not from PyPI")
    from launch import LaunchContext
    from launch.actions import GroupAction, OpaqueFunction

    module = _load(MULTI_CAMERA)
    assert module.camera_names("[front, rear]") == module.camera_names("front,/rear") == ["front", "rear"]
    with pytest.raises(ValueError):
        module.camera_names("[front, front]")
    context = LaunchContext()
    context.launch_configurations["cameras"] = "[front, rear, left]"
    opaque = next(e for e in module.generate_launch_description().entities if isinstance(e, OpaqueFunction))
    groups = opaque.execute(context)
    assert len(groups) == 3 and all(isinstance(g, GroupAction) for g in groups)
