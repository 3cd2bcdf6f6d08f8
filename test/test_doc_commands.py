"""Every command the README and docs/ show still parses: each `seg-perception` subcommand exists and has every
flag named after it, each `seg_node -p NAME:=` is a parameter, each `ros2 launch PKG FILE NAME:=` an argument of
launch/FILE, each `make TARGET` a Makefile target. The parsers come from the code itself (the CLI's own argparse
tree, params.py, the launch files), so the check follows them as they grow."""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from pathlib import Path

import pytest

from seg_perception.cli import COMMANDS, build_parser
from seg_perception.core.node_params import PARAMETERS

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FLAG = re.compile(r"^--[a-z][a-z0-9-]*")


def commands_in(text: str) -> list[tuple[int, str]]:
    """(line, command) for every command in fenced blocks (backslash continuations joined, comments cut) and in
    inline code spans."""
    found, fenced, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            code = re.sub(r"\s#\s.*$|^\s*#.*$", "", line).rstrip()
            start = start or number
            if code.endswith("\\"):
                pending += code[:-1] + " "
                continue
            found.append((start, pending + code))
            pending, start = "", 0
        else:
            found += [(number, span) for span in re.findall(r"`([^`]+)`", line)]
    # `cd ws && colcon build && ros2 launch ...`: each part is a command of its own
    return [(n, part.strip()) for n, cmd in found for part in re.split(r"&&|;|\|", cmd) if part.strip()]


def tokens_of(command: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    # optional parts are shown in brackets: [--dynamic] [--calib-cache f]
    return [w.strip("[]") for w in words if w.strip("[]")]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def check_cli(words: list[str]) -> str | None:
    """None when `seg-perception WORDS` names an existing subcommand and only its flags; else the problem."""
    if not words or words[0].startswith("-"):
        return next((f"unknown option {w}" for w in words if FLAG.match(w) and w.split("=")[0]
                     not in options(build_parser())), None)
    if words[0].rstrip(":").isupper():  # a placeholder: seg-perception COMMAND --help
        return None
    if words[0] not in COMMANDS:
        return f"unknown subcommand '{words[0]}'"
    parser, path = subparsers(build_parser(load=words[0]))[words[0]], [words[0]]
    for word in words[1:]:
        children = subparsers(parser)
        if word in children:
            parser = children[word]
            path.append(word)
        elif FLAG.match(word) and word.split("=")[0] not in options(parser):
            return f"'seg-perception {' '.join(path)}' has no option {word.split('=')[0]}"
    return None


def launch_arguments(launch_file: str) -> set[str]:
    """The arguments `launch/<launch_file>` declares: literal DeclareLaunchArgument names, the keys of its
    module-level tables of arguments, and those of the launch files it includes (named as *.launch.py)."""
    tree = ast.parse((REPO / "launch" / launch_file).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            names |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument" and \
                isinstance(node.args[0], ast.Constant):
            names.add(node.args[0].value)
        if isinstance(node, ast.Constant) and str(node.value).endswith(".launch.py") and \
                node.value != launch_file and (REPO / "launch" / node.value).is_file():
            names |= launch_arguments(node.value)
    return names


def node_parameters() -> set[str]:
    return set(PARAMETERS) | {"use_sim_time"}


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))


def problems_in(text: str) -> list[tuple[int, str, str]]:
    """(line, command, problem) for each command in `text` that the current code does not accept."""
    problems = []
    for line, command in commands_in(text):
        words = tokens_of(command)
        head = Path(words[0]).name if words else ""
        if head == "seg-perception":
            problem = check_cli(words[1:])
        elif head in ("seg_node", "seg_lifecycle_node"):  # -p NAME:=VALUE (not -r remaps)
            named = [w.split(":=")[0] for flag, w in zip(words, words[1:]) if flag == "-p" and ":=" in w]
            problem = next((f"unknown parameter {n}" for n in named if n not in node_parameters()), None)
        elif words[:2] == ["ros2", "launch"] and len(words) > 3:
            if not (REPO / "launch" / words[3]).is_file():
                problem = f"no launch file launch/{words[3]}"
            else:
                named = [w.split(":=")[0] for w in words[4:] if ":=" in w and not w.startswith("/")]
                problem = next((f"unknown launch argument {n}" for n in named
                                if n not in launch_arguments(words[3])), None)
        elif head == "make":
            problem = next((f"no Makefile target {w}" for w in words[1:]
                            if not w.startswith("-") and "=" not in w and w not in make_targets()), None)
        else:  # any other command: the bench scripts it names must exist (bench_X.py is a placeholder)
            problem = next((f"no file {w}" for w in words
                            if re.fullmatch(r"bench/[a-z_]+\.py", w) and not (REPO / w).is_file()), None)
        if problem:
            problems.append((line, command, problem))
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_in_the_docs_parses(doc):
    problems = problems_in(doc.read_text())
    assert not problems, f"commands in {doc.name} that the current code does not accept:\n" + "\n".join(
        f"  line {line}: {command}\n    -> {problem}" for line, command, problem in problems)


def test_the_checker_catches_stale_commands():
    text = ("```bash\nseg-perception export metaseg-t --out m.onnx \\\n    --no-such-flag   # a comment\n```\n"
            "Run `seg-perception frobnicate --x` or `seg-perception eval cityscapes --root r --wrokers 2`,\n"
            "`cd ws && ros2 launch seg_perception seg.launch.py modell:=m.onnx`, `seg_node --ros-args -p thread:=2`,\n"
            "`make demoo` or `python bench/bench_nothing.py`; fine: `seg-perception --version`, `make demo`,\n"
            "`seg_node --ros-args -r __ns:=/front -r image_raw:=/cam/image -p threads:=2`,\n"
            "`ros2 launch seg_perception seg.launch.py model:=m.onnx namespace:=front`, `seg-perception COMMAND -h`.\n")
    assert [(line, problem) for line, _, problem in problems_in(text)] == [
        (2, "'seg-perception export' has no option --no-such-flag"),
        (5, "unknown subcommand 'frobnicate'"),
        (5, "'seg-perception eval cityscapes' has no option --wrokers"),
        (6, "unknown launch argument modell"),
        (6, "unknown parameter thread"),
        (7, "no Makefile target demoo"),
        (7, "no file bench/bench_nothing.py"),
    ]
