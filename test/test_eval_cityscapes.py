"""`seg-perception eval cityscapes` with a real model (tiny_onnx) and with prediction PNGs; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import hand_metrics
import numpy as np
import onnx
import pytest

from seg_perception.backends.onnxruntime_backend import OnnxRuntimeBackend
from seg_perception.cli import main
from seg_perception.core.pipeline import SegPipeline
from seg_perception.eval import EvalError
from seg_perception.eval.cityscapes import CityscapesJob, find_samples
from seg_perception.eval.image_eval import evaluate
from seg_perception.eval.inference import InferenceConfig, Predictor, _window_starts
from seg_perception.eval.cityscapes import match_predictions
from seg_perception.eval.metrics import scores

H, W = 48, 96  # camera images: not the model's 64x128, so the pipeline resizes both ways


def _write_cityscapes(root: Path, n: int = 3, seed: int = 0, size=(H, W)) -> None:
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        city = ("aachen", "bremen")[i % 2]
        key = f"{city}_{i:06d}_000019"
        for sub in ("leftImg8bit", "gtFine"):
            (root / sub / "val" / city).mkdir(parents=True, exist_ok=True)
        gt = cv2.resize(rng.choice([7, 8, 11, 21, 23, 24, 26, 0], size=(h // 8, w // 8)).astype(np.uint8), (w, h),
                        interpolation=cv2.INTER_NEAREST)
        rgb = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 0)
        inst = gt.astype(np.uint16) * 1000 + (gt >= 24)
        cv2.imwrite(str(root / "leftImg8bit" / "val" / city / f"{key}_leftImg8bit.png"), rgb[:, :, ::-1])
        cv2.imwrite(str(root / "gtFine" / "val" / city / f"{key}_gtFine_labelIds.png"), gt)
        cv2.imwrite(str(root / "gtFine" / "val" / city / f"{key}_gtFine_instanceIds.png"), inst)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cs")
    _write_cityscapes(root)
    return root


def _expected_confusion(root: Path, model: Path) -> np.ndarray:
    """The node's path by hand (camera image -> SegPipeline.process -> mask at camera size), counted without
    the evaluator's code."""
    gts, preds = [], []
    with OnnxRuntimeBackend(str(model), threads=1) as backend:
        pipeline = SegPipeline(backend, "camera")
        for s in find_samples(root, "val"):
            rgb = cv2.cvtColor(cv2.imread(str(s.image)), cv2.COLOR_BGR2RGB)
            gts.append(hand_metrics.train_ids(cv2.imread(str(s.gt), cv2.IMREAD_UNCHANGED)))
            preds.append(pipeline.process(rgb).mask.copy())
    return hand_metrics.confusion(gts, preds)


