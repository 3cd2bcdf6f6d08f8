"""`seg-perception`: one CLI, one subcommand per job. Subcommands load lazily so `--help` stays fast
and the runtime ones (demo, eval, replay, bench) never import torch."""

from __future__ import annotations

import argparse
import copy
import importlib
import sys

from seg_perception import __version__
from seg_perception.errors import UsageError

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


def default_text(action: argparse.Action) -> str | None:
    """An option's default as the user would type it, or None when there is nothing worth showing."""
    value = action.default
    if value is None or value is False or value is argparse.SUPPRESS or value in ("", [], ()):
        return None
    if not action.option_strings and action.nargs not in ("?", "*"):
        return None  # a required positional
    if isinstance(value, tuple) and callable(action.type):
        for sep in ("x", ","):  # HxW sizes, LO,HI ranges: whichever the option's own parser reads back
            text = sep.join(str(v) for v in value)
            try:
                if action.type(text) == value:
                    return text
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                pass
    return str(value)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends '(default: X)' to every option that has a default, including options without help text."""

    def _format_action(self, action: argparse.Action) -> str:
        shown = default_text(action)
        if shown is not None and "%(default)" not in (action.help or "") and "(default" not in (action.help or ""):
            action = copy.copy(action)
            action.help = f"{action.help or ''} (default: {shown.replace('%', '%%')})".lstrip()
        return super()._format_action(action)


class CliParser(argparse.ArgumentParser):
    """Answers a usage mistake with one line and exit code 2; subcommand parsers inherit this class."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(load: str | None = None) -> CliParser:
    parser = CliParser(prog="seg-perception", description="Semantic segmentation for ROS 2 cameras, one "
                       "subcommand per job; `seg-perception COMMAND --help` for each.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == load:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(load=command if command in COMMANDS else None)
    args = parser.parse_args(argv)  # an unknown command or option exits 2 here, with one line
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except UsageError as exc:
        print(f"seg-perception {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
