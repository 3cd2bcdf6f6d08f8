"""Evaluation of a model with its own classes: a third-party SegFormer wrapped with five classes of ours (and its
logits, for sliding windows), scored
on a folder of images and labels (`eval folder`), on a bag (`eval bag`) and on a fleet of bags (`eval bags`),
each report naming the model card's classes and holding the confusion matrix counted here by hand."""

from __future__ import annotations

import json
import struct
import zlib

import cv2
import numpy as np
import pytest

pytest.importorskip("transformers", reason="the third-party model comes from transformers (the [test] extra)")
from third_party_models import OWN_CLASSES, segformer_onnx, write_classes  # noqa: E402

from seg_perception.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from seg_perception.bags import write_drive_bag  # noqa: E402
from seg_perception.cli import main  # noqa: E402
from seg_perception.core.pipeline import SegPipeline  # noqa: E402
from seg_perception.eval.class_metrics import ClassStats  # noqa: E402

NAMES = [c["name"] for c in OWN_CLASSES]
K = len(NAMES)
H, W = 72, 108  # camera size, not the model's 64x96


def hand_confusion(gts, preds, k: int = K) -> np.ndarray:
    """[k, k + 1] counts, ground truth x prediction (last column: no class), ground truth 255 left out."""
    m = np.zeros((k, k + 1), np.int64)
    for gt, pred in zip(gts, preds):
        valid = gt != 255
        np.add.at(m, (gt[valid], np.minimum(pred[valid], k)), 1)
    return m


def test_class_stats_equal_a_count_by_hand():
    rng = np.random.default_rng(0)
    gts = [rng.choice([0, 1, 2, 4, 255], size=(30, 40)).astype(np.uint8) for _ in range(3)]  # class 3 never occurs
    preds = [rng.choice([0, 1, 2, 4, 255], size=(30, 40)).astype(np.uint8) for _ in range(3)]
    whole, first, rest = ClassStats(NAMES), ClassStats(NAMES), ClassStats(NAMES)
    for i, (gt, pred) in enumerate(zip(gts, preds)):
        whole.add(gt, pred)
        (first if i == 0 else rest).add(gt, pred)
    m = hand_confusion(gts, preds)
    assert np.array_equal(whole.matrix, m) and np.array_equal(first.merge(rest).matrix, m)
    s = whole.scores()
    tp = np.diag(m[:, :K]).astype(float)
    union = m.sum(1) + m[:, :K].sum(0) - tp  # a "no class" prediction is a miss, never a hit
    assert s.class_names == tuple(NAMES) and s.per_class_iou["obstacle"] is None
    for c, name in enumerate(NAMES):
        if c != 3:
            assert s.per_class_iou[name] == pytest.approx(tp[c] / union[c], abs=1e-12)
    assert s.miou == pytest.approx(np.mean([tp[c] / union[c] for c in (0, 1, 2, 4)]), abs=1e-12)
    assert s.pixel_accuracy == pytest.approx(tp.sum() / m.sum(), abs=1e-12)
    assert s.ignored_predictions.tolist() == m[:, K].tolist() and s.category_iou == {} and s.iiou is None


def test_ground_truth_of_another_class_set_is_refused():
    gt = np.zeros((4, 4), np.uint8)
    gt[1, 1] = 7
    with pytest.raises(ValueError, match="ground truth holds id 7, but the model has 5 classes"):
        ClassStats(NAMES).add(gt, np.zeros_like(gt))


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    graph = segformer_onnx(root / "segformer.onnx")
    out = root / "wrapped.onnx"
    assert main(["wrap", str(graph), "--out", str(out), "--input-size", "64x96", "--layout", "nchw", "--logits",
                 "--classes", str(write_classes(root / "classes.yaml"))]) == 0
    return out


def scenes(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [cv2.resize(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8), (W, H), interpolation=cv2.INTER_CUBIC)
            for _ in range(n)]


def predictions(model, images) -> list[np.ndarray]:
    """What seg_node publishes for each image."""
    with OnnxRuntimeBackend(str(model), threads=1) as backend:
        pipeline = SegPipeline(backend, "camera")
        return [pipeline.process(rgb).mask.copy() for rgb in images]


def labels_from(preds) -> list[np.ndarray]:
    """Ground truth that disagrees with the prediction in one block and is ignored in another."""
    out = []
    for pred in preds:
        gt = pred.copy()
        gt[:20, :30] = (gt[:20, :30] + 1) % K
        gt[40:, 60:] = 255
        out.append(gt)
    return out


