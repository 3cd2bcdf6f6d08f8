"""`seg-perception wrap` and `info`: a third-party SegFormer graph (Hugging Face, random weights) wrapped into
the contract agrees with the original's upsampled argmax; with `--logits` it outputs those upsampled scores, and
sliding-window evaluation runs on it; labels and probability outputs, channel order and layout options; graphs
it cannot wrap are refused by name."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", reason="the third-party model comes from transformers (the [test] extra)")
ort = pytest.importorskip("onnxruntime")
import torch.nn.functional as F  # noqa: E402
from third_party_models import segformer_onnx, write_classes  # noqa: E402

from seg_perception.backends.engine_build import BuildConfig, input_shapes  # noqa: E402
from seg_perception.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from seg_perception.classes import load_classes  # noqa: E402
from seg_perception.cli import main  # noqa: E402
from seg_perception.core.pipeline import SegPipeline  # noqa: E402
from seg_perception.deploy.trt_compat import check_onnx  # noqa: E402
from seg_perception.deploy.wrap import WrapError, WrapOptions, wrap_onnx  # noqa: E402
from seg_perception.eval import EvalError  # noqa: E402
from seg_perception.eval.inference import InferenceConfig, Predictor  # noqa: E402
from seg_perception.labels import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

H, W = 64, 96


@pytest.fixture(scope="module")
def segformer(tmp_path_factory):
    return segformer_onnx(tmp_path_factory.mktemp("hf") / "segformer.onnx")


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    return write_classes(tmp_path_factory.mktemp("classes") / "classes.yaml")


def scene(seed: int = 0) -> np.ndarray:
    """Smooth colour blobs: a camera-like image, not noise."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (4, 6, 3)).astype(np.uint8)
    return np.ascontiguousarray(np.asarray(
        F.interpolate(torch.from_numpy(low).permute(2, 0, 1)[None].float(), size=(H, W), mode="bilinear",
                      align_corners=False)[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)))


