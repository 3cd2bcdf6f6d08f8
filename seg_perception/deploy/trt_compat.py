"""`seg-perception check-trt`: will TensorRT's ONNX parser take this graph? Checked on any machine, no GPU.

The op table (`trt_onnx_ops.json`) is onnx-tensorrt's docs/operators.md per TensorRT release, kept as data:
supported or not, the tensor types each op takes, and its restrictions verbatim. On top of it this module checks
what the table cannot say on its own:
  - the graph's opset is in the release's range, and every op is in the default ONNX domain (others need plugins);
  - no INT64 (or DOUBLE) graph outputs;
  - no data-dependent shapes: a shape argument (Reshape's shape, Resize's sizes/scales, Expand, Tile, Slice,
    ConstantOfShape, Range, TopK's K ...) must come from constants or from tensor *shapes*, never from tensor
    *values*; ops whose output size depends on values (NonZero, Unique, Compress, NonMaxSuppression) are
    reported too. `allow_data_dependent` turns these into warnings for graphs that declare them on purpose;
  - the restrictions whose wording names something checkable (attributes, constant inputs) for the version asked.
Restrictions it cannot check are listed as notes for the ops the graph uses.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

TABLE_FILE = Path(__file__).resolve().parent / "trt_onnx_ops.json"

# Ops whose output *size* depends on input values.
DATA_DEPENDENT_OUTPUT = {"NonZero", "Unique", "Compress", "NonMaxSuppression"}
# Inputs that set an output shape, by op: (index, what it is).
SHAPE_INPUTS: dict[str, tuple[tuple[int, str], ...]] = {
    "Reshape": ((1, "shape"),), "Expand": ((1, "shape"),), "Tile": ((1, "repeats"),),
    "Resize": ((2, "scales"), (3, "sizes")), "Upsample": ((1, "scales"),),
    "Slice": ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")), "ConstantOfShape": ((0, "shape"),),
    "Range": ((0, "start"), (1, "limit"), (2, "delta")), "TopK": ((1, "K"),), "OneHot": ((1, "depth"),),
    "Pad": ((1, "pads"),), "Split": ((1, "split"),), "Squeeze": ((1, "axes"),), "Unsqueeze": ((1, "axes"),),
}
# Restrictions of the form "`x` must be an initializer / a constant": (op prefix, input index, wording in the table).
CONSTANT_INPUT_RULES = (
    ("CumSum", 1, "`axis` must be"), ("Reduce", 1, "`axes` must be an initializer"),
    ("Squeeze", 1, "`axes` must be"), ("Unsqueeze", 1, "`axes` must be"), ("Slice", 3, "`axes` must be an initializer"),
    ("TopK", 1, "`K` input must be an initializer"), ("OneHot", 1, "`depth` must be"),
    ("Dropout", 2, "must be an initializer"),
)
# Which tensor's type the table's "Supported Types" column is about, when it is not input 0.
TYPED_TENSOR = {"Where": ("in", 1), "Constant": ("out", 0), "ConstantOfShape": ("out", 0),
                "RandomNormal": ("out", 0), "RandomUniform": ("out", 0), "EyeLike": ("out", 0)}
_BAD_OUTPUT_TYPES = {"INT64", "DOUBLE"}

# Value classes in the dependence analysis, ordered: a result is the "largest" class of its inputs.
CONST, SHAPE, DATA = 0, 1, 2


@dataclass
class Problem:
    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op} '{self.node}': {self.reason}"


@dataclass
class CompatReport:
    model: str
    trt_version: str  # the table used
    requested: str
    opset: int | None
    op_counts: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # op -> restriction text not checked mechanically

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        head = (f"{self.model}: {'OK' if self.ok else f'{len(self.problems)} problem(s)'} for TensorRT "
                f"{self.trt_version}" + (f" (asked {self.requested})" if self.requested not in
                                         ("latest", self.trt_version) else "")
                + f"; opset {self.opset}; {sum(self.op_counts.values())} nodes, {len(self.op_counts)} op types")
        lines = [head]
        lines += [f"  PROBLEM {p}" for p in self.problems]
        lines += [f"  warning {p}" for p in self.warnings]
        lines += [f"  note {op}: {text}" for op, text in sorted(self.notes.items())]
        return "\n".join(lines)


@lru_cache(maxsize=1)
def load_tables() -> dict:
    return json.loads(TABLE_FILE.read_text())["versions"]


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(".")[:2])
    except ValueError:
        raise ValueError(f"TensorRT version must look like 10.3, got '{text}'") from None


def select_version(requested: str = "latest") -> str:
    """The op table for `requested`: the newest table of the same major release not newer than it."""
    tables = sorted(load_tables(), key=_version_tuple)
    if requested in ("latest", "", None):
        return tables[-1]
    want = _version_tuple(requested)
    same_major = [v for v in tables if _version_tuple(v)[0] == want[0] and _version_tuple(v) <= want]
    if not same_major:
        raise ValueError(f"no op table for TensorRT {requested}; tables exist for {', '.join(tables)}")
    return same_major[-1]


def _type_name(elem_type: int) -> str:
    from onnx import TensorProto
    name = TensorProto.DataType.Name(elem_type)
    return {"FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "FLOAT4E2M1": "FP4"}.get(
        name, "FP8" if name.startswith("FLOAT8") else name)


def _load(model) -> tuple[object, str]:
    import onnx
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "<model>"
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path)), str(path)
    except Exception as exc:  # protobuf DecodeError: not an ONNX file
        raise ValueError(f"cannot read ONNX model {path}: {exc}") from exc


class _Checker:
    def __init__(self, proto, table: dict, allow_data_dependent: bool) -> None:
        import onnx
        from onnx import numpy_helper

        self.onnx, self.numpy_helper = onnx, numpy_helper
        self.table, self.ops = table, table["ops"]
        self.allow = allow_data_dependent
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
        g = inferred.graph
        self.types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)
                      if v.type.HasField("tensor_type")}
        self.initializers = {t.name: t for t in g.initializer}
        for t in g.initializer:
            self.types[t.name] = t.data_type
        self.klass: dict[str, int] = {name: CONST for name in self.initializers}
        self.klass.update({i.name: DATA for i in g.input if i.name not in self.initializers})
        self.constants: dict[str, object] = {}  # name -> TensorProto, for Constant node outputs
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.notes: dict[str, str] = {}
        self.counts: Counter = Counter()

    def flag(self, node, reason: str, data_dependent: bool = False) -> None:
        p = Problem(node.name or node.output[0], node.op_type, reason)
        (self.warnings if data_dependent and self.allow else self.problems).append(p)

    def value_of(self, name: str):
        """numpy value of a weight (initializer or Constant output), else None."""
        t = self.initializers.get(name) or self.constants.get(name)
        return None if t is None else self.numpy_helper.to_array(t)

    def walk(self, graph) -> None:
        for node in graph.node:
            self.counts[node.op_type] += 1
            self.check_node(node)
            for attr in node.attribute:  # If/Loop/Scan bodies
                for sub in ([attr.g] if attr.type == attr.GRAPH else list(attr.graphs)):
                    for i in sub.input:
                        self.klass[i.name] = DATA
                    self.walk(sub)

    def check_node(self, node) -> None:
        op = node.op_type
        ins = [self.klass.get(i, DATA) if i else CONST for i in node.input]
        if op == "Constant":
            out_class = CONST
            for attr in node.attribute:
                if attr.name == "value":
                    self.constants[node.output[0]] = attr.t
        elif op in ("Shape", "Size"):
            out_class = SHAPE
        else:
            out_class = max(ins, default=CONST)
        for o in node.output:
            self.klass[o] = out_class

        if node.domain not in ("", "ai.onnx"):
            self.flag(node, f"custom op in domain '{node.domain}': TensorRT needs a plugin for it")
            return
        row = self.ops.get(op)
        if row is None:
            self.flag(node, "not in TensorRT's ONNX operator table")
            return
        supported, types, restriction = row
        if not supported:
            self.flag(node, "not supported by TensorRT's ONNX parser" + (f" ({restriction})" if restriction else ""))
            return
        self.check_types(node, types)
        if op in DATA_DEPENDENT_OUTPUT:
            self.flag(node, "output size depends on tensor values (data-dependent shape)", data_dependent=True)
        for index, what in SHAPE_INPUTS.get(op, ()):
            if index < len(node.input) and node.input[index] and ins[index] == DATA:
                self.flag(node, f"{what} (input {index}, '{node.input[index]}') is computed from tensor values, "
                                "not from shapes or constants: a data-dependent shape", data_dependent=True)
        if restriction:
            self.check_restriction(node, restriction, ins)

    def check_types(self, node, supported: list[str]) -> None:
        if not supported:
            return
        side, index = TYPED_TENSOR.get(node.op_type, ("in", 0))
        names = [(node.input if side == "in" else node.output)[index:index + 1]]
        if node.op_type in ("Cast", "CastLike"):
            names.append(node.output[:1])
        allowed = set(supported)
        if self.table["int64_cast_to_int32"] and "INT32" in allowed:
            allowed.add("INT64")  # this release casts INT64 down to INT32
        if "FP32" in allowed:
            allowed.add("DOUBLE")  # "limited support": cast down to FLOAT
        for name in (n for group in names for n in group if n):
            elem = self.types.get(name)
            if elem:
                t = _type_name(elem)
                if t not in allowed:
                    hint = " (UINT8 may only be a network input/output: Cast it first)" if t == "UINT8" else ""
                    self.flag(node, f"tensor '{name}' is {t}; TensorRT supports {', '.join(supported)} here{hint}")

    def attr(self, node, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                value = self.onnx.helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def check_restriction(self, node, text: str, ins: list[int]) -> None:
        op, checked = node.op_type, False
        for prefix, index, wording in CONSTANT_INPUT_RULES:
            if op.startswith(prefix) and wording in text:
                checked = True
                name = node.input[index] if index < len(node.input) else ""
                if name and not (name in self.initializers or name in self.constants):
                    # "an initializer" means a weight; "a constant"/"resolvable" also admits folded constants.
                    if "an initializer" in text or ins[index] != CONST:
                        self.flag(node, f"input {index} ('{name}') must be a constant: {text}")
        if op == "Resize":
            checked = True
            self.check_resize(node, text)
        if "2D or 3D" in text:
            checked = True
            kernel = self.attr(node, "kernel_shape", [])
            if len(kernel) not in (2, 3):
                self.flag(node, f"{len(kernel)}D kernel: {text}")
        if "`dilations` must be empty or all ones" in text:
            checked = True
            if any(d != 1 for d in self.attr(node, "dilations", [])):
                self.flag(node, "dilations other than 1 are unsupported")
        if "`Indices` output tensor unsupported" in text or "Only the first output" in text:
            checked = True
            if any(node.output[1:]):
                self.flag(node, f"uses a second output: {text}")
        if "`sparse_value`, `value_string`" in text:
            checked = True
            used = {a.name for a in node.attribute} & {"sparse_value", "value_string", "value_strings"}
            if used:
                self.flag(node, f"attribute(s) {sorted(used)} unsupported")
        if "`sorted` must be 1" in text and self.attr(node, "sorted", 1) != 1:
            self.flag(node, "sorted=0 is unsupported")
        if op == "TopK" and "less than 3840" in text:
            checked = True
            k = self.value_of(node.input[1]) if len(node.input) > 1 else None
            if k is not None and int(k.reshape(-1)[0]) >= 3840:
                self.flag(node, f"K={int(k.reshape(-1)[0])} must be less than 3840")
        if "`reduction` other than `none`" in text and self.attr(node, "reduction", "none") != "none":
            checked = True
            self.flag(node, "reduction other than 'none' is unsupported")
        if op == "Einsum" and "Ellipsis" in text and "..." in self.attr(node, "equation", ""):
            checked = True
            self.flag(node, "ellipsis in the Einsum equation is unsupported")
        if not checked:
            self.notes[op] = text

    def check_resize(self, node, text: str) -> None:
        def allowed(label: str) -> set[str] | None:
            m = re.search(label + r"[^:]*:([^.]*)\.", text)
            return set(re.findall(r"`([a-z_]+)`", m.group(1))) if m else None

        for attr_name, label, default in (("coordinate_transformation_mode", "transformation modes", "half_pixel"),
                                          ("mode", "resize modes", "nearest"),
                                          ("nearest_mode", "nearest modes", "round_prefer_floor"),
                                          ("keep_aspect_ratio_policy", "aspect ratio policy", "stretch")):
            ok = allowed(label)
            value = self.attr(node, attr_name, default)
            if ok is not None and value not in ok and not (attr_name == "nearest_mode" and
                                                           self.attr(node, "mode", "nearest") != "nearest"):
                self.flag(node, f"{attr_name}='{value}' is unsupported (supported: {', '.join(sorted(ok))})")
        if "Antialiasing is not supported" in text and self.attr(node, "antialias", 0):
            self.flag(node, "antialias=1 is unsupported")


def check_onnx(model, trt_version: str = "latest", allow_data_dependent: bool = False) -> CompatReport:
    """Check an ONNX file (path or ModelProto) against TensorRT `trt_version`'s ONNX parser."""
    proto, label = _load(model)
    version = select_version(trt_version)
    table = load_tables()[version]
    checker = _Checker(proto, table, allow_data_dependent)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    graph_problems = []
    lo, hi = table["opset_min"], table["opset_max"]
    if opset is not None and ((lo is not None and opset < lo) or opset > hi):
        graph_problems.append(Problem("<graph>", "opset", f"opset {opset} is outside TensorRT {version}'s range "
                                                          f"{lo or 1}..{hi}"))
    for out in proto.graph.output:
        elem = out.type.tensor_type.elem_type
        if elem and _type_name(elem) in _BAD_OUTPUT_TYPES:
            graph_problems.append(Problem(out.name, "output", f"graph output is {_type_name(elem)}; cast it to "
                                                              "INT32/UINT8/FLOAT in the graph"))
    checker.walk(proto.graph)
    return CompatReport(label, version, trt_version or "latest", opset, dict(checker.counts),
                        graph_problems + checker.problems, checker.warnings, checker.notes)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", help="ONNX file to check")
    p.add_argument("--trt-version", default="latest",
                   help=f"TensorRT release to check against (tables: {', '.join(load_tables())}; default newest)")
    p.add_argument("--allow-data-dependent", action="store_true",
                   help="report data-dependent shapes as warnings, for graphs that use them on purpose")


def run(args) -> int:
    try:
        report = check_onnx(args.onnx, args.trt_version, args.allow_data_dependent)
    except (FileNotFoundError, ValueError) as exc:
        print(f"check-trt: {exc}")
        return 2
    print(report.describe())
    return 0 if report.ok else 1