def test_eval_folder_scores_the_models_own_classes(own_model, tmp_path):
    images = scenes(3)
    gts = labels_from(predictions(own_model, images))
    for split in ("images", "labels", "labels_plus_one"):
        (tmp_path / split / "val").mkdir(parents=True)
    for i, (rgb, gt) in enumerate(zip(images, gts)):
        cv2.imwrite(str(tmp_path / "images" / "val" / f"f{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp_path / "labels" / "val" / f"f{i}.png"), gt)
        cv2.imwrite(str(tmp_path / "labels_plus_one" / "val" / f"f{i}.png"), (gt + 1).astype(np.uint8))  # 255 -> 0
    expected = hand_confusion(gts, predictions(own_model, images))

    def run(labels: str, out: str, *extra: str) -> dict:
        assert main(["eval", "folder", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / labels),
                     "--model", str(own_model), "--out", str(tmp_path / out), "--threads", "1", "--quiet",
                     *extra]) == 0
        return json.loads((tmp_path / out).read_text())

    report = run("labels", "r.json")
    assert report["classes"] == NAMES and list(report["per_class_iou"]) == NAMES
    assert np.array_equal(np.asarray(report["confusion_matrix"]), expected[:, :K])
    assert report["ignored_predictions"] == expected[:, K].tolist()
    assert report["num_images"] == 3 and report["category_iou"] == {} and report["iiou"] is None
    assert report["source"]["dataset"] == "folder" and report["latency_ms"]["inference"]["count"] == 3
    md = (tmp_path / "r.md").read_text()
    assert "| obstacle |" in md and "category" not in md
    assert cv2.imread(str(tmp_path / "r_confusion.png")) is not None
    # ADE20K-style labels (0 = ignore, class c stored as c + 1), and two worker processes: the same numbers
    again = run("labels_plus_one", "r2.json", "--reduce-zero-label", "--workers", "2")
    assert again["confusion_matrix"] == report["confusion_matrix"] and again["miou"] == report["miou"]
    # sliding windows over the 72x108 images (the wrapped graph's logits): 2 x 2 windows of 64x96 per image
    slide = run("labels", "r3.json", "--mode", "slide")
    assert slide["classes"] == NAMES and slide["latency_ms"]["inference"]["count"] == 12


def test_eval_folder_refuses_labels_of_another_class_set(own_model, tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.jpg"), np.zeros((H, W, 3), np.uint8))
    gt = np.zeros((H, W), np.uint8)
    gt[5, 5] = 12  # a Cityscapes train id, not one of the five classes
    cv2.imwrite(str(tmp_path / "lab" / "a.png"), gt)
    argv = ["eval", "folder", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"), "--model",
            str(own_model), "--out", str(tmp_path / "r.json"), "--threads", "1", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a.png" in err and "holds id 12, but the model has 5 classes" in err
    assert not (tmp_path / "r.json").exists()
    (tmp_path / "lab" / "b.png").write_bytes((tmp_path / "lab" / "a.png").read_bytes())  # no image b.*
    assert main(argv) == 2
    assert "1 of 2 labels have no image" in capsys.readouterr().err


def test_eval_bag_and_bags_score_the_models_own_classes(own_model, tmp_path):
    images = scenes(3, seed=1)
    gts = labels_from(predictions(own_model, images))
    bag = write_drive_bag(tmp_path / "bags" / "drive", list(zip(images, gts)), storage="mcap")
    expected = hand_confusion(gts, predictions(own_model, images))
    topics = ["--image-topic", "/camera/image_raw", "--gt-topic", "/camera/semantic_gt", "--model", str(own_model),
              "--threads", "1", "--quiet"]
    assert main(["eval", "bag", str(bag), "--out", str(tmp_path / "r.json"), *topics]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["classes"] == NAMES and np.array_equal(np.asarray(report["confusion_matrix"]), expected[:, :K])
    assert main(["eval", "bags", str(tmp_path / "bags"), "--out", str(tmp_path / "fleet"), *topics]) == 0
    fleet = json.loads((tmp_path / "fleet" / "report.json").read_text())
    assert fleet["classes"] == NAMES and fleet["confusion_matrix"] == report["confusion_matrix"]
    assert fleet["bags"][0]["miou"] == report["miou"]


def huge_png(path, height: int, width: int) -> None:
    """A valid all-zero 8-bit grey PNG of that size, written row by row: a small file for a huge image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate, row, body = zlib.compressobj(9), bytes(width + 1), bytearray()  # filter byte 0, then the row
    for _ in range(height):
        body += deflate.compress(row)
    body += deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", bytes(body))
                     + chunk(b"IEND", b""))


def test_a_small_file_claiming_a_huge_image_is_refused_before_decoding(own_model, tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.zeros((H, W, 3), np.uint8))
    huge_png(tmp_path / "lab" / "a.png", 8000, 8000)  # 64 MP, over the 50 MP limit; OpenCV would decode it
    assert cv2.imread(str(tmp_path / "lab" / "a.png"), cv2.IMREAD_UNCHANGED).shape == (8000, 8000)
    assert main(["eval", "folder", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"), "--model",
                 str(own_model), "--out", str(tmp_path / "r.json"), "--threads", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "8000x8000 label image is 64000000 pixels, more than" in err and "a.png" in err