def original_scores(path, image: np.ndarray, channel_order: str = "rgb") -> torch.Tensor:
    """The original graph on the normalised RGB image (its channels reversed for a BGR graph), upsampled
    bilinearly to the image size (1 x K x H x W)."""
    x = (image.astype(np.float32) - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    if channel_order == "bgr":
        x = x[..., ::-1]
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    return F.interpolate(torch.from_numpy(out), size=image.shape[:2], mode="bilinear", align_corners=False)


def run_wrapped(path, image: np.ndarray):
    """labels, confidence (and logits when the graph has them), batch axis dropped."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(out[0] for out in session.run(None, {"image": image[None]}))


def test_wrapped_segformer_agrees_with_the_original(segformer, classes, tmp_path, capsys):
    out = tmp_path / "segformer_wrapped.onnx"
    assert main(["wrap", str(segformer), "--out", str(out), "--input-size", f"{H}x{W}", "--layout", "nchw",
                 "--classes", str(classes)]) == 0
    agree = []
    for seed in range(3):
        image = scene(seed)
        scores = original_scores(segformer, image)
        labels, confidence = run_wrapped(out, image)
        agree.append(float(np.mean(labels == scores.argmax(1)[0].numpy())))
        expected_conf = (torch.softmax(scores, 1).amax(1)[0] * 255).round().numpy()
        assert np.abs(confidence.astype(int) - expected_conf).max() <= 1
    assert min(agree) >= 0.999, agree
    # the backend takes it as one of our exports, with the card's classes
    with OnnxRuntimeBackend(str(out)) as backend:
        assert backend.info.class_names == ("floor", "wall", "person", "obstacle", "sky")
        assert backend.info.input_size == (H, W)
        assert np.array_equal(backend.infer(scene(0)).labels, run_wrapped(out, scene(0))[0])
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert card["family"] == "wrapped" and card["input_size"] == [H, W] and card["opset"] == 14
    assert card["classes"][2] == {"id": 2, "name": "person", "color": [220, 20, 60]}
    assert card["check_trt"]["ok"] and card["preprocessing"]["layout"] == "nchw"
    assert [o["name"] for o in card["outputs"]] == ["labels", "confidence"]
    assert card["extra"]["source_sha256"] == hashlib.sha256(segformer.read_bytes()).hexdigest()


def test_bgr_graph_gets_the_channels_reversed(segformer, classes, tmp_path):
    """Wrapped as a BGR graph, the same weights see the camera's RGB reversed."""
    out = tmp_path / "bgr.onnx"
    bgr_mean, bgr_std = IMAGENET_MEAN[::-1], IMAGENET_STD[::-1]
    wrap_onnx(segformer, out, WrapOptions((H, W), "nchw", "bgr", bgr_mean, bgr_std, classes=load_classes(str(classes))))
    image = scene(4)
    scores = original_scores(segformer, image, channel_order="bgr")  # BGR pixels, BGR mean and std
    labels, _ = run_wrapped(out, image)
    assert np.mean(labels == scores.argmax(1)[0].numpy()) >= 0.999


def test_logits_output_is_the_upsampled_scores(segformer, classes, tmp_path, capsys):
    """`--logits`: the original's logits upsampled bilinearly, NCHW float32, which labels are the argmax of;
    the card, `info`, `check-trt` and build-engine's checks take the third output as they do an export's."""
    out = tmp_path / "logits.onnx"
    assert main(["wrap", str(segformer), "--out", str(out), "--input-size", f"{H}x{W}", "--layout", "nchw",
                 "--classes", str(classes), "--logits"]) == 0
    assert "labels, confidence and logits" in capsys.readouterr().out
    for seed in (6, 7):
        image = scene(seed)
        labels, confidence, logits = run_wrapped(out, image)
        assert logits.dtype == np.float32 and logits.shape == (5, H, W)
        expected = original_scores(segformer, image)[0].numpy()  # random weights: logits of about 1e-3
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        assert np.array_equal(labels, logits.argmax(0))
        expected_conf = (torch.softmax(torch.from_numpy(logits), 0).amax(0) * 255).round().numpy()
        assert np.abs(confidence.astype(int) - expected_conf).max() <= 1
    with OnnxRuntimeBackend(str(out)) as backend:
        assert backend.info.has_logits
        assert np.array_equal(backend.infer(scene(6), want_logits=True).logits, run_wrapped(out, scene(6))[2])
    assert main(["info", str(out), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["outputs"][2] == {"name": "logits", "type": "FP32", "shape": [1, 5, H, W]}
    assert card["check_trt"]["ok"], card["check_trt"]
    assert main(["check-trt", str(out), "--trt-version", "8.6"]) == 0, capsys.readouterr().out
    info, shapes = input_shapes(out, BuildConfig())
    assert info.has_logits and shapes["image"] == [[1, H, W, 3]] * 3


@pytest.fixture(scope="module")
def cityscapes_segformers(tmp_path_factory):
    """A 19-class SegFormer wrapped with Cityscapes classes, with and without `--logits`."""
    folder = tmp_path_factory.mktemp("cityscapes")
    src = segformer_onnx(folder / "segformer19.onnx", num_labels=19)
    paths = {}
    for logits in (True, False):
        paths[logits] = folder / f"wrapped_{logits}.onnx"
        wrap_onnx(src, paths[logits], WrapOptions((H, W), "nchw", classes=load_classes("cityscapes"), logits=logits))
    return paths


def test_slide_evaluation_runs_on_a_wrapped_graph_with_logits(cityscapes_segformers):
    rgb = scene(8)
    with OnnxRuntimeBackend(str(cityscapes_segformers[True]), threads=1) as backend:
        pipeline = SegPipeline(backend, "camera")
        labels = pipeline.process(rgb).mask.copy()
        slide = Predictor(pipeline, InferenceConfig("slide"))
        assert np.mean(slide.predict(rgb) == labels) > 0.999  # one window: softmax argmax of logits = labels
        # twice as wide: windows at columns 0, 64 and 96 (2/3 stride); columns 0..63 lie in the first alone
        out = slide.predict(np.ascontiguousarray(np.concatenate([rgb, scene(9)], axis=1)))
        assert out.shape == (H, 2 * W) and out.max() < 19
        assert np.mean(out[:, :64] == labels[:, :64]) > 0.999
    with OnnxRuntimeBackend(str(cityscapes_segformers[False]), threads=1) as backend:
        with pytest.raises(EvalError, match="wrap it with --logits"):
            Predictor(SegPipeline(backend, "camera"), InferenceConfig("slide"))


def _with_tail(src, dst, op: str, **attrs):
    """The SegFormer graph with its logits turned into labels (ArgMax, mmdeploy style) or probabilities."""
    model = onnx.load(str(src))
    out = model.graph.output[0]
    tail = "labels_out" if op == "ArgMax" else "probs"
    model.graph.node.append(helper.make_node(op, [out.name], [tail], axis=1, **attrs))
    del model.graph.output[:]
    elem = TensorProto.INT64 if op == "ArgMax" else TensorProto.FLOAT
    model.graph.output.append(helper.make_tensor_value_info(tail, elem, None))
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_labels_and_probability_outputs(segformer, classes, tmp_path, kind):
    src = _with_tail(segformer, tmp_path / f"{kind}.onnx", "ArgMax" if kind == "labels" else "Softmax",
                     **({"keepdims": 1} if kind == "labels" else {}))
    out = tmp_path / f"{kind}_wrapped.onnx"
    logits = ["--logits"] if kind == "probabilities" else []
    assert main(["wrap", str(src), "--out", str(out), "--input-size", f"{H}x{W}", "--layout", "nchw",
                 "--output", kind, "--classes", str(classes), *logits]) == 0
    image = scene(5)
    labels, confidence, *log_probs = run_wrapped(out, image)
    session = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    x = (image.astype(np.float32) - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    (raw,) = session.run(None, {"pixel_values": np.ascontiguousarray(x.transpose(2, 0, 1)[None])})
    raw = torch.from_numpy(raw)
    if kind == "labels":  # 1 x 1 x h x w ids, resized nearest; no scores, so full confidence
        expected = F.interpolate(raw.float(), size=(H, W), mode="nearest")[0, 0].numpy()
        assert np.array_equal(labels, expected) and (confidence == 255).all()
    else:
        up = F.interpolate(raw, size=(H, W), mode="bilinear", align_corners=False)
        assert np.mean(labels == up.argmax(1)[0].numpy()) >= 0.999
        assert np.abs(confidence.astype(int) - (up.amax(1)[0] * 255).round().numpy()).max() <= 1
        # the logits output is log(probabilities): its softmax gives them back, normalised
        np.testing.assert_allclose(torch.softmax(torch.from_numpy(log_probs[0]), 0).numpy(),
                                   (up / up.sum(1, keepdim=True))[0].numpy(), rtol=1e-4, atol=1e-6)


def _graph(path, inputs, outputs, nodes, opset: int = 17, initializers=()):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(initializers)),
                              opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return path


# Resize's roi/scales must be present at 11; reduce axes move around; at stride 1 nothing is resized
@pytest.mark.parametrize("opset, stride", [(11, 2), (18, 1)])
def test_opsets_the_post_processing_spans(tmp_path, opset, stride):
    """A 1x1 conv classifier (NHWC input), written at the oldest and a newer opset, wrapped with logits."""
    rng = np.random.default_rng(opset)
    weight = rng.normal(size=(5, 3, 1, 1)).astype(np.float32)  # one score per class of write_classes
    f = TensorProto.FLOAT
    src = _graph(tmp_path / f"conv{opset}.onnx", [helper.make_tensor_value_info("x", f, [1, 32, 48, 3])],
                 [helper.make_tensor_value_info("y", f, [1, 5, 32 // stride, 48 // stride])],
                 [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
                  helper.make_node("Conv", ["xt", "w"], ["c"]),
                  helper.make_node("AveragePool", ["c"], ["y"], kernel_shape=[stride] * 2, strides=[stride] * 2)],
                 opset=opset, initializers=[onnx.numpy_helper.from_array(weight, "w")])
    out = tmp_path / f"conv{opset}_wrapped.onnx"
    wrap_onnx(src, out, WrapOptions(classes=load_classes(str(write_classes(tmp_path / "c.yaml"))), mean=(0, 0, 0),
                                    std=(255, 255, 255), logits=True))
    image = scene(opset)[:32, :48].copy()
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    logits = F.avg_pool2d(F.conv2d(x, torch.from_numpy(weight)), stride)
    up = F.interpolate(logits, size=(32, 48), mode="bilinear", align_corners=False)
    labels, confidence, wrapped_logits = run_wrapped(out, image)
    assert np.mean(labels == up.argmax(1)[0].numpy()) >= 0.999
    assert np.abs(confidence.astype(int) - (torch.softmax(up, 1).amax(1)[0] * 255).round().numpy()).max() <= 1
    np.testing.assert_allclose(wrapped_logits, up[0].numpy(), rtol=1e-5, atol=1e-5)


def test_graphs_it_cannot_wrap_are_refused(segformer, tmp_path, capsys):
    f = TensorProto.FLOAT
    two = _graph(tmp_path / "two.onnx", [helper.make_tensor_value_info(n, f, [1, 3, 8, 8]) for n in ("a", "b")],
                 [helper.make_tensor_value_info("y", f, [1, 3, 8, 8])], [helper.make_node("Add", ["a", "b"], ["y"])])
    classifier = _graph(tmp_path / "cls.onnx", [helper.make_tensor_value_info("x", f, [1, 3, 8, 8])],
                        [helper.make_tensor_value_info("y", f, [1, 3])],
                        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)], opset=13)
    pooled = _graph(tmp_path / "pool.onnx", [helper.make_tensor_value_info("x", f, [1, 3, 64, 64])],
                    [helper.make_tensor_value_info("y", f, [1, 3, 1, 1])],
                    [helper.make_node("GlobalAveragePool", ["x"], ["y"])])
    four = _graph(tmp_path / "four.onnx", [helper.make_tensor_value_info("x", f, [1, 4, 8, 8])],
                  [helper.make_tensor_value_info("y", f, [1, 4, 8, 8])], [helper.make_node("Relu", ["x"], ["y"])])
    cases = [
        (two, [], "2 inputs (a, b)"),
        (classifier, [], "not per-pixel logits"),
        (pooled, [], "not per-pixel logits"),
        (four, [], "cannot tell the layout"),
        (four, ["--layout", "nchw"], "4 channels on the nchw channel axis"),
        (segformer, ["--layout", "nchw"], "dynamic height or width"),
        (segformer, ["--layout", "nchw", "--input-size", f"{H}x{W}", "--classes", "cityscapes"],
         "predicts 5 classes but --classes gives 19"),
        (segformer, ["--layout", "nchw", "--input-size", f"{H}x{W}"], "no builtin set has that many"),
        (segformer, ["--layout", "nchw", "--input-size", f"{H}x{W}", "--out", str(segformer)], "never overwrites"),
        (segformer, ["--layout", "nchw", "--input-size", f"{H}x{W}", "--output", "labels", "--logits"],
         "--logits needs per-class scores"),
    ]
    for src, extra, message in cases:
        out = tmp_path / "out.onnx"
        assert main(["wrap", str(src), "--out", str(out), *extra]) == 2, message
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (message, err)
        assert not out.exists()
    with pytest.raises(WrapError, match="not float32 or float16"):
        ints = _graph(tmp_path / "ints.onnx", [helper.make_tensor_value_info("x", TensorProto.INT32, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 3, 8, 8])],
                      [helper.make_node("Relu", ["x"], ["y"])])
        wrap_onnx(ints, tmp_path / "ints_wrapped.onnx", WrapOptions())
