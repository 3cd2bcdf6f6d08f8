"""seg_node's parameters on rclpy: descriptors from the ROS-free table in `seg_perception.core.node_params`, their
declaration on the node, and topic names checked by rclpy's own validator."""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.expand_topic_name import expand_topic_name
from rclpy.node import Node
from rclpy.validate_full_topic_name import validate_full_topic_name

from seg_perception.core.node_params import PARAMETERS, NodeParams, ParameterError, Spec, check

TOPIC_PARAMETERS = ("input_topic", "camera_info_topic", "depth_topic")


def descriptor(name: str, spec: Spec) -> ParameterDescriptor:
    text = spec.description + (f" (one of: {', '.join(spec.choices)})" if spec.choices else "")
    desc = ParameterDescriptor(name=name, description=text, read_only=spec.read_only)
    if spec.range is not None:
        lo, hi = spec.range
        if isinstance(spec.default, int) and not isinstance(spec.default, bool):
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return desc


def check_topic_name(name: str, value: str) -> None:
    """Raise ParameterError when a topic parameter's value is not a valid ROS topic name (as rclpy would refuse it
    when subscribing, but at start-up and naming the parameter)."""
    if not value:
        return
    try:
        validate_full_topic_name(expand_topic_name(value, "seg_node", "/"))
    except Exception as exc:  # rclpy raises ValueError or InvalidTopicNameException, with a multi-line text
        raise ParameterError(name, f"'{value}' is not a valid topic name: "
                                   f"{str(exc).splitlines()[0].split(', at /')[0]}") from None


def declare(node: Node) -> NodeParams:
    """Declare every parameter on `node` and return the validated values."""
    values = {}
    for name, spec in PARAMETERS.items():
        try:  # a managed node configured again reads the values it has (set while unconfigured)
            param = node.get_parameter(name) if node.has_parameter(name) else \
                node.declare_parameter(name, spec.default, descriptor(name, spec))
        except Exception as exc:  # rclpy raises InvalidParameterValue/TypeException with its own text
            raise ParameterError(name, str(exc)) from exc
        check(name, param.value)
        if name in TOPIC_PARAMETERS:
            check_topic_name(name, param.value)
        values[name] = param.value
    params = NodeParams(**values)
    params.costs()  # validates the entry syntax
    params.depth()
    params.backend_options()  # validates the backend options against the model
    return params
