"""One seg_node per camera, each in the camera's namespace:
`ros2 launch seg_perception multi_camera.launch.py cameras:="[front, rear]" [model:=...] [params_file:=...]`.

Camera `front` gets /front/seg_node, listening on /front/image_raw and /front/camera_info and publishing
/front/semantic_mask etc.; its /diagnostics status is "/front/seg_node: semantic segmentation". Every other
argument of seg.launch.py (model, backend, params_file, use_sim_time, log_level, ...) applies to all of them.
"""

from pathlib import Path

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

SEG_LAUNCH = str(Path(__file__).resolve().with_name("seg.launch.py"))


def camera_names(text: str) -> list[str]:
    """`[front, rear]` (a YAML list) or `front,rear`."""
    names = yaml.safe_load(text) if text.strip().startswith("[") else text.split(",")
    names = [str(name).strip().strip("/") for name in names if str(name).strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"cameras must be distinct names, e.g. \"[front, rear]\"; got {text!r}")
    return names


def _cameras(context, *args, **kwargs):
    # Scoped groups: each include's namespace stays its own.
    return [GroupAction([IncludeLaunchDescription(PythonLaunchDescriptionSource(SEG_LAUNCH),
                                                  launch_arguments={"namespace": camera}.items())])
            for camera in camera_names(LaunchConfiguration("cameras").perform(context))]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("cameras", default_value="[front]",
                              description="camera namespaces, one seg_node each: \"[front, rear]\" or front,rear"),
        OpaqueFunction(function=_cameras),
    ])
