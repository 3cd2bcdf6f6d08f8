"""`--classes`: builtin sets, YAML class files (checked, never run), the model card they become, and export's
refusals (no weights, unknown model, missing checkpoint, a class count the checkpoint does not predict)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from seg_perception.classes import MAX_CLASSES, ClassesError, default_for, load_classes
from seg_perception.cli import main
from seg_perception.labels import ADE20K_CLASSES, CITYSCAPES_CLASSES

OWN = [{"id": 0, "name": "floor", "color": [10, 20, 30]}, {"id": 2, "name": "person", "color": [255, 0, 0]},
       {"id": 1, "name": "wall", "color": [0, 0, 255]}]


def write_yaml(tmp_path, entries, name="classes.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(entries))
    return path


def test_builtin_sets_and_defaults_by_size():
    assert load_classes("cityscapes").names == CITYSCAPES_CLASSES
    ade = load_classes("ade20k")
    assert len(ade) == len(ade.palette) == 150 and ade.names[:3] == ("wall", "building", "sky")
    assert default_for(150).names == ADE20K_CLASSES and default_for(19).source == "cityscapes"
    with pytest.raises(ClassesError, match="--classes FILE.yaml with 7 entries"):
        default_for(7)


def test_yaml_file_orders_classes_by_id(tmp_path):
    classes = load_classes(str(write_yaml(tmp_path, {"classes": OWN})))
    assert classes.names == ("floor", "wall", "person")
    assert classes.palette == ((10, 20, 30), (0, 0, 255), (255, 0, 0))


@pytest.mark.parametrize("entries, message", [
    ([{"id": 0, "name": "a", "color": [0, 0, 0]}, {"id": 0, "name": "b", "color": [0, 0, 0]}], "id 0 appears twice"),
    ([{"id": 1, "name": "a", "color": [0, 0, 0]}], "id must be an integer in 0..0"),
    ([{"id": 0, "name": "a"}], "exactly the keys id, name, color"),
    ([{"id": 0, "name": "a", "color": [0, 0, 256]}], "three integers 0..255"),
    ([{"id": 0, "name": "", "color": [0, 0, 0]}], "non-empty string"),
    ([{"id": i, "name": "a", "color": [0, 0, 0]} for i in range(2)], "must be unique"),
    ([{"id": i, "name": f"c{i}", "color": [0, 0, 0]} for i in range(MAX_CLASSES + 1)], "at most 255"),
    ({"other": 1}, "non-empty list"),
])
def test_bad_class_files_are_refused_by_name(tmp_path, entries, message):
    with pytest.raises(ClassesError, match=message):
        load_classes(str(write_yaml(tmp_path, entries)))


def test_yaml_tags_never_run_code_and_big_files_are_refused(tmp_path):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"!!python/object/apply:builtins.open ['{marker}', 'w']\n")
    with pytest.raises(ClassesError, match="not readable YAML"):
        load_classes(str(evil))
    assert not marker.exists()
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ClassesError, match="too big"):
        load_classes(str(big))
    with pytest.raises(ClassesError, match="neither a builtin set"):
        load_classes("pascal")


def test_export_writes_own_classes_into_the_model_card(tmp_path, capsys):
    pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    from seg_perception.backends.onnxruntime_backend import read_model_info

    out = tmp_path / "own.onnx"
    assert main(["export", "metaseg-t", "--random-weights", "--classes", str(write_yaml(tmp_path, OWN)),
                 "--input-size", "64x64", "--out", str(out)]) == 0
    info = read_model_info(out)
    assert info.class_names == ("floor", "wall", "person") and info.palette[2] == (255, 0, 0)
    labels, _ = ort.InferenceSession(str(out)).run(None, {"image": np.full((1, 64, 64, 3), 99, np.uint8)})
    assert labels.max() < 3


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_export_refusals_are_one_line(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from seg_perception.models.registry import build_model

    out = ["--out", str(tmp_path / "m.onnx"), "--input-size", "64x64"]
    assert "--random-weights" in _one_line_error(capsys, ["export", "metaseg-t", *out])
    assert "unknown model 'nope'" in _one_line_error(capsys, ["export", "nope", "--random-weights", *out])
    assert "checkpoint not found" in _one_line_error(capsys, ["export", "metaseg-t", "--checkpoint",
                                                              str(tmp_path / "none.pth"), *out])
    ckpt = tmp_path / "city.pth"
    torch.save({"state_dict": build_model("metaseg-t").state_dict()}, ckpt)
    err = _one_line_error(capsys, ["export", "metaseg-t", "--checkpoint", str(ckpt), "--classes", "ade20k", *out])
    assert "predicts 19 classes but --classes ade20k has 150" in err
    assert not (tmp_path / "m.onnx").exists()


def test_cityscapes_evaluation_refuses_a_model_of_other_classes():
    """Cityscapes ground truth holds Cityscapes' classes; a card with others is pointed to folder or bag eval."""
    from seg_perception.backends.base import ModelInfo
    from seg_perception.eval import EvalError
    from seg_perception.eval.cityscapes import CityscapesJob

    own = load_classes("ade20k")
    with pytest.raises(EvalError, match="predicts its own 150 classes .* `eval folder` or `eval bag`"):
        CityscapesJob([]).check_model(ModelInfo(name="m", class_names=own.names, palette=own.palette))
    CityscapesJob([]).check_model(ModelInfo(name="m"))  # the Cityscapes default passes
