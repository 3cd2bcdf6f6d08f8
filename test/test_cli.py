"""The one CLI: every subcommand has --help, and the runtime ones never import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from seg_perception.cli import COMMANDS

RUNTIME_COMMANDS = ("demo", "eval", "replay", "bench")


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


@pytest.mark.parametrize("command", RUNTIME_COMMANDS)
def test_runtime_commands_do_not_import_torch(command):
    code = ("import sys; from seg_perception.cli import build_parser; build_parser(load=%r);"
            "print('torch' in sys.modules)" % command)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
