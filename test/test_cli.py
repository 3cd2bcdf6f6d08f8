"""The one CLI: every subcommand has --help, and the runtime ones never import torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from seg_perception.cli import COMMANDS

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


def test_unknown_command_fails():
    proc = subprocess.run([sys.executable, "-m", "seg_perception.cli", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2


def test_the_torch_blocker_blocks(no_torch):
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_eval_runs_without_torch(no_torch, tiny_onnx, tmp_path):
    """Both evaluations, end to end on a real model, in a process that cannot import torch. (demo, replay and
    bench run that way in their own tests.)"""
    from seg_perception.data.synthetic import render_scene, write_cityscapes
    from seg_perception.eval.bag_io import write_drive_bag

    write_cityscapes(tmp_path / "cs", "val", 1, size=(64, 128), seed=0)
    rng = np.random.default_rng(0)
    frames = [(f.rgb, f.train_ids) for f in (render_scene(rng, 64, 128) for _ in range(2))]
    bag = write_drive_bag(tmp_path / "bag", frames, storage="mcap")
    runs = {"cityscapes": ["cityscapes", "--root", str(tmp_path / "cs")],
            "bag": ["bag", str(bag), "--image-topic", "/camera/image_raw", "--gt-topic", "/camera/semantic_gt"]}
    for name, args in runs.items():
        out = tmp_path / f"{name}.json"
        proc = subprocess.run([sys.executable, "-m", "seg_perception.cli", "eval", *args, "--model", str(tiny_onnx),
                               "--threads", "1", "--out", str(out), "--quiet"], env=no_torch(), capture_output=True,
                              text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(out.read_text())["num_images"] == (1 if name == "cityscapes" else 2)
