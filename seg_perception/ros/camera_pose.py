"""The camera pose in costmap_frame, per frame: from TF (the transform to the image's frame_id at the image's stamp)
or from the camera_* parameters, as `camera_pose_source` chooses.

The image's frame is an optical frame (REP 103: x right, y down, z forward), as camera drivers stamp their images.
tf2_ros comes with a ROS 2 install and has no wheel; without it `auto` uses the parameters and `tf` refuses to start.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Quaternion, Transform
from rclpy.node import Node

from seg_perception.core.costmap import BODY_FROM_OPTICAL, CameraPose
from seg_perception.core.node_params import ParameterError

Lookup = Callable[[str, Time], Transform]  # (image frame_id, image stamp) -> costmap_frame <- image frame


def rotation_from_quaternion(q: Quaternion) -> np.ndarray:
    x, y, z, w = q.x, q.y, q.z, q.w
    n = x * x + y * y + z * z + w * w
    if n < 1e-12:
        raise ValueError("zero quaternion")
    s = 2.0 / n
    return np.array([
        [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
        [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
        [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)],
    ])


def pose_from_transform(transform: Transform) -> CameraPose:
    """CameraPose of an optical frame whose pose in the costmap frame is `transform` (what TF's
    lookup_transform(costmap_frame, optical_frame) returns). Height is z above the costmap frame's z = 0 plane."""
    body = rotation_from_quaternion(transform.rotation) @ BODY_FROM_OPTICAL.T  # costmap <- camera body frame
    # body = Rz(yaw) Ry(pitch) Rx(roll), CameraPose's convention.
    pitch = math.asin(max(-1.0, min(1.0, -body[2, 0])))
    yaw = math.atan2(body[1, 0], body[0, 0])
    roll = math.atan2(body[2, 1], body[2, 2])
    t = transform.translation
    return CameraPose(x=t.x, y=t.y, height=t.z, roll=roll, pitch=pitch, yaw=yaw)


class CameraPoseSource:
    """The pose to project one frame with. `lookup` raises LookupError when the transform is unknown; then `tf`
    gives None (no costmap rather than one drawn from a wrong pose), and so does `auto` for a frame TF has
    answered before (a late transform on a TF robot); `auto` falls back to the parameters only for a frame
    that TF has never placed."""

    def __init__(self, mode: str, parameter_pose: CameraPose, lookup: Lookup | None = None) -> None:
        self.mode = mode
        self.parameter_pose = parameter_pose  # replaced when camera_* parameters change at run time
        self.uses_tf = lookup is not None
        self.last_problem = ""
        self._lookup = lookup
        self._placed_by_tf: set[str] = set()
        self.listener = None  # tf2_ros' TransformListener behind `lookup`: its /tf subscriptions live on the node

    def close(self) -> None:
        """Drop the /tf and /tf_static subscriptions, so that configuring the node again does not add more."""
        if self.listener is not None:
            self.listener.unregister()
            self.listener = None

    def pose(self, frame_id: str, stamp: Time) -> CameraPose | None:
        if self._lookup is None:
            return self.parameter_pose
        try:
            pose = pose_from_transform(self._lookup(frame_id, stamp))
            self.last_problem = ""
            self._placed_by_tf.add(frame_id)
            return pose
        except LookupError as exc:
            self.last_problem = str(exc)
            fall_back = self.mode == "auto" and frame_id not in self._placed_by_tf
            return self.parameter_pose if fall_back else None


def open_pose_source(node: Node, mode: str, costmap_frame: str, timeout_s: float,
                     parameter_pose: CameraPose) -> CameraPoseSource:
    if mode == "parameters":
        return CameraPoseSource(mode, parameter_pose)
    try:
        import tf2_ros
    except ImportError:
        if mode == "tf":
            raise ParameterError("camera_pose_source", "'tf' needs tf2_ros, which is not installed") from None
        node.get_logger().info("tf2_ros is not installed: the camera pose comes from the camera_* parameters")
        return CameraPoseSource(mode, parameter_pose)
    from rclpy.duration import Duration
    from rclpy.time import Time as RclTime

    buffer = tf2_ros.Buffer()
    listener = tf2_ros.TransformListener(buffer, node)
    timeout = Duration(seconds=timeout_s)

    def lookup(frame_id: str, stamp: Time) -> Transform:
        at = RclTime.from_msg(stamp)
        try:
            # Wait for a moving transform to reach this stamp only when the frames are connected at all.
            if not buffer.can_transform(costmap_frame, frame_id, at) and \
                    not buffer.can_transform(costmap_frame, frame_id, RclTime()):
                raise LookupError(f"no transform from '{frame_id}' to '{costmap_frame}'")
            return buffer.lookup_transform(costmap_frame, frame_id, at, timeout).transform
        except tf2_ros.TransformException as exc:
            raise LookupError(f"no transform from '{frame_id}' to '{costmap_frame}' at the image stamp: "
                              f"{exc}") from None

    source = CameraPoseSource(mode, parameter_pose, lookup)
    source.listener = listener
    return source
