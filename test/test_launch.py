"""launch/seg.launch.py: always compiled; its LaunchDescription is built and evaluated where launch_ros exists
(not on PyPI, so only on a ROS 2 install)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

LAUNCH_FILE = Path(__file__).resolve().parent.parent / "launch" / "seg.launch.py"


def test_launch_file_compiles():
    compile(LAUNCH_FILE.read_text(), str(LAUNCH_FILE), "exec")


def test_launch_description_arguments_and_overrides(tmp_path):
    pytest.importorskip("launch_ros", reason="launch_ros comes with a ROS 2 install, not from PyPI")
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    from seg_perception.ros.params import PARAMETERS

    spec = importlib.util.spec_from_file_location("seg_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {e.name: e for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert {"model", "input_topic", "params_file", "namespace", "use_sim_time"} <= set(declared)
    assert {param for param, _ in module.OVERRIDES.values()} <= set(PARAMETERS)

    context = LaunchContext()
    context.launch_configurations.update(
        {name: "" for name in declared} | {"model": "/m.engine", "params_file": str(tmp_path / "p.yaml"),
                                          "namespace": "front", "use_sim_time": "true", "log_level": "info"})
    opaque = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    (node,) = opaque.execute(context)
    assert node.node_package == "seg_perception" and node.node_executable == "seg_node"
    # Empty arguments keep the params file's values.
    assert module.parameter_overrides(context) == {"model": "/m.engine", "use_sim_time": True}
