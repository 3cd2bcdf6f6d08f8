"""seg_node's topics: where it listens (image and camera_info, resolved the way image_transport resolves them) and
the QoS of its latched outputs.

Both defaults are relative names (`image_raw`, `camera_info`), so `__ns` and remaps move them like any image_pipeline
node's. A compressed stream is `<image topic>/compressed`, built after remapping, so `-r image_raw:=/cams/front/x`
also moves `image_raw/compressed`. camera_info left at its default is the image topic's sibling (`/a/b/image` ->
`/a/b/camera_info`), unless `camera_info` itself is remapped.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

# Maps and metadata: RViz's Map display, Nav2's costmap and semantic layers ask for transient local, and get
# nothing from a volatile publisher.
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)

IMAGE = "image_raw"
CAMERA_INFO = "camera_info"
COMPRESSED = "/compressed"


class InputTopics(NamedTuple):
    image: str  # fully qualified
    camera_info: str  # fully qualified; "" = none (the fx/fy/cx/cy parameters)


def sibling(topic: str, name: str = CAMERA_INFO) -> str:
    """`name` in the namespace that holds `topic` (image_transport's getCameraInfoTopic)."""
    parent, _, _ = topic.rstrip("/").rpartition("/")
    return f"{parent}/{name}" if parent or topic.startswith("/") else name


def resolve_inputs(input_topic: str, camera_info_topic: str, compressed: bool,
                   resolve: Callable[..., str]) -> InputTopics:
    """`resolve(name, only_expand=...)` is `Node.resolve_topic_name`: it expands the namespace and applies remaps."""
    base = input_topic.removesuffix(COMPRESSED) if compressed else input_topic
    image_base = resolve(base)
    image = image_base + COMPRESSED if compressed else image_base
    if not camera_info_topic:
        return InputTopics(image, "")
    if camera_info_topic == CAMERA_INFO and resolve(CAMERA_INFO) == resolve(CAMERA_INFO, only_expand=True):
        return InputTopics(image, sibling(image_base))
    return InputTopics(image, resolve(camera_info_topic))
