"""`seg-perception wrap`: a third-party semantic segmentation ONNX graph -> this package's model contract.

Pre-processing (uint8 NHWC RGB -> the graph's float input: channel order, mean/std, layout) and
post-processing (scores upsampled bilinearly to the input size before the argmax, as our exports do; or labels
resized nearest) are composed around the untouched graph in one ONNX file, with the model card in its
metadata, so that seg_node, `eval`, `check-trt` and `build-engine` take the result like one of our exports.
The post-processing runs channels-last, as `export` does, so the per-pixel reductions are contiguous. With
`logits`, the upsampled scores are also an output, back in NCHW, as `export --logits` writes them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg_perception.backends.base import ModelInfo
from seg_perception.errors import UsageError
from seg_perception.labels import IMAGENET_MEAN, IMAGENET_STD

OUTPUT_KINDS = ("logits", "probabilities", "labels")
LAYOUTS = ("nchw", "nhwc")
MIN_OPSET = 11  # Resize with sizes, Round, Clip with min/max inputs
_FLOAT_TYPES = {1: np.float32, 10: np.float16}  # ONNX TensorProto element type -> numpy
_PREFIX = "seg_perception_wrap/"  # names of every tensor and node this module adds
# log(p) of a probability output, clipped here: softmax(log p) = p / sum(p), and log(0) would be -inf.
_MIN_PROBABILITY = 1e-12


class WrapError(UsageError, ValueError):
    """A graph this tool cannot wrap, or options that do not fit it; the message says which and why."""


@dataclass
class WrapOptions:
    input_size: tuple[int, int] | None = None  # HxW; required when the graph's input is dynamic
    layout: str | None = None  # nchw | nhwc; None: read from the graph's input shape
    channel_order: str = "rgb"  # the order the graph expects; bgr reverses the camera's RGB
    mean: tuple[float, float, float] = IMAGENET_MEAN  # 0-255 units, in the graph's channel order
    std: tuple[float, float, float] = IMAGENET_STD
    output: str = "logits"  # what the graph's first output holds: logits | probabilities | labels
    classes: object = None  # a ClassSet; default: Cityscapes, or the builtin set of the graph's class count
    name: str = ""  # model name in the card; default: the file's stem
    logits: bool = False  # also output float32 1 x K x H x W scores, for sliding-window and TTA evaluation


@dataclass
class _Source:
    """The graph's one image input and its first output, as the wrapper needs them."""

    input_name: str
    input_type: int
    layout: str
    size: tuple[int, int]
    output_name: str
    output_type: int
    output_shape: tuple[int, ...]
    opset: int


