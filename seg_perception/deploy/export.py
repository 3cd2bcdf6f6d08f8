"""`seg-perception export`: a zoo model -> ONNX whose graph does the camera-side pre/post-processing.

Input `image` uint8 [1, H, W, 3] RGB; outputs `labels` uint8 and `confidence` uint8 (max class probability
x 255) at model resolution, optionally `logits` float32. Everything the runtime needs to interpret the file
(model, variant, classes, palette, mean/std, input size) is written into its metadata.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seg_perception.backends.base import ModelInfo
from seg_perception.backends.deploy_model import build_for_classes, deploy_wrapper, model_info_for
from seg_perception.errors import OptionError
from seg_perception.sizes import parse_hw

OPSET = 17


def export_onnx(model, info: ModelInfo, out: str | Path, with_logits: bool = False, dynamic: bool = False,
                opset: int = OPSET) -> Path:
    """Export `model` (a segmentor, eval mode) wrapped for deployment; returns the written path."""
    import onnx
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = deploy_wrapper(model, info, with_logits, dynamic)
    h, w = info.input_size
    dummy = torch.zeros(1, h, w, 3, dtype=torch.uint8)
    names = ["labels", "confidence"] + (["logits"] if with_logits else [])
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {"image": {1: "height", 2: "width"}, "labels": {1: "height", 2: "width"},
                        "confidence": {1: "height", 2: "width"}}
        if with_logits:
            dynamic_axes["logits"] = {2: "height", 3: "width"}
    with torch.inference_mode():
        # dynamo=False: torch 2.13's dynamo exporter silently writes opset 18 when asked for 17.
        torch.onnx.export(wrapper, (dummy,), str(out), input_names=["image"], output_names=names,
                          opset_version=opset, dynamic_axes=dynamic_axes, do_constant_folding=True,
                          dynamo=False)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    got = {o.domain: o.version for o in proto.opset_import}.get("", None)
    if got != opset:
        raise RuntimeError(f"exported {out} has opset {got}, expected {opset}")
    info.extra = {**info.extra, "dynamic": dynamic, "opset": opset}
    for key, value in info.to_metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    return out


def export_zoo(name: str, input_size: tuple[int, int], out: str | Path, checkpoint: str | None = None,
               with_logits: bool = False, dynamic: bool = False, opset: int = OPSET, classes=None,
               trusted: bool = False) -> Path:
    """Build zoo model `name` (random weights unless `checkpoint`) and export it: the CLI's whole job."""
    from seg_perception.models.registry import DYNAMIC_FAMILIES, get_variant

    family = get_variant(name).family
    if dynamic and family not in DYNAMIC_FAMILIES:
        raise OptionError(f"--dynamic is not supported for {name}: a {family} graph fixes size-dependent tables "
                         f"when exported; export one file per input size (supported: {sorted(DYNAMIC_FAMILIES)})")
    model, classes, report = build_for_classes(name, classes, checkpoint, trusted)
    if report is not None:
        print(f"loaded {checkpoint}: " + report.describe().replace("\n", "; "))
    info = model_info_for(name, input_size, classes, with_logits=with_logits)
    return export_onnx(model, info, out, with_logits=with_logits, dynamic=dynamic, opset=opset)


def add_classes_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", default=None, metavar="SET",
                   help="the classes the model predicts: cityscapes (19 train ids), ade20k (150), or a YAML file "
                        "of entries {id, name, color}; default: the builtin set of the model's size")


def add_trust_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle checkpoints in full, running any code they hold; only for files you trust "
                        "(by default only arrays and plain data are read)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="zoo name (see `seg-perception zoo`)")
    p.add_argument("--checkpoint", help="official (mmseg .pth, detectron2 .pkl) or seg-perception checkpoint")
    p.add_argument("--random-weights", action="store_true",
                   help="export without a checkpoint, with random weights (for tests and timing only)")
    add_classes_argument(p)
    add_trust_argument(p)
    p.add_argument("--input-size", type=parse_hw, default=(512, 1024), help="HxW of the graph input")
    p.add_argument("--out", required=True, help="output .onnx path, e.g. engines/metaseg-t_512x1024.onnx")
    p.add_argument("--dynamic", action="store_true", help="dynamic height/width axes")
    p.add_argument("--logits", action="store_true", help="also output float32 logits (for evaluation)")
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument("--check-trt", metavar="TRT_VERSION", nargs="?", const="latest", default=None,
                   help="after export, check the graph against TensorRT's ONNX parser (default: newest known)")


def run(args) -> int:
    from seg_perception.classes import load_classes
    from seg_perception.models.registry import get_variant

    get_variant(args.model)  # an unknown name first: no other answer helps before it is fixed
    if args.checkpoint and args.random_weights:
        raise OptionError("--checkpoint and --random-weights exclude each other")
    if not args.checkpoint and not args.random_weights:
        raise OptionError("no weights: pass --checkpoint FILE (official or seg-perception), or --random-weights "
                          "for a graph with random weights (tests and timing only)")
    classes = load_classes(args.classes) if args.classes else None
    path = export_zoo(args.model, args.input_size, args.out, checkpoint=args.checkpoint, with_logits=args.logits,
                      dynamic=args.dynamic, opset=args.opset, classes=classes, trusted=args.trust_checkpoint)
    print(f"wrote {path} (opset {args.opset}, input {args.input_size[0]}x{args.input_size[1]})")
    if args.check_trt:
        from seg_perception.deploy.trt_compat import check_onnx
        report = check_onnx(path, args.check_trt)
        print(report.describe())
        return 0 if report.ok else 1
    return 0
