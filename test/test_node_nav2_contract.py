"""seg_node feeds Nav2's semantic_segmentation_layer: started with config/nav2_semantic_layer.yaml in the camera's
namespace, as a real process on a real DDS domain, its mask, confidence and cloud meet what the layer's code checks
before it buffers a frame, and its LabelInfo reaches a late subscriber with the layer's QoS.

What the layer checks (ros-navigation/semantic_segmentation_layer@b269885, src/semantic_segmentation_layer.cpp and
src/segmentation_buffer.cpp): mask, confidence and cloud are synchronised by header stamp (sensor-data QoS); a frame
is dropped unless the cloud's width x height equals the mask's; the cloud is moved into the costmap frame with TF
from its frame_id and read as float32 `x`, `y`, `z` point by point in the mask's row-major pixel order, skipping
points whose z is not finite; mask and confidence bytes are indexed v * width + u; LabelInfo (reliable + transient
local, depth 5) maps each class_id to the class name `class_types` list. The layer itself (C++, Nav2) is not run.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField  # noqa: E402
from test_node_depth_dds import depth_image  # noqa: E402
from test_node_dds import half_road_onnx, image_msg, peer, start_node  # noqa: E402,F401
from test_node_graph_dds import late_label_info  # noqa: E402

from ros_interfaces import built_interfaces, interfaces_env  # noqa: E402
from seg_perception.core.node_params import PARAMETERS, check  # noqa: E402
from seg_perception.data.synthetic import Camera, render_street, staged_street  # noqa: E402
from seg_perception.deploy.model_card import model_card  # noqa: E402
from seg_perception.labels import CITYSCAPES_CLASSES  # noqa: E402
from seg_perception.ros.label_info import TOPIC as LABEL_INFO_TOPIC  # noqa: E402

pytestmark = pytest.mark.timeout(240)

CONFIG = Path(__file__).resolve().parents[1] / "config" / "nav2_semantic_layer.yaml"
PLUGIN = "semantic_segmentation_layer::SemanticSegmentationLayer"
NAMESPACE = "/front"
H, W = 96, 192  # camera
MODEL_HW = (40, 72)  # not a whole fraction of the camera: the mask is upsampled, the cloud must follow it

# The parameters the layer declares in onInitialize (b269885), with the type of each default: a key it does not
# declare is silently unused, a value of another type stops the costmap node. `plugin` is Nav2's own.
LAYER_KEYS = {"plugin": str, "enabled": bool, "combination_method": int, "observation_sources": str,
              "publish_debug_topics": bool, "use_approximate_time_sync": bool, "sensor_data_depth": int}
SOURCE_KEYS = {"segmentation_topic": str, "confidence_topic": str, "labels_topic": str, "pointcloud_topic": str,
               "observation_persistence": float, "expected_update_rate": float, "class_types": list,
               "max_obstacle_distance": float, "min_obstacle_distance": float, "tile_map_decay_time": float,
               "visualize_tile_map": bool, "use_cost_selection": bool, "camera_horizontal_fov": float,
               "camera_vertical_fov": float, "fov_decay_time": float, "outside_fov_decay_time": float,
               "visualize_frustum_fov": bool}
CLASS_TYPE_KEYS = {"classes": list, "base_cost": int, "max_cost": int, "mark_confidence": int,
                   "samples_to_max_cost": int, "dominant_priority": bool}


def config() -> tuple[dict, dict]:
    """(the layer's section, seg_node's overrides) of config/nav2_semantic_layer.yaml."""
    doc = yaml.safe_load(CONFIG.read_text())
    costmap = doc["local_costmap"]["local_costmap"]["ros__parameters"]
    (layer,) = [v for v in costmap.values() if isinstance(v, dict) and v.get("plugin") == PLUGIN]
    return layer, doc["/**/seg_node"]["ros__parameters"]


def assert_typed_keys(section: dict, keys: dict, where: str) -> None:
    for key, value in section.items():
        assert key in keys, f"{where}.{key}: the layer declares no such parameter"
        assert type(value) is keys[key], f"{where}.{key}: {value!r} is not {keys[key].__name__}"


def test_config_uses_only_the_layers_parameters_and_seg_nodes_topics_and_classes():
    layer, seg_node = config()
    sources = layer["observation_sources"].split()
    assert_typed_keys({k: v for k, v in layer.items() if k not in sources}, LAYER_KEYS, "layer")
    for source in sources:
        section = layer[source]
        types = section["class_types"]
        assert_typed_keys({k: v for k, v in section.items() if k not in types}, SOURCE_KEYS, source)
        assert {k: section[k] for k in ("segmentation_topic", "confidence_topic", "labels_topic",
                                        "pointcloud_topic")} == {
            "segmentation_topic": f"{NAMESPACE}/semantic_mask",
            "confidence_topic": f"{NAMESPACE}/semantic_mask/confidence",
            "labels_topic": f"{NAMESPACE}/{LABEL_INFO_TOPIC}", "pointcloud_topic": f"{NAMESPACE}/semantic_points"}
        for class_type in types:
            assert_typed_keys(section[class_type], CLASS_TYPE_KEYS, f"{source}.{class_type}")
            unknown = set(section[class_type]["classes"]) - set(CITYSCAPES_CLASSES)
            assert not unknown, f"{class_type}: {unknown} are not seg_node's class names (the layer ignores them)"
            assert all(0 <= section[class_type][k] <= 254 for k in ("base_cost", "max_cost"))  # 255 = unknown
    for name, value in seg_node.items():
        assert name in PARAMETERS, f"seg_node has no parameter '{name}'"
        check(name, value)
    assert (seg_node["points_stride"], seg_node["points_organized"]) == (1, True)


def synced(peer, pub, make_msg, topics: list[str], timeout: float = 60.0) -> list:
    """Publish frames until one input stamp has arrived on every topic (what an exact-time synchroniser pairs);
    returns those messages, in `topics` order."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamp = peer.now()
        pub.publish(make_msg(stamp))
        wait = time.monotonic() + 1.0
        while time.monotonic() < wait:
            found = [next((m for m in peer.messages(t) if m.header.stamp == stamp), None) for t in topics]
            if all(m is not None for m in found):
                return found
            time.sleep(0.02)
    raise AssertionError(f"no input stamp reached all of {topics} within {timeout} s")