def _dims(value_info) -> list:
    """Static dims as ints, the others (symbolic or unknown) as None."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _image_input(graph):
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]  # old exporters list weights as inputs
    if len(inputs) != 1:
        raise WrapError(f"the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs) or 'none'}); "
                        "wrap takes graphs with exactly one image input")
    return inputs[0]


def _layout_and_size(dims: list, options: WrapOptions, name: str) -> tuple[str, tuple[int, int]]:
    if len(dims) != 4:
        raise WrapError(f"input '{name}' has rank {len(dims)} ({dims}); an image input is 4-D (NCHW or NHWC)")
    layout = options.layout
    if layout is None:
        candidates = [lay for lay, axis in (("nchw", 1), ("nhwc", 3)) if dims[axis] == 3]
        if len(candidates) != 1:
            raise WrapError(f"cannot tell the layout of input '{name}' with shape {dims}: pass --layout nchw|nhwc")
        layout = candidates[0]
    if layout not in LAYOUTS:
        raise WrapError(f"unknown layout '{layout}': one of {', '.join(LAYOUTS)}")
    channel_axis, hw_axes = (1, (2, 3)) if layout == "nchw" else (3, (1, 2))
    if dims[channel_axis] not in (None, 3):
        raise WrapError(f"input '{name}' has shape {dims}: {dims[channel_axis]} channels on the {layout} channel "
                        "axis, not 3 (unknown layout)")
    if dims[0] not in (None, 1):
        raise WrapError(f"input '{name}' has a fixed batch of {dims[0]}; the contract runs one image at a time")
    graph_hw = tuple(dims[a] for a in hw_axes)
    if options.input_size is not None:
        fixed = [(g, o) for g, o in zip(graph_hw, options.input_size) if g is not None and g != o]
        if fixed:
            raise WrapError(f"--input-size {options.input_size[0]}x{options.input_size[1]} disagrees with input "
                            f"'{name}', fixed at {dims}")
        return layout, tuple(options.input_size)
    if None in graph_hw:
        raise WrapError(f"input '{name}' has dynamic height or width ({dims}): pass --input-size HxW")
    return layout, graph_hw


def _fix_input_shape(value_info, layout: str, size: tuple[int, int]) -> None:
    h, w = size
    for dim, value in zip(value_info.type.tensor_type.shape.dim, (1, 3, h, w) if layout == "nchw" else (1, h, w, 3)):
        dim.Clear()
        dim.dim_value = value


def _output_shape(model, output_name: str, input_name: str, input_type: int, input_shape: list) -> tuple:
    """The first output's shape at the fixed input size: from shape inference, else from one ONNX Runtime run."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        dims = _dims(next(o for o in inferred.graph.output if o.name == output_name))
        if dims and None not in dims:
            return tuple(dims)
    except Exception:  # shape inference gives up on some custom or malformed nodes: run the graph instead
        pass
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        out = session.run([output_name], {input_name: np.zeros(input_shape, _FLOAT_TYPES[input_type])})[0]
    except Exception as exc:  # onnxruntime's own error types
        raise WrapError(f"ONNX Runtime cannot run the graph at the input size: {exc}".splitlines()[0]) from None
    return tuple(out.shape)


def inspect_graph(model, options: WrapOptions) -> _Source:
    """Check the graph can be wrapped with `options`; fixes its input shape in place."""
    _check_options(options)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise WrapError(f"the graph's opset is {opset}; wrap needs {MIN_OPSET} or newer (re-export, or convert it "
                        "with onnx.version_converter)")
    image = _image_input(graph)
    input_type = image.type.tensor_type.elem_type
    if input_type not in _FLOAT_TYPES:
        raise WrapError(f"input '{image.name}' is not float32 or float16 (ONNX type {input_type}); wrap feeds "
                        "normalised float images")
    layout, size = _layout_and_size(_dims(image), options, image.name)
    _fix_input_shape(image, layout, size)
    if not graph.output:
        raise WrapError("the graph has no outputs")
    output = graph.output[0]
    shape = _output_shape(model, output.name, image.name, input_type, _dims(image))
    _check_per_pixel(output.name, shape, size, options.output)
    return _Source(image.name, input_type, layout, size, output.name, output.type.tensor_type.elem_type, shape,
                   opset)


def _check_options(options: WrapOptions) -> None:
    if options.output not in OUTPUT_KINDS:
        raise WrapError(f"--output must be one of {', '.join(OUTPUT_KINDS)}, got '{options.output}'")
    if options.channel_order not in ("rgb", "bgr"):
        raise WrapError(f"--channel-order must be rgb or bgr, got '{options.channel_order}'")
    if len(options.mean) != 3 or len(options.std) != 3 or min(options.std) <= 0:
        raise WrapError("--mean and --std take three values each (0-255 units), std > 0")
    if options.logits and options.output == "labels":
        raise WrapError("--logits needs per-class scores, and a graph whose output is labels has none: wrap a "
                        "graph that outputs logits or probabilities")


