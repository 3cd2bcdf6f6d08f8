"""`seg-perception zoo`: instant listing from the shipped counts, JSON shape, and counts that match a recount."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from seg_perception.models.registry import VARIANTS
from seg_perception.models.zoo import COUNTS_FILE, count_key, load_counts, recount, settings

OWN = ("metaseg-t", "metaseg-b", "metaseg-b-ade20k", "scaseg-t", "scaseg-b")


def run_zoo(*args: str) -> str:
    code = ("import sys; from seg_perception.cli import main; rc = main(['zoo', *sys.argv[1:]]); "
            "assert 'torch' not in sys.modules, 'zoo listing imported torch'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_json_lists_one_object_per_entry_and_reference():
    rows = json.loads(run_zoo("--json"))
    expected = sum(len(settings(v)) for v in VARIANTS.values())
    assert len(rows) == expected
    for row in rows:
        assert {"name", "params_m", "gflops", "input_size", "paper_params_m", "paper_gflops", "source"} <= set(row)
    t_ade = next(r for r in rows if r["name"] == "metaseg-t" and r["input_size"] == [512, 512])
    assert t_ade["paper_params_m"] == 4.68 and abs(t_ade["params_m"] - 4.68) < 0.05
    assert abs(t_ade["gflops"] - 5.51) / 5.51 < 0.05


def test_table_marks_unchecked_references():
    text = run_zoo()
    scaseg = [line for line in text.splitlines() if line.startswith("scaseg-")]
    assert scaseg and all("[unchecked]" in line for line in scaseg)
    assert any(line.startswith("metaseg-b-ade20k") and "31.6" in line for line in text.splitlines())


def test_shipped_counts_cover_this_family():
    counts = load_counts()
    for name in OWN:
        for ref in settings(VARIANTS[name]):
            assert count_key(name, ref.input_size, ref.num_classes) in counts, name


def test_shipped_counts_match_a_fresh_recount(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("fvcore")
    fresh = recount(["metaseg-t", "scaseg-t"], path=tmp_path / "counts.json", max_pixels=512 * 512)
    assert len(fresh) == 2
    shipped = load_counts(COUNTS_FILE)
    for key, got in fresh.items():
        assert got["params_m"] == pytest.approx(shipped[key]["params_m"], rel=1e-3), key
        assert got["gflops"] == pytest.approx(shipped[key]["gflops"], rel=1e-3), key
        assert got["uncounted_ops"] == {}, key


def test_unknown_model_in_recount_is_an_error():
    code = "import sys; from seg_perception.cli import main; sys.exit(main(['zoo', '--recount', 'nope']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown model" in out.stdout
