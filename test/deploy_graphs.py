"""Tiny hand-made ONNX graphs that follow the export contract (uint8 NHWC in; labels, confidence out), with
seg-perception metadata: real files for backend and build tests, built in milliseconds without torch."""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto, helper, save

from seg_perception.backends.base import ModelInfo


def contract_onnx(path: Path, size: tuple[int, int] = (8, 16), dynamic: bool = False, metadata: bool = True,
                  outputs: tuple[str, ...] = ("labels", "confidence")) -> Path:
    """labels = argmax over RGB, confidence = max channel value: a 3-class 'model' whose answers are checkable."""
    h, w = ("height", "width") if dynamic else size
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ArgMax", ["x"], ["am"], axis=3, keepdims=0),
             helper.make_node("Cast", ["am"], ["labels"], to=TensorProto.UINT8),
             helper.make_node("ReduceMax", ["x"], ["mx"], axes=[3], keepdims=0),
             helper.make_node("Cast", ["mx"], ["confidence"], to=TensorProto.UINT8)]
    outs = [helper.make_tensor_value_info(n, TensorProto.UINT8, [1, h, w]) for n in outputs]
    graph = helper.make_graph(nodes, "contract", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                                                 [1, h, w, 3])], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        info = ModelInfo(name="contract", input_size=size, class_names=("r", "g", "b"),
                         palette=((255, 0, 0), (0, 255, 0), (0, 0, 255)))
        for key, value in info.to_metadata().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    save(model, str(path))
    return path
