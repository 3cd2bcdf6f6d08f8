"""`seg-perception bench`: the real console script on a real small model, its table and its trace file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seg_perception import cli
from seg_perception.core import bench

STAGE_ROWS = ("decode", "preprocess", "inference", "postprocess")


def _table(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines()
            if line.split() and line.split()[0] in STAGE_ROWS + ("costmap", "end_to_end")}


def test_bench_console_script_prints_stage_table_and_writes_chrome_trace(tiny_onnx, tmp_path, no_torch):
    out = tmp_path / "bench.json"
    exe = Path(sys.executable).with_name("seg-perception")
    proc = subprocess.run([str(exe), "bench", "--model", str(tiny_onnx), "--input-size", "96x160", "--frames", "8",
                           "--warmup", "1", "--threads", "1", "--costmaps", "--trace", str(out)],
                          env=no_torch(), capture_output=True, text=True, timeout=120)  # runtime: no torch
    assert proc.returncode == 0, proc.stderr
    table = _table(proc.stdout)
    assert set(table) == set(STAGE_ROWS) | {"costmap", "end_to_end"}
    assert all(row[0] == "8" for row in table.values())  # count column
    assert float(table["end_to_end"][1]) >= float(table["inference"][1]) > 0
    assert "camera 96x160 rgb8" in proc.stdout and "frames/s" in proc.stdout

    events = json.loads(out.read_text())["traceEvents"]
    frames = [e for e in events if e["ph"] == "X" and e["tid"] == 0]
    assert len(frames) == 8 and {e["name"] for e in frames} == {"end_to_end"}
    assert {e["name"] for e in events if e["ph"] == "X" and e["tid"] != 0} == set(STAGE_ROWS) | {"costmap"}


@pytest.mark.parametrize("encoding", ["jpeg", "bgr8"])
def test_bench_decodes_each_encoding(tiny_onnx, tmp_path, capsys, encoding):
    rc = cli.main(["bench", "--model", str(tiny_onnx), "--input-size", "64x96", "--frames", "3", "--warmup", "0",
                   "--threads", "1", "--encoding", encoding, "--output-resolution", "model",
                   "--trace", str(tmp_path / "t.csv")])
    assert rc == 0
    table = _table(capsys.readouterr().out)
    assert set(table) == set(STAGE_ROWS) | {"end_to_end"}  # no --costmaps, no costmap stage
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 1 + 3


def test_bench_without_the_default_model_fails_clearly(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "DEFAULT_MODEL", tmp_path / "default_model.onnx")
    assert cli.main(["bench", "--input-size", "64x96", "--frames", "2"]) == 2
    err = capsys.readouterr().err
    assert "default model" in err and "--model" in err and "default_model.onnx" in err


def test_bench_reports_a_missing_model_file(tmp_path, capsys):
    assert cli.main(["bench", "--model", str(tmp_path / "nope.onnx"), "--frames", "2"]) == 2
    assert "not found" in capsys.readouterr().err
