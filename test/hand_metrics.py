"""Scores counted without seg_perception's evaluator, for the expected values of evaluation tests (not a
test module): train ids from cityscapesscripts' own table, a confusion matrix by np.add.at, IoU by its formula."""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import id2label

NUM_CLASSES = 19
_TRAIN_OF_LABEL = np.full(256, 255, np.uint8)
for _id, _label in id2label.items():
    if _id >= 0 and 0 <= _label.trainId < NUM_CLASSES:
        _TRAIN_OF_LABEL[_id] = _label.trainId


def train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes label ids -> train ids, 255 for labels that are not evaluated."""
    return _TRAIN_OF_LABEL[label_ids]


def confusion(gts, preds) -> np.ndarray:
    """[19, 19] pixel counts, ground-truth train id x predicted train id, over pairs of train-id images;
    ground truth 255 is left out."""
    m = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for gt, pred in zip(gts, preds):
        valid = gt < NUM_CLASSES
        np.add.at(m, (gt[valid], pred[valid]), 1)
    return m


def miou(m: np.ndarray) -> float:
    """Mean over the classes that occur (in ground truth or prediction) of TP / (TP + FP + FN)."""
    tp = np.diag(m).astype(float)
    union = m.sum(0) + m.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))
