"""Every import in the package points down the layer table (models <- backends <- core <- drivers), no driver
reaches into the ROS driver, and nothing below the drivers needs ROS: read from the source with `ast`, module-level
and function-level imports alike, so no arrow hides inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "seg_perception"

# Each top-level module or package of seg_perception and its layer; a module may import its own layer and those
# below it. Drivers (the node, replay, evaluation, deploy commands, demo, synth, train, the CLI) share the top.
LAYERS: dict[str, int] = {
    # 0, the bottom: no seg_perception imports beyond this row
    "__init__": 0, "errors": 0, "labels": 0, "classes": 0, "sizes": 0, "progress": 0, "output_files": 0,
    "pictures": 0, "bags": 0,
    "models": 1,
    "backends": 2,
    "core": 3,
    # 4, the drivers
    "ros": 4, "eval": 4, "deploy": 4, "data": 4, "demo": 4, "train": 4, "cli": 4,
}
LAYER_NAMES = {0: "bottom", 1: "models", 2: "backends", 3: "core", 4: "drivers"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def imported_modules(source: str, importer: str, is_package: bool) -> list[str]:
    """The seg_perception modules `source` imports anywhere in its body; `from pkg import mod` names mod."""
    return [name for name in all_imports(source, importer, is_package)
            if name == "seg_perception" or name.startswith("seg_perception.")]


def all_imports(source: str, importer: str, is_package: bool) -> list[str]:
    """Every module `source` imports anywhere in its body, relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importer's package
                package = importer.split(".") if is_package else importer.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found += [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names]
    return list(dict.fromkeys(found))


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in LAYERS, f"seg_perception.{top} is in no layer: add it to LAYERS in test_layering.py"
    return LAYERS[top]


def upward_arrows(importer: str, source: str, is_package: bool = False) -> list[str]:
    own = layer_of(importer)
    return [f"{importer} ({LAYER_NAMES[own]}) imports {target} ({LAYER_NAMES[layer_of(target)]})"
            for target in imported_modules(source, importer, is_package) if layer_of(target) > own]


ROS_TOOLS = {"rclpy", "rosidl_runtime_py", "rosidl_parser", "tf2_ros", "launch", "launch_ros", "message_filters",
             "ament_index_python"}


def is_ros(module: str) -> bool:
    """rclpy, ROS interface and message packages (rcl_interfaces, sensor_msgs, ...) and the ROS Python tools; not
    rosbags, which reads and writes bags without ROS."""
    top = module.split(".")[0]
    return top in ROS_TOOLS or top.endswith(("_msgs", "_interfaces"))


def ros_arrows(importer: str, source: str, is_package: bool = False) -> list[str]:
    """Imports that tie `importer` to ROS where it must not be: a module outside seg_perception.ros importing the
    ROS driver (the other drivers call the ROS-free core, as the node does), or a module below the drivers
    importing ROS at all. A driver may still need ROS itself (the demo talks DDS) and may start the node as a
    process (a module name in a string is not an import)."""
    imports = all_imports(source, importer, is_package)
    own = layer_of(importer)
    arrows = []
    if importer != "seg_perception.ros" and not importer.startswith("seg_perception.ros."):
        arrows += [f"{importer} imports the ROS driver {target}" for target in imports
                   if target == "seg_perception.ros" or target.startswith("seg_perception.ros.")]
    if own < LAYERS["ros"]:
        arrows += [f"{importer} ({LAYER_NAMES[own]}) imports {target} (ROS)" for target in imports if is_ros(target)]
    return arrows


def package_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield module_name(path), path.read_text(), path.name == "__init__.py"


def test_every_import_points_down():
    arrows = [arrow for module in package_modules() for arrow in upward_arrows(*module)]
    assert not arrows, "upward imports:\n" + "\n".join(arrows)


def test_only_the_ros_driver_needs_ros():
    arrows = [arrow for module in package_modules() for arrow in ros_arrows(*module)]
    assert not arrows, "imports of ROS outside the ROS driver:\n" + "\n".join(arrows)


def test_a_ros_import_outside_the_ros_driver_is_named():
    driver = ("import subprocess\n"
              "import rclpy\n"  # a driver may talk ROS itself
              "COMMAND = ['python', '-m', 'seg_perception.ros.node']\n"
              "def run():\n"
              "    from seg_perception.ros.node import layer_topic\n"
              "    from ..ros import params\n")
    assert ros_arrows("seg_perception.eval.example", driver) == [
        "seg_perception.eval.example imports the ROS driver seg_perception.ros.node",
        "seg_perception.eval.example imports the ROS driver seg_perception.ros.params",
    ]
    core = ("from rcl_interfaces.msg import ParameterDescriptor\n"
            "from rosbags.typesys import Stores\n"
            "def grid():\n"
            "    import nav_msgs.msg\n"
            "    from rclpy.node import Node\n")
    assert ros_arrows("seg_perception.core.example", core) == [
        "seg_perception.core.example (core) imports rcl_interfaces.msg (ROS)",
        "seg_perception.core.example (core) imports nav_msgs.msg (ROS)",
        "seg_perception.core.example (core) imports rclpy.node (ROS)",
    ]
    assert ros_arrows("seg_perception.ros.node", core + driver) == []


def test_an_upward_arrow_inside_a_function_is_named():
    source = ("from seg_perception.backends.base import Backend\n"
              "def build():\n"
              "    from seg_perception.deploy.export import export_onnx\n"
              "    from ..core import trace\n")
    assert upward_arrows("seg_perception.backends.example", source) == [
        "seg_perception.backends.example (backends) imports seg_perception.deploy.export (drivers)",
        "seg_perception.backends.example (backends) imports seg_perception.core.trace (core)",
    ]
