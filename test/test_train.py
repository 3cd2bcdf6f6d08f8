"""`seg-perception train`: augmentation, label mapping, a few real iterations, checkpoints, resume, export."""

from __future__ import annotations

import builtins
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the [models] extra (torch)")

from seg_perception.data.synthetic import write_cityscapes  # noqa: E402
from seg_perception.eval.cityscapes import find_samples  # noqa: E402
from seg_perception.labels import IGNORE_ID  # noqa: E402
from seg_perception.models.checkpoint import CheckpointError  # noqa: E402
from seg_perception.train import TrainConfig, augment, poly_lr, train, train_ids_of  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_cityscapes(root, "train", 4, size=(64, 128), seed=1)
    write_cityscapes(root, "val", 2, size=(64, 128), seed=2)
    return root


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(model="metaseg-t", data=str(data), out=str(out), epochs=2, batch_size=2, crop=(64, 64),
                scale=(0.75, 1.25), warmup_iters=2, input_size=(64, 128), threads=1)
    return TrainConfig(**{**base, **kw})


def test_augment_keeps_image_and_labels_aligned():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:30, :40]
    ids = ((yy // 8 + xx // 8 * 3) % 19).astype(np.uint8)  # 8x8 blocks, each with its own label
    rgb = np.repeat(ids[..., None] * 10, 3, axis=2).astype(np.uint8)
    for _ in range(10):
        img, lab = augment(rgb, ids, (32, 48), (0.5, 1.5), rng)
        assert img.shape == (32, 48, 3) and lab.shape == (32, 48)
        valid = lab != IGNORE_ID
        assert valid.any()
        # nearest-resized labels and linearly resized colours agree away from block edges
        assert np.mean(np.abs(img[..., 0][valid].astype(int) - lab[valid].astype(int) * 10) <= 5) > 0.6
        if not valid.all():  # padding is ignore in labels and black in the image
            assert (img[~valid] == 0).all()


def test_train_ids_from_label_ids_when_no_train_id_png(data, tmp_path):
    sample = find_samples(data, "val")[0]
    direct = train_ids_of(sample)
    for src, kind in ((sample.gt, "gtFine"), (sample.image, "leftImg8bit")):  # no labelTrainIds PNG in the copy
        dst = tmp_path / kind / "val" / sample.gt.parent.name / src.name
        dst.parent.mkdir(parents=True)
        dst.write_bytes(src.read_bytes())
    mapped = train_ids_of(find_samples(tmp_path, "val")[0])  # labelIds -> cityscapesscripts' train ids
    np.testing.assert_array_equal(mapped, direct)
    assert IGNORE_ID in mapped and mapped.max() == IGNORE_ID and (mapped < 19).any()


def test_poly_schedule_with_warmup():
    assert poly_lr(1.0, 0, 100, 10) == pytest.approx(0.1)
    assert poly_lr(1.0, 9, 100, 10) == pytest.approx(1.0)
    assert poly_lr(1.0, 50, 100, 10) == pytest.approx(0.5)
    assert poly_lr(1.0, 100, 100, 10) == 0.0


def test_checkpoint_resume_continues_where_it_stopped(data, tmp_path):
    first = train(_cfg(data, tmp_path, epochs=1))
    assert [r.epoch for r in first] == [1] and first[0].iteration == 2
    assert first[0].miou is not None and 0.0 <= first[0].miou <= 1.0
    state = torch.load(tmp_path / "last.pth", weights_only=False)
    assert state["epoch"] == 1 and state["iteration"] == 2
    assert (tmp_path / "best.pth").is_file()

    resumed = train(_cfg(data, tmp_path, epochs=2, resume=str(tmp_path / "last.pth")))
    assert [r.epoch for r in resumed] == [2] and resumed[0].iteration == 4  # epoch 1 is not run again
    after = torch.load(tmp_path / "last.pth", weights_only=False)
    steps = {int(s["step"]) for s in after["optimizer"]["state"].values()}
    assert steps == {4}  # AdamW's state came back with the weights
    changed = [k for k, v in after["model"].items() if v.is_floating_point() and not torch.equal(v, state["model"][k])]
    assert changed  # and it trained on
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling creates the marker file
        return builtins.open, (self.marker, "w")


def test_resume_refuses_a_file_carrying_code(data, tmp_path):
    marker = tmp_path / "payload_ran"
    torch.save({"model": {}, "optimizer": {}, "epoch": 1, "iteration": 2, "best_miou": 0.0,
                "hook": _Payload(marker)}, tmp_path / "last.pth")
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        train(_cfg(data, tmp_path / "run", resume=str(tmp_path / "last.pth")))
    assert not marker.exists()


def test_cli_trains_reports_miou_and_exports_onnx(data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "model.onnx"
    proc = subprocess.run([sys.executable, "-m", "seg_perception.cli", "train", "metaseg-t", "--data", str(data),
                           "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", "--crop", "64x64",
                           "--input-size", "64x128", "--threads", "1", "--export", str(onnx_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "val mIoU 0." in proc.stdout and "best val mIoU" in proc.stdout
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    labels, confidence = session.run(None, {"image": np.zeros((1, 64, 128, 3), np.uint8)})
    assert labels.shape == confidence.shape == (1, 64, 128) and labels.dtype == np.uint8 and labels.max() < 19
    meta = session.get_modelmeta().custom_metadata_map
    assert any("metaseg-t" in v for v in meta.values())


def test_own_classes_train_and_reach_the_exported_card(data, tmp_path):
    """Three classes of our own: labels are class ids in the labelTrainIds PNGs (here the synthetic ids mod 3)."""
    import cv2

    from seg_perception.backends.onnxruntime_backend import read_model_info
    from seg_perception.classes import ClassesError

    own = tmp_path / "own"
    for src in data.rglob("*.png"):
        dst = own / src.relative_to(data)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.name.endswith("_gtFine_labelTrainIds.png"):
            ids = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(dst), np.where(ids == IGNORE_ID, IGNORE_ID, ids % 3).astype(np.uint8))
        else:
            dst.write_bytes(src.read_bytes())
    classes = tmp_path / "classes.yaml"
    classes.write_text("- {id: 0, name: floor, color: [1, 2, 3]}\n- {id: 1, name: wall, color: [4, 5, 6]}\n"
                       "- {id: 2, name: person, color: [7, 8, 9]}\n")
    results = train(_cfg(own, tmp_path / "run", epochs=1, classes=str(classes), export=str(tmp_path / "own.onnx")))
    assert results[0].miou is not None and 0.0 <= results[0].miou <= 1.0
    info = read_model_info(tmp_path / "own.onnx")
    assert info.class_names == ("floor", "wall", "person") and info.palette[2] == (7, 8, 9)
    with pytest.raises(ClassesError, match="labelTrainIds"):  # Cityscapes labelIds cannot stand for own classes
        (next(own.rglob("*_gtFine_labelTrainIds.png"))).unlink()
        train(_cfg(own, tmp_path / "run2", epochs=1, classes=str(classes)))
