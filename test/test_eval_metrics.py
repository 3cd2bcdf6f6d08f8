"""Our metrics against cityscapesscripts' evalPixelLevelSemanticLabeling on identical files (to 1e-6)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_perception.eval.cityscapes import CityscapesJob, find_samples, match_predictions
from seg_perception.eval.image_eval import evaluate
from seg_perception.eval.metrics import (CITYSCAPES_CLASSES, LABEL_TO_TRAIN, TRAIN_TO_LABEL, EvalStats, accumulate,
                                         scores)

H, W = 48, 96
CAR, PERSON, CARAVAN, TRAIN_ID_TRAIN = 26, 24, 29, 31  # label ids


def _blocks(rng: np.random.Generator, values: np.ndarray, block: int = 8) -> np.ndarray:
    small = rng.choice(values, size=(H // block, W // block)).astype(np.uint8)
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_NEAREST)


def make_dataset(root: Path, n: int = 4, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Cityscapes-layout gt (labelIds + instanceIds) and label-id predictions with the evaluator's edge cases:
    ignored label ids in gt and predictions, classes absent from the whole set (train, wall never in gt),
    instances of ignored classes (caravan), instance groups without ids (< 1000) and tiny instances."""
    rng = np.random.default_rng(seed)
    in_gt = np.array([0, 1, 4, 6, 7, 8, 11, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 32, 33])
    in_pred = np.array([0, 5, 7, 8, 11, 12, 17, 21, 23, 24, 26, 27, 29, 30, 33])
    out = []
    for i in range(n):
        gt = _blocks(rng, in_gt)
        inst = gt.astype(np.int32)
        for label in (CAR, PERSON, CARAVAN, 25, 27, 28, 32, 33):  # instances: split each region into two ids
            region = gt == label
            k = rng.integers(0, 3)
            inst[region] = label * 1000 + k
            inst[region & (np.arange(W)[None, :] > W // 2)] = label * 1000 + k + 1
        inst[(gt == CAR) & (np.arange(H)[:, None] < 8)] = CAR  # a car group without instance id
        inst[0, 0], gt[0, 0] = CAR * 1000 + 7, CAR  # a one-pixel instance
        pred = gt.copy()
        flip = rng.random((H, W)) < 0.3
        pred[flip] = rng.choice(in_pred, size=int(flip.sum()))
        if i == 0:
            pred[gt == CAR] = CARAVAN  # an ignored class predicted on cars: a vehicle hit for category iIoU
        city = "aachen" if i % 2 else "bochum"
        key = f"{city}_{i:06d}_000019"
        (root / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
        (root / "results" / city).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "gtFine" / "val" / city / f"{key}_gtFine_labelIds.png"), gt)
        cv2.imwrite(str(root / "gtFine" / "val" / city / f"{key}_gtFine_instanceIds.png"), inst.astype(np.uint16))
        cv2.imwrite(str(root / "results" / city / f"{key}_leftImg8bit.png"), pred)
        out.append((gt, pred, inst))
    return out


def official(preds: list[Path], gts: list[Path], instances: bool = True) -> dict:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    ev.args.quiet = True
    ev.args.JSONOutput = False
    ev.args.evalInstLevelScore = instances
    return ev.evaluateImgLists([str(p) for p in preds], [str(g) for g in gts], ev.args)


def assert_equal_to_official(ours, ref: dict, instances: bool = True) -> None:
    def same(a, b, what):
        if b is None or (isinstance(b, float) and math.isnan(b)):
            assert a is None, f"{what}: ours {a}, official NaN"
        else:
            assert a is not None and abs(a - b) < 1e-6, f"{what}: ours {a}, official {b}"

    for name in CITYSCAPES_CLASSES:
        same(ours.per_class_iou[name], ref["classScores"][name], f"IoU {name}")
    same(ours.miou, ref["averageScoreClasses"], "mIoU")
    for name, value in ours.category_iou.items():
        same(value, ref["categoryScores"][name], f"category IoU {name}")
    same(ours.mean_category_iou, ref["averageScoreCategories"], "mean category IoU")
    if instances:
        for name, value in ours.per_class_iiou.items():
            same(value, ref["classInstScores"][name], f"iIoU {name}")
        same(ours.iiou, ref["averageScoreInstClasses"], "iIoU")
        for name, value in ours.category_iiou.items():
            same(value, ref["categoryInstScores"][name], f"category iIoU {name}")
        same(ours.mean_category_iiou, ref["averageScoreInstCategories"], "mean category iIoU")
    conf = np.asarray(ref["confMatrix"])[np.ix_(TRAIN_TO_LABEL, TRAIN_TO_LABEL)]
    np.testing.assert_array_equal(ours.confusion_matrix, conf)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    arrays = make_dataset(root)
    samples = find_samples(root, "val", need_images=False)
    return root, samples, arrays


def test_label_id_predictions_equal_official(dataset):
    root, samples, _ = dataset
    preds = match_predictions(root / "results", samples)
    stats, _ = evaluate(CityscapesJob(samples, preds, "labelIds"))
    ours = scores(stats)
    ref = official(preds, [s.gt for s in samples])
    assert_equal_to_official(ours, ref)
    # The edge cases are really in the data: absent classes score None, the caravan-on-car case moves iIoU.
    assert ours.per_class_iou["train"] is None and ours.per_class_iou["wall"] == 0.0
    assert ours.category_iiou["vehicle"] > ours.per_class_iiou["car"]
    assert stats.num_images == 4 and stats.num_instance_images == 4


def test_train_id_predictions_equal_official_on_label_ids(dataset, tmp_path):
    """Train-id PNGs (our model's output) score like their label-id equivalent."""
    root, samples, arrays = dataset
    label_preds, train_preds = [], []
    for s, (_, pred, _) in zip(samples, arrays):
        train = LABEL_TO_TRAIN[pred]
        as_label = np.where(train == 255, 0, TRAIN_TO_LABEL[np.minimum(train, 18)]).astype(np.uint8)
        train_preds.append(tmp_path / "train" / f"{s.key}_pred.png")
        label_preds.append(tmp_path / "label" / f"{s.key}_pred.png")
        for path, img in ((train_preds[-1], train), (label_preds[-1], as_label)):
            path.parent.mkdir(exist_ok=True)
            cv2.imwrite(str(path), img)
    stats, _ = evaluate(CityscapesJob(samples, match_predictions(tmp_path / "train", samples), "trainIds"))
    assert_equal_to_official(scores(stats), official(label_preds, [s.gt for s in samples]))


def test_without_instances_and_pixel_accuracy(dataset):
    root, samples, arrays = dataset
    preds = match_predictions(root / "results", samples)
    stats, _ = evaluate(CityscapesJob(samples, preds, "labelIds", instances=False))
    ours = scores(stats)
    assert_equal_to_official(ours, official(preds, [s.gt for s in samples], instances=False), instances=False)
    assert ours.iiou is None
    gt = np.concatenate([LABEL_TO_TRAIN[g].ravel() for g, _, _ in arrays])
    pred = np.concatenate([LABEL_TO_TRAIN[p].ravel() for _, p, _ in arrays])
    valid = gt != 255
    assert ours.pixel_accuracy == pytest.approx(np.mean(gt[valid] == pred[valid]), abs=1e-12)


def test_workers_give_identical_stats(dataset):
    root, samples, _ = dataset
    preds = match_predictions(root / "results", samples)
    one, _ = evaluate(CityscapesJob(samples, preds, "labelIds"))
    two, _ = evaluate(CityscapesJob(samples, preds, "labelIds"), workers=2)
    np.testing.assert_array_equal(one.matrix, two.matrix)
    np.testing.assert_allclose(one.inst_tp, two.inst_tp, rtol=1e-12)
    assert two.num_images == 4


def test_perfect_and_empty_predictions():
    gt = np.full((4, 6), 7, np.uint8)  # all road
    gt[:, :2] = 0  # unlabeled: ignored
    stats = EvalStats()
    accumulate(stats, gt, LABEL_TO_TRAIN[gt], "labelIds", "trainIds")
    s = scores(stats)
    assert s.per_class_iou["road"] == 1.0 and s.miou == 1.0 and s.pixel_accuracy == 1.0
    assert s.per_class_iou["sky"] is None and s.category_iou["flat"] == 1.0
    stats = EvalStats()
    accumulate(stats, gt, np.full_like(gt, 255), "labelIds", "trainIds")  # nothing predicted
    s = scores(stats)
    assert s.per_class_iou["road"] == 0.0 and s.ignored_predictions[0] == 16
    assert s.pixel_accuracy == 0.0 and s.miou == 0.0  # "no label" is a wrong answer, not an abstention
    with pytest.raises(ValueError, match="ground truth is 6x4 but prediction is 6x3"):
        accumulate(stats, gt, gt[:3], "labelIds", "labelIds")


def test_large_image_path_counts_the_same(dataset, monkeypatch):
    """Images of 2**24 pixels or more are counted with np.bincount (float32 histograms would round)."""
    import seg_perception.eval.metrics as metrics

    _, _, arrays = dataset
    small, large = EvalStats(), EvalStats()
    for gt, pred, inst in arrays:
        accumulate(small, gt, pred, "labelIds", "labelIds", inst)
    monkeypatch.setattr(metrics, "_EXACT_FLOAT32", 0)
    for gt, pred, inst in arrays:
        accumulate(large, gt, pred, "labelIds", "labelIds", inst)
    np.testing.assert_array_equal(small.matrix, large.matrix)
    np.testing.assert_allclose(small.inst_tp, large.inst_tp, rtol=1e-12)
    np.testing.assert_allclose(small.cat_inst_fn, large.cat_inst_fn, rtol=1e-12)


def test_scores_computed_by_hand():
    """Ten pixels, every score worked out on paper: an ignored ground-truth pixel, a prediction on it,
    a 'no label' prediction (255) on road, and classes confused with one another."""
    gt = np.array([[7, 7, 7, 7, 8, 8, 26, 26, 0, 0, 7]], np.uint8)  # label ids: road, sidewalk, car, unlabeled
    pred = np.array([[0, 0, 0, 1, 1, 13, 13, 13, 2, 255, 255]], np.uint8)  # train ids: road, sidewalk, car, building
    stats = EvalStats()
    accumulate(stats, gt, pred, "labelIds", "trainIds")
    s = scores(stats)
    # road: 3 hits, missed once as sidewalk and once as no label; sidewalk: 1 hit, 1 missed as car, 1 road
    # pixel taken for it; car: 2 hits, 1 sidewalk pixel taken for it. Building is predicted only where the
    # ground truth is ignored: nothing to score.
    assert s.per_class_iou["road"] == pytest.approx(3 / 5)
    assert s.per_class_iou["sidewalk"] == pytest.approx(1 / 3)
    assert s.per_class_iou["car"] == pytest.approx(2 / 3)
    assert s.per_class_iou["building"] is None and s.per_class_iou["sky"] is None
    assert s.miou == pytest.approx((3 / 5 + 1 / 3 + 2 / 3) / 3)
    assert s.pixel_accuracy == pytest.approx(6 / 9)  # 9 evaluated pixels, the 255 one among them
    assert s.category_iou["flat"] == pytest.approx(5 / 7) and s.category_iou["vehicle"] == pytest.approx(2 / 3)
    assert s.mean_category_iou == pytest.approx((5 / 7 + 2 / 3) / 2)
    assert s.confusion_matrix[0].tolist() == [3, 1] + [0] * 17  # road row: 3 road, 1 sidewalk, 255 not a column
    assert s.ignored_predictions[0] == 1