def _check_per_pixel(name: str, shape: tuple, size: tuple[int, int], kind: str) -> None:
    not_per_pixel = WrapError(f"output '{name}' has shape {list(shape)}: not per-pixel {kind} "
                              + ("(expected 1 x K x h x w)" if kind != "labels" else "(expected 1 x h x w or "
                                 "1 x 1 x h x w)"))
    if kind == "labels" and len(shape) == 3:
        shape = (shape[0], 1, *shape[1:])
    if len(shape) != 4 or shape[0] != 1 or (kind == "labels" and shape[1] != 1):
        raise not_per_pixel
    h, w = shape[2:]
    if h * w <= 1:
        raise not_per_pixel
    # a map of the image has about the same stride along both axes (1 x K x 7 x 7 pooled features do not)
    stride_h, stride_w = size[0] / h, size[1] / w
    if max(stride_h, stride_w) > 2 * min(stride_h, stride_w):
        raise WrapError(f"output '{name}' is {h}x{w} for a {size[0]}x{size[1]} input: its aspect ratio is not the "
                        "image's, so it is not a per-pixel map")


class _Builder:
    """Appends nodes and constants under this module's name prefix."""

    def __init__(self, graph, opset: int) -> None:
        self.graph, self.opset, self.count = graph, opset, 0
        self.nodes: list = []

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{_PREFIX}{hint}_{self.count}"

    def const(self, hint: str, array: np.ndarray) -> str:
        from onnx import numpy_helper
        name = self.name(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", output: str | None = None, **attrs) -> str:
        from onnx import helper
        output = output or self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self.name(op_type), **attrs))
        return output

    def empty(self) -> str:
        """An empty float tensor: Resize's roi and scales when sizes are given (opset 11 needs them present)."""
        return self.const("empty", np.zeros(0, np.float32))

    def reduce(self, op_type: str, x: str, axis: int, keepdims: int, output: str | None = None) -> str:
        """ReduceMax/ReduceSum over one axis: axes became an input in opset 13 (Sum) and 18 (Max)."""
        since = {"ReduceSum": 13, "ReduceMax": 18}[op_type]
        if self.opset >= since:
            return self.op(op_type, [x, self.const("axes", np.array([axis], np.int64))], output=output,
                           keepdims=keepdims)
        return self.op(op_type, [x], output=output, axes=[axis], keepdims=keepdims)


def _preprocess(b: _Builder, src: _Source, options: WrapOptions, graph_input: str) -> None:
    """image (uint8 1xHxWx3 RGB) -> the graph's input: channel order, (x - mean) / std, layout, dtype."""
    x = b.op("Cast", ["image"], "image_float", to=1)  # first: TensorRT lets UINT8 feed only a Cast
    if options.channel_order == "bgr":
        x = b.op("Gather", [x, b.const("bgr", np.array([2, 1, 0], np.int64))], "bgr", axis=3)
    mean = np.asarray(options.mean, np.float32).reshape(1, 1, 1, 3)
    x = b.op("Sub", [x, b.const("mean", mean)], "centred")
    inv_std = (1.0 / np.asarray(options.std, np.float64)).astype(np.float32).reshape(1, 1, 1, 3)
    x = b.op("Mul", [x, b.const("inv_std", inv_std)], "normalised")
    if src.layout == "nchw":
        x = b.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    b.op("Cast", [x], output=graph_input, to=src.input_type)


def _to_uint8(b: _Builder, x: str, output: str) -> str:
    """[0, 1] scores -> round(255 x), clipped, uint8."""
    x = b.op("Round", [b.op("Mul", [x, b.const("scale", np.array(255.0, np.float32))])])
    x = b.op("Clip", [x, b.const("lo", np.array(0.0, np.float32)), b.const("hi", np.array(255.0, np.float32))])
    return b.op("Cast", [x], output=output, to=2)