def test_model_whole_equals_node_pipeline_and_writes_report(root, tiny_onnx, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["eval", "cityscapes", "--root", str(root), "--model", str(tiny_onnx), "--threads", "1",
                 "--out", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    confusion = _expected_confusion(root, tiny_onnx)
    assert np.array_equal(np.asarray(report["confusion_matrix"]), confusion)
    assert report["num_images"] == 3 and report["num_instance_images"] == 3
    assert report["miou"] == pytest.approx(hand_metrics.miou(confusion), abs=1e-9) and report["iiou"] is not None
    assert report["pixel_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-9)
    assert report["model"]["name"] == "metaseg-t" and report["model"]["input_size"] == [64, 128]
    assert len(report["model"]["sha256"]) == 64
    assert report["latency_ms"]["inference"]["count"] == 3
    conf = np.asarray(report["confusion_matrix"])
    for t, name in enumerate(report["classes"]):  # null exactly where neither ground truth nor prediction has it
        assert (report["per_class_iou"][name] is None) == (conf[t].sum() + conf[:, t].sum() == 0)
    assert (tmp_path / "report.md").read_text().startswith("# metaseg-t: mIoU")
    assert cv2.imread(str(tmp_path / "report_confusion.png")).shape[2] == 3
    assert "mIoU" in capsys.readouterr().out


def test_augmented_inference_properties(tiny_onnx):
    rgb = cv2.GaussianBlur(np.random.default_rng(3).integers(0, 256, (64, 128, 3), dtype=np.uint8), (5, 5), 0)
    with OnnxRuntimeBackend(str(tiny_onnx), threads=1) as backend:
        pipeline = SegPipeline(backend, "camera")
        labels = pipeline.process(rgb).mask.copy()
        # One model-size window: softmax argmax of the logits = the graph's own labels.
        slide = Predictor(pipeline, InferenceConfig("slide")).predict(rgb)
        assert np.mean(slide == labels) > 0.999
        # Flip TTA is mirror-equivariant, exactly.
        flip = Predictor(pipeline, InferenceConfig("whole", (1.0, 1.5), flip=True))
        a = flip.predict(rgb)
        b = flip.predict(np.ascontiguousarray(rgb[:, ::-1]))
        assert np.array_equal(a, b[:, ::-1])
        # Sliding over a larger image covers it with model-size windows (3 x 3 at the default 2/3 stride).
        big = cv2.resize(rgb, (256, 128))
        out = Predictor(pipeline, InferenceConfig("slide")).predict(big)
        assert out.shape == (128, 256) and out.max() < 19


def test_window_starts_cover_and_end_flush():
    assert _window_starts(64, 64, 42) == [0]
    assert _window_starts(128, 64, 42) == [0, 42, 64]
    assert _window_starts(100, 64, 100) == [0, 36]


def test_workers_and_slide_tta_via_cli(root, tiny_onnx, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    common = ["eval", "cityscapes", "--root", str(root), "--model", str(tiny_onnx), "--mode", "slide",
              "--scales", "1.0,1.5", "--flip", "--quiet"]
    assert main(common + ["--threads", "1", "--out", str(one)]) == 0
    assert main(common + ["--workers", "2", "--out", str(two)]) == 0
    r1, r2 = json.loads(one.read_text()), json.loads(two.read_text())
    assert r1["confusion_matrix"] == r2["confusion_matrix"] and r1["iiou"] == r2["iiou"]
    assert r1["source"]["mode"] == "slide" and r1["latency_ms"]["inference"]["count"] > 3


def test_model_without_logits_is_refused_for_tta(root, tiny_onnx, tmp_path, capsys):
    model = onnx.load(str(tiny_onnx))
    for prop in model.metadata_props:
        if prop.key == "seg_perception.has_logits":
            prop.value = "false"
    path = tmp_path / "nologits.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "r.json"
    assert main(["eval", "cityscapes", "--root", str(root), "--model", str(path), "--flip", "--out", str(out),
                 "--quiet"]) == 2
    assert "export it with --logits" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("case, message", [
    ("no_root", "is not a folder"),
    ("no_gt", "no ground-truth folder"),
    ("no_pred_dir", "predictions folder"),
    ("unmatched", "no prediction matching 'aachen_000002_000019*.png'"),
    ("duplicate", "2 predictions"),
    ("size", "size mismatch"),
    ("rgb_pred", "channels; label images must have one"),
])
def test_bad_input_fails_clearly_without_report(case, message, root, tmp_path, capsys):
    preds = tmp_path / "preds"
    preds.mkdir()
    for s in find_samples(root, "val"):
        cv2.imwrite(str(preds / f"{s.key}_pred.png"), np.full((H, W), 7, np.uint8))
    args_root = root
    if case == "no_root":
        args_root = tmp_path / "missing"
    elif case == "no_gt":
        args_root = tmp_path
    elif case == "no_pred_dir":
        preds = tmp_path / "nothing"
    elif case == "unmatched":
        (preds / "aachen_000002_000019_pred.png").unlink()
    elif case == "duplicate":
        cv2.imwrite(str(preds / "aachen_000002_000019_other.png"), np.full((H, W), 7, np.uint8))
    elif case == "size":
        cv2.imwrite(str(preds / "aachen_000002_000019_pred.png"), np.full((H, W + 2), 7, np.uint8))
    elif case == "rgb_pred":
        cv2.imwrite(str(preds / "aachen_000002_000019_pred.png"), np.full((H, W, 3), 7, np.uint8))
    out = tmp_path / "report.json"
    assert main(["eval", "cityscapes", "--root", str(args_root), "--predictions", str(preds), "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("seg-perception eval cityscapes: error:")
    assert not out.exists() and not (tmp_path / "report.md").exists()


def test_palette_predictions_read_as_indices(root, tmp_path):
    from PIL import Image

    preds = tmp_path / "p"
    preds.mkdir()
    for s in find_samples(root, "val"):
        gt = cv2.imread(str(s.gt), cv2.IMREAD_UNCHANGED)
        img = Image.fromarray(gt, mode="P")
        img.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
        img.save(preds / f"{s.key}.png")
    samples = find_samples(root, "val", need_images=False)
    stats, _ = evaluate(CityscapesJob(samples, match_predictions(preds, samples), "labelIds"))
    assert scores(stats).miou == 1.0 and scores(stats).iiou == 1.0


def test_predictor_rejects_bad_config():
    with pytest.raises(ValueError, match="inference mode"):
        InferenceConfig("tiles")
    with pytest.raises(ValueError, match="scales"):
        InferenceConfig(scales=(0.0,))
    assert issubclass(EvalError, RuntimeError)


def test_train_id_predictions_scored_as_label_ids_are_refused_naming_the_flag(root, tmp_path, capsys):
    from seg_perception.eval.metrics import LABEL_TO_TRAIN

    preds = tmp_path / "train_ids"
    preds.mkdir()
    for s in find_samples(root, "val"):  # what seg_node publishes: train ids
        cv2.imwrite(str(preds / f"{s.key}.png"), LABEL_TO_TRAIN[cv2.imread(str(s.gt), cv2.IMREAD_UNCHANGED)])
    out = tmp_path / "r.json"
    args = ["eval", "cityscapes", "--root", str(root), "--predictions", str(preds), "--out", str(out), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "they look like trainIds" in err and "pass --pred-format trainIds" in err and not out.exists()
    assert main(args + ["--pred-format", "trainIds"]) == 0
    assert json.loads(out.read_text())["miou"] == 1.0
    label_ids = tmp_path / "label_ids"
    label_ids.mkdir()
    for s in find_samples(root, "val"):
        cv2.imwrite(str(label_ids / f"{s.key}.png"), cv2.imread(str(s.gt), cv2.IMREAD_UNCHANGED))
    args[5] = str(label_ids)
    assert main(args + ["--pred-format", "trainIds", "--overwrite"]) == 2
    assert "they look like labelIds; pass --pred-format labelIds" in capsys.readouterr().err


def test_ground_truth_with_no_evaluated_pixel_is_an_error(tmp_path, capsys):
    _write_cityscapes(tmp_path / "cs", n=2)
    preds = tmp_path / "preds"
    preds.mkdir()
    for gt in (tmp_path / "cs").glob("gtFine/val/*/*_labelIds.png"):
        cv2.imwrite(str(gt), np.zeros((H, W), np.uint8))  # all 'unlabeled'
        cv2.imwrite(str(preds / gt.name), np.full((H, W), 7, np.uint8))
    out = tmp_path / "r.json"
    assert main(["eval", "cityscapes", "--root", str(tmp_path / "cs"), "--predictions", str(preds), "--out", str(out),
                 "--quiet"]) == 2
    assert "has no evaluated pixel" in capsys.readouterr().err and not out.exists()
