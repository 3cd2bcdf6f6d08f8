"""`seg-perception info MODEL [--json]`: what a model file is, read from the file itself.

Name, family, input size, classes with colours, preprocessing, outputs, sha256, opset and whether TensorRT's ONNX
parser would take it (`check-trt`'s newest table): everything a user needs before pointing seg_node at it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from seg_perception.backends.base import ModelInfo
from seg_perception.errors import UsageError


def model_card(path: str | Path, trt_version: str = "latest") -> dict:
    """The card of an ONNX file written by `export` or `wrap`, as plain data."""
    import onnx

    from seg_perception.backends.engine_cache import sha256_file
    from seg_perception.deploy.trt_compat import _type_name, check_onnx

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model file not found: {path}")
    if path.suffix != ".onnx":
        raise UsageError(f"{path}: info reads ONNX files (an engine's card is the ONNX file it was built from)")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX model
        raise UsageError(f"cannot read ONNX model {path}: {exc}".splitlines()[0]) from None
    try:
        info = ModelInfo.from_metadata({p.key: p.value for p in proto.metadata_props})
    except ValueError:
        raise UsageError(f"{path} has no seg-perception model card: make one with `seg-perception wrap` "
                         "(a third-party graph) or `seg-perception export` (a zoo model)") from None

    def tensors(values) -> list[dict]:
        return [{"name": v.name, "type": _type_name(v.type.tensor_type.elem_type),
                 "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param
                           for d in v.type.tensor_type.shape.dim]} for v in values]

    trt = check_onnx(proto, trt_version)
    extra = {k: v for k, v in info.extra.items() if k != "opset"}  # the graph's own opset is shown instead
    return {
        "file": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path),
        "name": info.name, "family": info.variant, "input_size": list(info.input_size),
        "classes": [{"id": i, "name": n, "color": list(c)} for i, (n, c) in
                    enumerate(zip(info.class_names, info.palette))],
        "preprocessing": {"input": "uint8 RGB, NHWC, 1 x H x W x 3; cast and normalisation are in the graph",
                          "mean": list(info.mean), "std": list(info.std),
                          **{k: extra.pop(k) for k in ("layout", "channel_order") if k in extra}},
        "inputs": tensors(proto.graph.input), "outputs": tensors(proto.graph.output),
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "check_trt": {"trt_version": trt.trt_version, "ok": trt.ok, "problems": [str(p) for p in trt.problems]},
        "extra": extra,
    }


def format_card(card: dict) -> str:
    h, w = card["input_size"]
    pre = card["preprocessing"]
    trt = card["check_trt"]
    lines = [
        f"{card['file']}: {card['name']} ({card['family'] or 'unknown family'})",
        f"  input       {h}x{w}, {pre['input']}",
        f"  normalise   mean {pre['mean']}, std {pre['std']} (0-255 units)"
        + "".join(f", {k.replace('_', ' ')} {pre[k]}" for k in ("layout", "channel_order") if k in pre),
        "  outputs     " + ", ".join(f"{o['name']} {o['type']} {o['shape']}" for o in card["outputs"]),
        f"  opset       {card['opset']}",
        f"  sha256      {card['sha256']} ({card['bytes'] / 1e6:.1f} MB)",
        f"  check-trt   {'passes' if trt['ok'] else 'FAILS'} for TensorRT {trt['trt_version']}"
        + "".join(f"\n                {p}" for p in trt["problems"]),
    ]
    lines += [f"  {key:<13} {value}" for key, value in sorted(card["extra"].items())]
    lines.append(f"  classes     {len(card['classes'])}:")
    lines += [f"    {c['id']:>3}  {c['name']:<24} rgb{tuple(c['color'])}" for c in card["classes"]]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an ONNX file written by `seg-perception export` or `seg-perception wrap`")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    p.add_argument("--trt-version", default="latest", help="TensorRT release the check-trt line is for")


def run(args) -> int:
    card = model_card(args.model, args.trt_version)
    print(json.dumps(card, indent=1) if args.json else format_card(card))
    return 0
