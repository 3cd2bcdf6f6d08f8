"""Per-class IoU for any class set: the model card's own classes, ground truth in the same class ids.

The scores of mmsegmentation's `IoUMetric` (per class intersection over union, mIoU as the mean over the classes
that occur, aAcc), from one confusion matrix per dataset. Ground truth 255 is ignored; any other id the model
has no class for is refused, since it means the labels were made for another class set. Cityscapes' own classes
keep their official metrics (eval.metrics: label ids, categories, instance-weighted iIoU); `stats_for` picks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from seg_perception.eval.metrics import EvalStats, Scores, check_pair, mean_scored, pair_counts, ratio
from seg_perception.labels import CITYSCAPES_CLASSES, IGNORE_ID


@dataclass
class ClassStats:
    """A confusion matrix in the model's class ids, summed over images; stats of separate workers add up."""

    class_names: tuple[str, ...]
    # ground-truth class x predicted class; the last column counts predictions that are no class (255)
    matrix: np.ndarray = field(default=None)
    num_images: int = 0
    num_instance_images: int = 0  # no instance scores for other class sets

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        if self.matrix is None:
            self.matrix = np.zeros((len(self.class_names), len(self.class_names) + 1), np.int64)

    def merge(self, other: "ClassStats") -> "ClassStats":
        if other.class_names != self.class_names:
            raise ValueError("statistics of different class sets cannot be added")
        self.matrix += other.matrix
        self.num_images += other.num_images
        return self

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """One image: gt and pred uint8 [H, W] in the model's class ids, gt 255 ignored."""
        check_pair(gt, pred)
        k = len(self.class_names)
        counts = pair_counts(gt, pred).reshape(256, 256)
        foreign = np.flatnonzero(counts[k:IGNORE_ID].sum(axis=1))
        if foreign.size:
            raise ValueError(f"ground truth holds id {k + foreign[0]}, but the model has {k} classes "
                             f"(ids 0..{k - 1}, {IGNORE_ID} = ignore): labels made for another class set?")
        rows = counts[:k].astype(np.int64)
        self.matrix[:, :k] += rows[:, :k]
        self.matrix[:, k] += rows[:, k:].sum(axis=1)
        self.num_images += 1

    def scores(self) -> Scores:
        k = len(self.class_names)
        confusion = self.matrix[:, :k]
        tp = np.diag(confusion)
        union = self.matrix.sum(axis=1) + confusion.sum(axis=0) - tp
        per_class = {name: ratio(tp[c], union[c]) for c, name in enumerate(self.class_names)}
        return Scores(class_names=self.class_names, per_class_iou=per_class, miou=mean_scored(per_class.values()),
                      category_iou={}, mean_category_iou=None, pixel_accuracy=ratio(tp.sum(), self.matrix.sum()),
                      per_class_iiou={}, iiou=None, category_iiou={}, mean_category_iiou=None,
                      confusion_matrix=confusion.copy(), ignored_predictions=self.matrix[:, k].copy())


def stats_for(class_names) -> EvalStats | ClassStats:
    """Empty statistics for a model of these classes: Cityscapes' official metrics for its 19 classes."""
    return EvalStats() if tuple(class_names) == CITYSCAPES_CLASSES else ClassStats(tuple(class_names))