@pytest.mark.parametrize("resolution", ["camera", "model"])
def test_seg_node_meets_the_semantic_layers_contract(resolution, peer, start_node, ros_env, tmp_path):
    frame = render_street(staged_street([("car", 0.0, 8.05), ("person", -1.8, 6.05)]), H, W)
    labels = cv2.resize(frame.train_ids, MODEL_HW[::-1], interpolation=cv2.INTER_NEAREST)
    model = half_road_onnx(tmp_path / "street.onnx", MODEL_HW, labels=labels)
    layer, seg_node = config()
    source = layer[layer["observation_sources"].split()[0]]
    env = interfaces_env(ros_env, built_interfaces("vision_msgs"))
    node = start_node(dict(model=str(model), threads=1, output_resolution=resolution), env=env,
                      ros_args=("--params-file", str(CONFIG), "-r", f"__ns:={NAMESPACE}"))

    # Nav2's SensorDataQoS(sensor_data_depth): best effort, volatile.
    sensor_qos = QoSProfile(depth=layer["sensor_data_depth"], reliability=ReliabilityPolicy.BEST_EFFORT,
                            durability=DurabilityPolicy.VOLATILE)
    topics = [source["segmentation_topic"], source["confidence_topic"], source["pointcloud_topic"]]
    for topic, msg_type in zip(topics, (Image, Image, PointCloud2)):
        peer.subscribe(msg_type, topic, sensor_qos)
    pub = peer.publisher(Image, f"{NAMESPACE}/image_raw")
    depth_pub = peer.publisher(Image, f"{NAMESPACE}/{seg_node['depth_topic']}")
    info_pub = peer.publisher(CameraInfo, f"{NAMESPACE}/camera_info")
    cam_info = CameraInfo(height=H, width=W)
    cam_info.k = Camera.for_image(H, W).pinhole().k().ravel().tolist()

    def frame_msg(stamp):
        info_pub.publish(cam_info)
        depth_pub.publish(depth_image(frame.depth, stamp))
        return image_msg(frame.rgb, stamp)

    mask, conf, cloud = synced(peer, pub, frame_msg, topics)
    assert mask.header == conf.header == cloud.header and mask.header.frame_id == "camera_optical"
    h, w = (H, W) if resolution == "camera" else MODEL_HW
    for image in (mask, conf):
        assert (image.encoding, image.height, image.width, image.step, len(image.data)) == ("mono8", h, w, w, h * w)
    # Organised and pixel-aligned: one point per mask pixel, in the mask's order, nothing between rows.
    assert (cloud.height, cloud.width) == (h, w)
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields[:3]] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1)]
    assert not cloud.is_bigendian and cloud.row_step == w * cloud.point_step
    assert len(cloud.data) == h * cloud.row_step
    label_field = next(f for f in cloud.fields if f.name == "label")
    raw = np.frombuffer(bytes(cloud.data), np.uint8).reshape(h, w, cloud.point_step)
    z = raw[..., 8:12].copy().view("<f4")[..., 0]
    cloud_labels = raw[..., label_field.offset]
    mask_px = np.frombuffer(bytes(mask.data), np.uint8).reshape(h, w)
    assert np.array_equal(mask_px, cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST))

    returned = np.isfinite(z)  # no return is NaN: the layer skips it
    assert np.array_equal(cloud_labels[returned], mask_px[returned])  # the layer's class for each placed point
    assert {CITYSCAPES_CLASSES.index(c) for c in ("road", "car", "person")} <= set(mask_px[returned].tolist())
    if resolution == "camera":  # each point at its own pixel's depth (the depth image is the camera's size)
        mm = np.round(frame.depth * 1000)
        assert np.array_equal(returned, (mm > 0) & (mm <= 65535))
        np.testing.assert_allclose(z[returned], (mm[returned] / 1000).astype(np.float32), rtol=1e-6)

    # LabelInfo, subscribed as the layer does and after the node published it.
    class_map = late_label_info(env, source["labels_topic"], depth=5)  # its LatchedSubscriptionQoS(5)
    assert class_map == [[c["id"], c["name"]] for c in model_card(model)["classes"]]
    names = {name for _, name in class_map}
    for class_type in source["class_types"]:
        assert set(source[class_type]["classes"]) <= names
    assert node.proc.poll() is None
