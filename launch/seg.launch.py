"""Start seg_node: `ros2 launch seg_perception seg.launch.py [model:=...] [namespace:=front] [name:=...]
[image_raw:=/cams/front/image_color] [camera_info:=...] [managed:=true]`.

managed:=true starts seg_lifecycle_node instead: the same node, unconfigured until a lifecycle manager (e.g.
nav2_lifecycle_manager, listing the node's name) configures and activates it.

Parameters come from params_file (default: the package's config/seg.yaml); a launch argument given a non-empty
value overrides the file's value for that parameter. The node's inputs are the relative topics image_raw and
camera_info: `namespace` moves them with the outputs, `image_raw`/`camera_info` remap them elsewhere.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

# launch argument -> (node parameter it overrides, help); empty = keep the params file's value
OVERRIDES = {
    "model": ("model", "ONNX file, TensorRT engine (.engine/.plan) or zoo name (empty: params file / embedded model)"),
    "backend": ("backend", "auto, onnxruntime, tensorrt or torch"),
    "input_topic": ("input_topic", "camera topic (sensor_msgs/Image, or CompressedImage with input_type:=compressed)"),
    "input_type": ("input_type", "raw or compressed"),
    "camera_info_topic": ("camera_info_topic", "sensor_msgs/CameraInfo topic"),
}
# launch argument -> the node's relative input topic it remaps; empty = no remap
REMAPS = {
    "image_raw": "camera image topic for the node's image_raw input (e.g. /cams/front/image_color)",
    "camera_info": "CameraInfo topic for the node's camera_info input (default: the image topic's sibling)",
}


def flag(context, arg: str) -> bool:
    return LaunchConfiguration(arg).perform(context).lower() in ("true", "1")


def parameter_overrides(context) -> dict:
    """Node parameters set by launch arguments: only the non-empty ones, so the rest keep the file's values."""
    overrides = {}
    for arg, (param, _) in OVERRIDES.items():
        value = LaunchConfiguration(arg).perform(context)
        if value:
            overrides[param] = value
    overrides["use_sim_time"] = flag(context, "use_sim_time")
    return overrides


def remappings(context) -> list[tuple[str, str]]:
    return [(topic, target) for topic in REMAPS if (target := LaunchConfiguration(topic).perform(context))]


def _seg_node(context, *args, **kwargs):
    node_class, executable = (LifecycleNode, "seg_lifecycle_node") if flag(context, "managed") else (Node, "seg_node")
    return [node_class(
        package="seg_perception",
        executable=executable,
        name=LaunchConfiguration("name"),
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), parameter_overrides(context)],
        remappings=remappings(context),
        ros_arguments=["--log-level", LaunchConfiguration("log_level")],
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("seg_perception"), "config", "seg.yaml"])
    args = [DeclareLaunchArgument(name, default_value="", description=help_text)
            for name, (_, help_text) in OVERRIDES.items()]
    args += [DeclareLaunchArgument(topic, default_value="", description=help_text)
             for topic, help_text in REMAPS.items()]
    args += [
        DeclareLaunchArgument("name", default_value="seg_node", description="node name"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="seg_node parameters YAML"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace for the node and its topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (rosbag replay)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error"),
        DeclareLaunchArgument("managed", default_value="false",
                              description="start the lifecycle node (seg_lifecycle_node), for a lifecycle manager"),
    ]
    return LaunchDescription(args + [OpaqueFunction(function=_seg_node)])
