"""Tools write only what they own: existing files are refused unless --overwrite, symbolic links are never written
through, and a folder is cleared only of what a tool recorded making (seg_perception.output_files)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from seg_perception.cli import main
from seg_perception.output_files import MADE_BY, OutputRefused, claim, prepare_folder, record_made, replace_file


def test_prepare_folder_refuses_a_users_folder_and_clears_only_what_the_tool_made(tmp_path):
    mine = tmp_path / "mine"
    (mine / "drive_bag").mkdir(parents=True)
    (mine / "drive_bag" / "notes.txt").write_text("keep")
    with pytest.raises(OSError, match="not empty and was not made by seg-perception demo"):
        prepare_folder(mine, "seg-perception demo")
    assert (mine / "drive_bag" / "notes.txt").read_text() == "keep"

    out = prepare_folder(tmp_path / "new", "seg-perception demo")  # created, with an empty record
    (out / "drive_bag").mkdir()
    (out / "drive_bag" / "x.mcap").write_text("old run")
    (out / "overlay_000.png").write_text("old run")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (out / "report.md").symlink_to(outside)
    record_made(out, "seg-perception demo", ["drive_bag", "overlay_000.png", "report.md", "../outside.txt"])
    (out / "overlay_999.png").write_text("the user's")
    prepare_folder(out, "seg-perception demo")
    assert sorted(p.name for p in out.iterdir()) == [MADE_BY, "overlay_999.png"]
    assert outside.read_text() == "keep"  # the link was removed, not followed; '..' names are never touched
    with pytest.raises(OSError, match="was not made by seg-perception eval"):
        prepare_folder(out, "seg-perception eval")


def test_claim_and_replace_file_never_follow_links(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep")
    link = tmp_path / "r.md"
    link.symlink_to(target)
    with pytest.raises(OSError, match="symbolic link"):
        claim([tmp_path / "r.json", link], overwrite=True)
    replace_file(link, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "keep" and not link.is_symlink() and link.read_text() == "new"
    with pytest.raises(OutputRefused, match="r.md already exist.*--overwrite"):
        claim([link])
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(OSError, match="not a writable folder"):
        claim([not_a_folder / "sub" / "r.json"])


def test_demo_refuses_a_non_empty_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "drive_bag").mkdir(parents=True)
    (out / "drive_bag" / "my_recording.mcap").write_text("precious")
    (out / "overlay_000.png").write_text("mine")
    assert main(["demo", "--out", str(out)]) == 2
    assert "not empty and was not made by seg-perception demo" in capsys.readouterr().err
    assert (out / "drive_bag" / "my_recording.mcap").read_text() == "precious"
    assert (out / "overlay_000.png").read_text() == "mine"


def test_eval_refuses_to_overwrite_or_follow_links_and_says_what_it_wrote(tmp_path, capsys):
    root = tmp_path / "cs"
    preds = tmp_path / "preds"
    preds.mkdir()
    for i in range(2):
        key = f"aachen_{i:06d}_000019"
        (root / "gtFine" / "val" / "aachen").mkdir(parents=True, exist_ok=True)
        gt = np.full((16, 32), 7, np.uint8)
        gt[8:] = 26
        cv2.imwrite(str(root / "gtFine" / "val" / "aachen" / f"{key}_gtFine_labelIds.png"), gt)
        cv2.imwrite(str(preds / f"{key}.png"), gt)
    out = tmp_path / "report.json"
    (tmp_path / "report.md").write_text("the user's notes")
    args = ["eval", "cityscapes", "--root", str(root), "--predictions", str(preds), "--out", str(out), "--quiet"]
    assert main(args) == 2
    assert "report.md already exist" in capsys.readouterr().err and not out.exists()
    assert (tmp_path / "report.md").read_text() == "the user's notes"

    (tmp_path / "report.md").unlink()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "important.png").write_bytes(b"keep")
    (tmp_path / "report_confusion.png").symlink_to(outside / "important.png")
    assert main(args + ["--overwrite"]) == 2
    assert "symbolic link" in capsys.readouterr().err and (outside / "important.png").read_bytes() == b"keep"

    (tmp_path / "report_confusion.png").unlink()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}, {tmp_path / 'report.md'}, {tmp_path / 'report_confusion.png'}" in printed
    assert json.loads(out.read_text())["miou"] == 1.0
    assert main(args) == 2 and main(args + ["--overwrite"]) == 0  # a second run replaces only when asked