def _postprocess_scores(b: _Builder, src: _Source, graph_output: str, num_classes: int,
                        probabilities: bool, logits: bool) -> None:
    """1 x K x h x w scores -> labels and confidence at the input size, channels-last (and the scores, NCHW,
    as `logits`: log-probabilities for a graph that outputs probabilities)."""
    h, w = src.size
    scores = b.op("Cast", [graph_output], "scores_float", to=1)
    x = b.op("Transpose", [scores], "scores_nhwc", perm=[0, 2, 3, 1])
    resized = tuple(src.output_shape[2:]) != (h, w)
    if resized:
        sizes = b.const("sizes", np.array([1, h, w, num_classes], np.int64))
        x = b.op("Resize", [x, b.empty(), b.empty(), sizes], "upsampled", mode="linear",
                 coordinate_transformation_mode="half_pixel")
    if logits:  # the one upsampled tensor feeds both; at the graph's own size its NCHW scores are the logits
        nchw = b.op("Transpose", [x], "upsampled_nchw", perm=[0, 3, 1, 2]) if resized else scores
        if probabilities:
            floor = b.const("min_probability", np.array(_MIN_PROBABILITY, np.float32))
            nchw = b.op("Log", [b.op("Max", [nchw, floor])], "log_probabilities")
        b.op("Identity", [nchw], output="logits")
    b.op("Cast", [b.op("ArgMax", [x], "argmax", axis=3, keepdims=0)], output="labels", to=2)
    if probabilities:
        top = b.reduce("ReduceMax", x, axis=3, keepdims=0)
        confidence = b.op("Min", [top, b.const("one", np.array(1.0, np.float32))])  # scores may sum above 1
    else:
        # max softmax probability = 1 / sum(exp(l - max)), without a full softmax tensor
        top = b.reduce("ReduceMax", x, axis=3, keepdims=1)
        exp = b.op("Exp", [b.op("Sub", [x, top])])
        confidence = b.op("Reciprocal", [b.reduce("ReduceSum", exp, axis=3, keepdims=0)])
    _to_uint8(b, confidence, "confidence")


