"""`seg-perception`: one CLI, one subcommand per job. Subcommands load lazily so `--help` stays fast
and the runtime ones (demo, eval, replay, bench) never import torch."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module providing `add_arguments(parser)` and `run(args) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("seg_perception.demo", "generate a drive, run seg_node on it over ROS 2, report mIoU and latency"),
    "zoo": ("seg_perception.models.zoo", "list registered models with params/GFLOPs against the papers"),
    "export": ("seg_perception.deploy.export", "export a zoo model to ONNX (uint8 NHWC in, labels/confidence out)"),
    "wrap": ("seg_perception.deploy.wrap", "wrap a third-party segmentation ONNX graph into this package's "
                                           "contract (uint8 RGB in, labels and confidence out)"),
    "info": ("seg_perception.deploy.model_card", "print a model file's card: classes, input, preprocessing, "
                                                 "outputs, sha256, TensorRT check"),
    "build-engine": ("seg_perception.deploy.build_engine", "build a TensorRT engine from an ONNX file"),
    "check-trt": ("seg_perception.deploy.trt_compat", "check an ONNX graph against TensorRT's ONNX parser"),
    "eval": ("seg_perception.eval.cli", "evaluate on Cityscapes or a rosbag"),
    "replay": ("seg_perception.ros.replay", "publish a bag's images into ROS 2"),
    "bench": ("seg_perception.core.bench", "run the pipeline standalone on generated frames, print stage latency"),
    "train": ("seg_perception.train", "train or fine-tune a zoo model on data in the Cityscapes layout"),
    "synth": ("seg_perception.data.synthetic", "write synthetic street scenes (Cityscapes layout) or a drive bag"),
}


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seg-perception", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == load:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        build_parser().print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    args = build_parser(load=command).parse_args(argv)
    return int(importlib.import_module(COMMANDS[command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
