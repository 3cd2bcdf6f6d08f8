"""build-engine argument handling: every mistake is reported before TensorRT is needed, with rc 2."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from deploy_graphs import contract_onnx
from seg_perception.backends.engine_build import BuildConfig, BuildError, input_shapes
from seg_perception.cli import main as cli_main
from seg_perception.deploy.build_engine import parse_shapes


def test_parse_shapes():
    assert parse_shapes("256x512/512x1024/1024x2048") == ((256, 512), (512, 1024), (1024, 2048))
    assert parse_shapes("512x1024") == ((512, 1024),) * 3
    for bad in ("512x1024/256x512/1024x2048", "1x2/3x4", "axb"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shapes(bad)


def test_profile_shapes_from_the_onnx(tmp_path):
    static = contract_onnx(tmp_path / "s.onnx", size=(8, 16))
    info, shapes = input_shapes(static, BuildConfig())
    assert shapes == {"image": [[1, 8, 16, 3]] * 3} and info.input_size == (8, 16)
    dynamic = contract_onnx(tmp_path / "d.onnx", size=(8, 16), dynamic=True)
    _, shapes = input_shapes(dynamic, BuildConfig())
    assert shapes == {"image": [[1, 8, 16, 3]] * 3}  # defaults to the export size
    info, shapes = input_shapes(dynamic, BuildConfig(shapes=((4, 8), (8, 16), (16, 32))))
    assert shapes["image"] == [[1, 4, 8, 3], [1, 8, 16, 3], [1, 16, 32, 3]] and info.input_size == (8, 16)
    with pytest.raises(BuildError, match="fixed 8x16 input"):
        input_shapes(static, BuildConfig(shapes=((4, 8), (8, 16), (16, 32))))


def test_int8_needs_calibration_data(tmp_path):
    onnx = contract_onnx(tmp_path / "m.onnx")
    with pytest.raises(BuildError, match="int8 needs --calib-images"):
        input_shapes(onnx, BuildConfig(precision="int8"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BuildError, match="no .png"):
        input_shapes(onnx, BuildConfig(precision="int8", calib_images=str(empty)))
    with pytest.raises(BuildError, match="not found"):
        input_shapes(onnx, BuildConfig(precision="int8", calib_images=str(tmp_path / "nope")))
    cache = tmp_path / "m.calib"
    cache.write_bytes(b"TRT-calibration")
    input_shapes(onnx, BuildConfig(precision="int8", calib_cache=str(cache)))  # a cache alone is enough


def test_calibration_images_are_read_as_rgb_at_input_size(tmp_path):
    cv2 = pytest.importorskip("cv2")
    from seg_perception.backends.engine_build import calibration_files, load_calibration_image

    bgr = np.zeros((20, 40, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR
    (tmp_path / "cal").mkdir()
    cv2.imwrite(str(tmp_path / "cal" / "a.png"), bgr)
    (tmp_path / "cal" / "notes.txt").write_text("skip me")
    files = calibration_files(tmp_path / "cal")
    assert [f.name for f in files] == ["a.png"]
    rgb = load_calibration_image(files[0], (8, 16))
    assert rgb.shape == (8, 16, 3) and rgb.flags.c_contiguous and (rgb[..., 0] == 255).all()


def test_cli_reports_argument_errors(tmp_path, capsys):
    onnx = contract_onnx(tmp_path / "m.onnx")
    assert cli_main(["build-engine", str(tmp_path / "missing.onnx")]) == 2
    assert "ONNX file not found" in capsys.readouterr().out
    assert cli_main(["build-engine", str(onnx), "--precision", "int8"]) == 2
    assert "--calib-images" in capsys.readouterr().out
    assert cli_main(["build-engine", str(onnx), "--workspace", "0"]) == 2
    assert "workspace" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli_main(["build-engine", str(onnx), "--precision", "fp8"])
    assert exit_.value.code == 2


def test_cli_without_tensorrt(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    assert cli_main(["build-engine", str(contract_onnx(tmp_path / "m.onnx"))]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().out
