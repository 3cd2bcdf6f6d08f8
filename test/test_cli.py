"""The one CLI: every subcommand has --help, and the runtime ones never import torch."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seg_perception.cli import COMMANDS, build_parser, default_text

REPO = Path(__file__).resolve().parents[1]

@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_subcommand_has_help(command):
    proc = subprocess.run([sys.executable, "-m", "seg_perception.cli", command, "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: seg-perception " + command in proc.stdout


def test_top_level_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "seg_perception.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in COMMANDS:
        assert command in proc.stdout


# Each usage mistake a new user made (issue #21), and what the one line must name.
USAGE_MISTAKES = {
    "unknown command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "unknown option": (["synth", "--nope"], "unrecognized arguments: --nope"),
    "bad size": (["synth", "--size", "0x0"], "positive HxW"),
    "bad split": (["synth", "--split", "train:many"], "--split expects SPLIT or SPLIT:N"),
    "train, missing data folder": (["train", "metaseg-t", "--data", "{tmp}/nowhere", "--out", "{tmp}/run"],
                                   "nowhere' is not a folder"),
    "export, unknown model": (["export", "metaseg-x", "--out", "{tmp}/m.onnx"], "unknown model 'metaseg-x'"),
    "export, missing checkpoint": (["export", "metaseg-t", "--checkpoint", "{tmp}/none.pth", "--out", "{tmp}/m.onnx"],
                                   "checkpoint not found"),
    "export --dynamic, fixed-size family": (["export", "segman-t", "--dynamic", "--random-weights", "--out",
                                             "{tmp}/m.onnx"],
                                            "--dynamic is not supported for segman-t"),
    "export, no weights": (["export", "metaseg-t", "--out", "{tmp}/m.onnx"], "no weights: pass --checkpoint"),
    "export, unknown classes": (["export", "metaseg-t", "--random-weights", "--classes", "pascal", "--out",
                                 "{tmp}/m.onnx"], "'pascal' is neither a builtin set"),
    "wrap, missing graph": (["wrap", "{tmp}/none.onnx", "--out", "{tmp}/w.onnx"], "ONNX file not found"),
    "info, missing model": (["info", "{tmp}/none.onnx"], "model file not found"),
    "demo, no frames": (["demo", "--frames", "0", "--out", "{tmp}/demo"], "--frames"),
    "demo, missing model": (["demo", "--model", "{tmp}/none.onnx", "--out", "{tmp}/demo"], "none.onnx"),
}


@pytest.mark.parametrize("case", sorted(USAGE_MISTAKES))
def test_usage_mistake_answers_one_line_and_exit_2(case, tmp_path):
    argv, names = USAGE_MISTAKES[case]
    argv = [a.format(tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "seg_perception.cli", *argv], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error: " in lines[0] and names in lines[0], proc.stderr
    assert proc.stdout == ""
    assert not any(tmp_path.iterdir()), "a refused command must not leave files behind"


def test_version_is_the_package_version():
    proc = subprocess.run([sys.executable, "-m", "seg_perception.cli", "--version"], capture_output=True, text=True)
    version = re.search(r"<version>(.+)</version>", (REPO / "package.xml").read_text()).group(1)
    assert proc.returncode == 0 and proc.stdout.strip() == f"seg-perception {version}"


def command_parsers():
    """(`seg-perception eval bag`, its parser) for every subcommand and nested subcommand."""
    def walk(parser, path):
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, f"{path} {name}")
    for command in COMMANDS:
        sub = next(a for a in build_parser(load=command)._actions if isinstance(a, argparse._SubParsersAction))
        yield from walk(sub.choices[command], f"seg-perception {command}")


def test_help_shows_defaults_and_names_only_options_that_exist():
    for path, parser in command_parsers():
        text = " ".join(parser.format_help().split())  # unwrapped
        options = {o for a in parser._actions for o in a.option_strings}
        for action in parser._actions:
            shown = default_text(action)
            if shown is not None and "(default" not in (action.help or ""):
                assert f"(default: {shown})" in text, f"{path} --help does not show {action.dest}'s default"
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
        assert named <= options, f"{path} --help mentions {sorted(named - options)}, which it does not take"


def test_defaults_read_back_as_typed():
    parser = next(p for path, p in command_parsers() if path == "seg-perception synth")
    size = next(a for a in parser._actions if a.dest == "size")
    assert default_text(size) == "512x1024" and size.type(default_text(size)) == size.default


def test_bench_run_all_help_starts_no_benchmark():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run_all.py"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage:")
    assert "bench_eval.py" in proc.stdout and "===" not in proc.stdout


def test_the_torch_blocker_blocks(no_torch):
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_eval_runs_without_torch(no_torch, tiny_onnx, tmp_path):
    """Every evaluation (fleet in one process), end to end on a real model, in a process that cannot import
    torch. (demo, replay and bench run that way in their own tests.)"""
    from seg_perception.data.synthetic import render_scene, write_cityscapes
    from seg_perception.bags import write_drive_bag

    write_cityscapes(tmp_path / "cs", "val", 1, size=(64, 128), seed=0)
    rng = np.random.default_rng(0)
    frames = [(f.rgb, f.train_ids) for f in (render_scene(rng, 64, 128) for _ in range(2))]
    bag = write_drive_bag(tmp_path / "bag", frames, storage="mcap")
    topics = ["--image-topic", "/camera/image_raw", "--gt-topic", "/camera/semantic_gt"]
    runs = {  # name: (arguments, --out, the report it writes, images scored)
        "cityscapes": (["cityscapes", "--root", str(tmp_path / "cs")], "cs.json", "cs.json", 1),
        "bag": (["bag", str(bag), *topics], "bag.json", "bag.json", 2),
        "bags": (["bags", str(bag), *topics, "--workers", "0"], "fleet", "fleet/report.json", 2),
    }
    for name, (args, out, report, images) in runs.items():
        proc = subprocess.run([sys.executable, "-m", "seg_perception.cli", "eval", *args, "--model", str(tiny_onnx),
                               "--threads", "1", "--out", str(tmp_path / out), "--quiet"], env=no_torch(),
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"eval {name}: {proc.stderr[-3000:]}"
        assert json.loads((tmp_path / report).read_text())["num_images"] == images, name
