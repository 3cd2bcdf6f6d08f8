"""vision_msgs/LabelInfo for semantic_mask: which class each mask value stands for, as Nav2's
semantic_segmentation_layer and other consumers read it.

Published once, reliable + transient local with depth 1, so a subscriber that joins later still gets it.
vision_msgs is optional: without it the node runs and says once that there is no class metadata topic.
"""

from __future__ import annotations

from rclpy.node import Node

from seg_perception.ros.topics import LATCHED

TOPIC = "semantic_mask/label_info"


def publish_label_info(node: Node, class_names: tuple[str, ...] | list[str], create_publisher=None):
    """Publish the class map (class_id = the value in semantic_mask) on a publisher made by `create_publisher`
    (default: the node's); returns (publisher, message), or None without vision_msgs. Keep the publisher alive:
    transient-local delivery to late joiners needs it. A lifecycle publisher drops what is published while it is
    inactive: the managed node publishes the message again when it activates."""
    try:
        from vision_msgs.msg import LabelInfo, VisionClass
    except ImportError:
        node.get_logger().info(f"vision_msgs is not installed: no {TOPIC} (the class names are in the model card)")
        return None
    publisher = (create_publisher or node.create_publisher)(LabelInfo, TOPIC, LATCHED)
    msg = LabelInfo(class_map=[VisionClass(class_id=i, class_name=name) for i, name in enumerate(class_names)],
                    threshold=0.0)  # every pixel gets its arg-max class: no confidence threshold
    msg.header.stamp = node.get_clock().now().to_msg()
    publisher.publish(msg)
    return publisher, msg
