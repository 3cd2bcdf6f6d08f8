"""Bring your own model, through seg_node on a real DDS domain: a Hugging Face SegFormer wrapped with our own
classes, and an official-format (mmseg) checkpoint exported with `export --checkpoint`. Each node's mask is
the model's own labels for the frame (ONNX Runtime in this process), and its colour image uses the card's
palette."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("rclpy")
pytest.importorskip("transformers", reason="the third-party model comes from transformers (the [test] extra)")
from sensor_msgs.msg import Image  # noqa: E402
from test_node_dds import image_msg, peer, serve_until_ready, start_node  # noqa: E402,F401 (fixtures)
from third_party_models import segformer_onnx, write_classes  # noqa: E402

from seg_perception.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from seg_perception.backends.torch_backend import TorchBackend  # noqa: E402
from seg_perception.cli import main  # noqa: E402
from seg_perception.models.checkpoint import read_fixture  # noqa: E402
from seg_perception.models.registry import build_model  # noqa: E402
from seg_perception.models.zoo import COUNTS_FILE  # noqa: E402

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def wrapped_segformer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("byom")
    out = folder / "segformer_64x96.onnx"
    assert main(["wrap", str(segformer_onnx(folder / "segformer.onnx")), "--out", str(out), "--input-size",
                 "64x96", "--layout", "nchw", "--classes", str(write_classes(folder / "classes.yaml"))]) == 0
    return out


@pytest.fixture(scope="module")
def official_export(tmp_path_factory):
    """metaseg-t from an mmseg training checkpoint (meta, state_dict with an auxiliary head) via export."""
    folder = tmp_path_factory.mktemp("official")
    torch.manual_seed(3)
    state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v  # not the weights export starts from
             for k, v in build_model("metaseg-t").state_dict().items()}
    assert list(state) == list(read_fixture(COUNTS_FILE.parent / "metaseg-t.json"))  # the official key names
    state["auxiliary_head.conv_seg.weight"] = torch.zeros(19, 64, 1, 1)
    ckpt = folder / "metaseg_t_city_160k.pth"
    torch.save({"meta": {"mmcv_version": "1.7.0", "CLASSES": ("road",)}, "state_dict": state}, ckpt)
    out = folder / "metaseg-t_64x128.onnx"
    assert main(["export", "metaseg-t", "--checkpoint", str(ckpt), "--input-size", "64x128", "--out", str(out)]) == 0
    # the export carries the checkpoint's weights: it labels a frame as torch does with them loaded
    frame = scene(64, 128)
    with OnnxRuntimeBackend(str(out), threads=1) as ort_backend, \
            TorchBackend.from_zoo(f"metaseg-t:{ckpt}", input_size=(64, 128)) as torch_backend:
        assert np.mean(ort_backend.infer(frame).labels == torch_backend.infer(frame).labels) >= 0.999
    return out


def scene(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) % 256], axis=-1)
    return np.ascontiguousarray(rgb.astype(np.uint8))


@pytest.mark.parametrize("which, costs", [
    # the class-name parameters in use name the model's classes (ground_classes only matters with depth_topic)
    ("wrapped_segformer", dict(cost_table=["floor:0", "person:100"], costmap_classes=["floor", "obstacle"])),
    ("official_export", {}),
])
def test_seg_node_serves_the_users_model(request, which, costs, peer, start_node):
    model = request.getfixturevalue(which)
    with OnnxRuntimeBackend(str(model), threads=1) as backend:
        info = backend.info
        frame = scene(*info.input_size)
        expected = backend.infer(frame).labels.copy()
    node = start_node(dict(model=str(model), threads=1, camera_info_topic="", output_resolution="model",
                           warmup_frames=1, **costs))
    for topic in ("/semantic_mask", "/semantic_mask/color"):
        peer.subscribe(Image, topic)
    pub = peer.publisher(Image, "/image_raw")  # the node's relative default, in no namespace
    serve_until_ready(peer, pub, lambda s: image_msg(frame, s), timeout=120.0)
    stamp = peer.now()
    pub.publish(image_msg(frame, stamp))
    mask, color = (peer.find(t, stamp) for t in ("/semantic_mask", "/semantic_mask/color"))
    labels = np.frombuffer(mask.data, np.uint8).reshape(info.input_size)
    assert np.array_equal(labels, expected)
    assert len(np.unique(labels)) > 1  # a real map of the frame, not a constant
    colors = np.frombuffer(color.data, np.uint8).reshape(*info.input_size, 3)
    assert np.array_equal(colors, np.asarray(info.palette, np.uint8)[labels])
    assert f"model '{info.name}'" in node.output()