def _postprocess_labels(b: _Builder, src: _Source, graph_output: str) -> None:
    """1 x h x w (or 1 x 1 x h x w) label ids -> labels at the input size (nearest); confidence 255: the
    graph gives no scores."""
    h, w = src.size
    x = b.op("Cast", [graph_output], "labels_uint8", to=2)
    x = b.op("Reshape", [x, b.const("shape4", np.array([1, 1, *src.output_shape[-2:]], np.int64))])
    if tuple(src.output_shape[-2:]) != (h, w):
        x = b.op("Resize", [x, b.empty(), b.empty(), b.const("sizes", np.array([1, 1, h, w], np.int64))], "resized",
                 mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    labels = b.op("Reshape", [x, b.const("shape3", np.array([1, h, w], np.int64))], output="labels")
    full = np.full((1, 1, 1), 255, np.uint8)
    b.op("Expand", [b.const("full", full), b.op("Shape", [labels])], output="confidence")


def _rename(graph, old: str, new: str) -> None:
    """Rename value `old` everywhere in `graph` (and subgraphs, which may read outer values)."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename(sub, old, new)
    for value in list(graph.input) + list(graph.output) + list(graph.value_info) + list(graph.initializer):
        if value.name == old:
            value.name = new


def compose(model, src: _Source, options: WrapOptions, info: ModelInfo):
    """Compose pre/post-processing around `model` (an onnx ModelProto checked by `inspect_graph`, changed in
    place) and write `info` into its metadata."""
    from onnx import TensorProto, helper

    graph = model.graph
    if options.output != "labels" and src.output_shape[1] != info.num_classes:
        raise WrapError(f"output '{src.output_name}' predicts {src.output_shape[1]} classes but --classes gives "
                        f"{info.num_classes}: pass the graph's own classes")
    # Our names may already be taken inside the graph ('image' is a common input name): move theirs aside.
    graph_input, graph_output = _PREFIX + "graph_input", _PREFIX + "graph_output"
    _rename(graph, src.output_name, graph_output)
    _rename(graph, src.input_name, graph_input)
    for name in ("image", "labels", "confidence", "logits"):
        _rename(graph, name, _PREFIX + "graph_" + name)
    b = _Builder(graph, src.opset)
    _preprocess(b, src, options, graph_input)
    pre = list(b.nodes)
    b.nodes.clear()
    if options.output == "labels":
        _postprocess_labels(b, src, graph_output)
    else:
        _postprocess_scores(b, src, graph_output, info.num_classes, options.output == "probabilities",
                            options.logits)
    nodes = pre + list(graph.node) + b.nodes
    del graph.node[:]
    graph.node.extend(nodes)
    h, w = src.size
    del graph.input[:]  # weights stay initializers; only the image is an input now
    graph.input.append(helper.make_tensor_value_info("image", TensorProto.UINT8, [1, h, w, 3]))
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(n, TensorProto.UINT8, [1, h, w]) for n in ("labels",
                                                                                                 "confidence"))
    if options.logits:
        graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, info.num_classes, h, w]))
    info.input_size = (h, w)
    info.has_logits = options.logits
    info.extra = {**info.extra, "opset": src.opset, "dynamic": False, "layout": src.layout,
                  "channel_order": options.channel_order, "graph_output": options.output}
    for key, value in info.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def wrap_onnx(source: str | Path, out: str | Path, options: WrapOptions) -> ModelInfo:
    """Wrap the graph in `source` and write it to `out` (never over an existing file); returns its card."""
    import onnx

    from seg_perception.backends.engine_cache import sha256_file
    from seg_perception.classes import builtin, default_for

    source, out = Path(source), Path(out)
    if not source.is_file():
        raise WrapError(f"ONNX file not found: {source}")
    if out.exists():
        raise WrapError(f"{out} exists; wrap never overwrites a file: choose another --out or remove it")
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX model
        raise WrapError(f"cannot read ONNX model {source}: {exc}".splitlines()[0]) from None
    src = inspect_graph(model, options)
    classes = options.classes
    if classes is None:  # the documented default, or the builtin set that fits the graph's class count
        classes = builtin("cityscapes") if options.output == "labels" else default_for(src.output_shape[1])
    info = ModelInfo(name=options.name or source.stem, variant="wrapped", class_names=classes.names,
                     palette=classes.palette, mean=tuple(options.mean), std=tuple(options.std),
                     extra={"source": source.name, "source_sha256": sha256_file(source)})
    compose(model, src, options, info)
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return info


def _three(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers such as 123.675,116.28,103.53, got '{text}'")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    from seg_perception.deploy.export import add_classes_argument
    from seg_perception.sizes import parse_hw

    p.add_argument("onnx", help="a semantic segmentation ONNX graph (mmdeploy, Hugging Face, torchvision-style)")
    p.add_argument("--out", required=True, help="the wrapped .onnx to write (never overwritten)")
    p.add_argument("--input-size", type=parse_hw, default=None, help="HxW; required when the input is dynamic")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="the graph's input layout (default: from its "
                                                                     "shape, where a 3 marks the channel axis)")
    p.add_argument("--channel-order", choices=("rgb", "bgr"), default="rgb", help="channel order the graph expects")
    p.add_argument("--mean", type=_three, default=IMAGENET_MEAN, help="three values, 0-255 units, in the graph's "
                                                                      "channel order (default: ImageNet)")
    p.add_argument("--std", type=_three, default=IMAGENET_STD, help="three values, 0-255 units (default: ImageNet)")
    p.add_argument("--output", choices=OUTPUT_KINDS, default="logits",
                   help="what the graph's first output holds, 1 x K x h x w scores or 1 x h x w label ids; scores "
                        "are upsampled bilinearly to the input before the argmax")
    add_classes_argument(p)
    p.add_argument("--name", default="", help="model name in the card (default: the file's stem)")
    p.add_argument("--logits", action="store_true",
                   help="also output the upsampled scores as float32 logits 1 x K x H x W (log-probabilities for "
                        "--output probabilities), which sliding-window and TTA evaluation need; not with --output "
                        "labels")


def run(args) -> int:
    from seg_perception.classes import load_classes

    classes = load_classes(args.classes) if args.classes else None
    options = WrapOptions(args.input_size, args.layout, args.channel_order, args.mean, args.std, args.output,
                          classes, args.name, args.logits)
    info = wrap_onnx(args.onnx, args.out, options)
    h, w = info.input_size
    print(f"wrote {args.out}: {info.name}, input {h}x{w} uint8 RGB, {info.num_classes} classes, "
          f"labels{', confidence and logits' if info.has_logits else ' and confidence'} at the input size")
    return 0
