"""Cityscapes pixel-level metrics from one dataset-level confusion matrix, equal to cityscapesscripts'
`evalPixelLevelSemanticLabeling` (class / category IoU, instance-weighted iIoU), from a few histograms per image.

Rows of the matrix are ground-truth train ids (plus one row collecting ignored pixels); columns are predicted
Cityscapes *label ids* (plus one column for values that are no label). Columns stay in label-id space because the
official category iIoU counts a prediction of an ignored label (caravan, trailer) inside a car as a vehicle hit.
ROS-free and torch-free: numpy and OpenCV only, so evaluation workers start fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import category2labels, labels

from seg_perception.labels import CITYSCAPES_CLASSES, IGNORE_ID

# --- the label table, as lookup arrays -------------------------------------------------------------------
_EVAL_LABELS = [lb for lb in labels if lb.id >= 0]
NUM_LABEL_IDS = max(lb.id for lb in _EVAL_LABELS) + 1  # 34
NUM_CLASSES = len(CITYSCAPES_CLASSES)  # 19 train ids
IGNORED_ROW = NUM_CLASSES  # ground truth that is not evaluated
NUM_ROWS = NUM_CLASSES + 1
OTHER_COLUMN = NUM_LABEL_IDS  # prediction that is no label id (>= 34, or train id 255)
NUM_COLUMNS = NUM_LABEL_IDS + 1
INSTANCE_ID_MIN = 1000  # instanceIds above this encode label_id * 1000 + k

# The official evaluator's average object size per class, the weight of every instance in iIoU.
AVG_CLASS_SIZE: dict[str, float] = {
    "bicycle": 4672.3249222261, "caravan": 36771.8241758242, "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518, "bus": 35732.1511111111, "train": 67583.7075812274, "car": 12794.0202738185,
    "person": 3462.4756337644, "truck": 27855.1264367816, "trailer": 16926.9763313609,
}

_BY_ID = {lb.id: lb for lb in _EVAL_LABELS}
TRAIN_TO_LABEL = np.zeros(NUM_CLASSES, np.intp)  # train id -> label id
for _lb in _EVAL_LABELS:
    if not _lb.ignoreInEval:
        TRAIN_TO_LABEL[_lb.trainId] = _lb.id
if [_BY_ID[i].name for i in TRAIN_TO_LABEL] != list(CITYSCAPES_CLASSES):
    raise ImportError("cityscapesscripts' train ids disagree with seg_perception.labels.CITYSCAPES_CLASSES")


def _lut(values: dict[int, int], default: int) -> np.ndarray:
    lut = np.full(256, default, np.uint8)
    for key, value in values.items():
        lut[key] = value
    return lut


# uint8[256] tables: raw pixel value -> matrix row / column.
GT_ROW_FROM_LABEL_IDS = _lut({lb.id: lb.trainId for lb in _EVAL_LABELS if not lb.ignoreInEval}, IGNORED_ROW)
GT_ROW_FROM_TRAIN_IDS = _lut({t: t for t in range(NUM_CLASSES)}, IGNORED_ROW)
PRED_COL_FROM_LABEL_IDS = _lut({i: i for i in range(NUM_LABEL_IDS)}, OTHER_COLUMN)
PRED_COL_FROM_TRAIN_IDS = _lut({t: int(TRAIN_TO_LABEL[t]) for t in range(NUM_CLASSES)}, OTHER_COLUMN)
LABEL_TO_TRAIN = _lut({lb.id: lb.trainId for lb in _EVAL_LABELS if not lb.ignoreInEval}, IGNORE_ID)

# Categories scored at pixel level: those with at least one evaluated label (all but 'void').
CATEGORIES: tuple[str, ...] = tuple(c for c in category2labels
                                    if any(not lb.ignoreInEval and lb.id >= 0 for lb in category2labels[c]))
_CATEGORY_ROWS = {c: [lb.trainId for lb in category2labels[c] if not lb.ignoreInEval and lb.id >= 0]
                  for c in CATEGORIES}
# Instance categories: every label in them has instances; their columns include ignored labels (caravan).
INSTANCE_CATEGORIES: tuple[str, ...] = tuple(
    c for c in category2labels if all(lb.hasInstances for lb in category2labels[c] if lb.id >= 0))
_INSTANCE_CATEGORY_COLS = {c: [lb.id for lb in category2labels[c] if lb.id >= 0] for c in INSTANCE_CATEGORIES}
# Classes scored by iIoU: train ids of evaluated labels with instances.
INSTANCE_CLASSES: tuple[int, ...] = tuple(lb.trainId for lb in _EVAL_LABELS if lb.hasInstances and not lb.ignoreInEval)

_NO_CATEGORY = 255
# label id of an instance -> train id of its class when iIoU scores it, else IGNORE_ID
_INSTANCE_TRAIN = _lut({int(TRAIN_TO_LABEL[t]): t for t in INSTANCE_CLASSES}, IGNORE_ID)
# label id of an instance -> its instance category index, else _NO_CATEGORY
_INSTANCE_CATEGORY = _lut({int(TRAIN_TO_LABEL[t]): INSTANCE_CATEGORIES.index(_BY_ID[TRAIN_TO_LABEL[t]].category)
                          for t in INSTANCE_CLASSES}, _NO_CATEGORY)
# predicted column -> instance category index it counts for, else a value no instance category has
_PRED_INSTANCE_CATEGORY = np.full(NUM_COLUMNS, _NO_CATEGORY - 1, np.uint8)
for _k, _c in enumerate(INSTANCE_CATEGORIES):
    _PRED_INSTANCE_CATEGORY[_INSTANCE_CATEGORY_COLS[_c]] = _k
_INSTANCE_WEIGHT = np.zeros(256)  # label id -> average class size
for _lb in _EVAL_LABELS:
    _INSTANCE_WEIGHT[_lb.id] = AVG_CLASS_SIZE.get(_lb.name, 0.0)

# Both raw uint8 images packed as gt << 8 | pred index this table of matrix cells (row * NUM_COLUMNS + col).
_PAIR_BITS = 8
_EXACT_FLOAT32 = 1 << 24  # OpenCV histograms count in float32: exact for images smaller than this


def _pair_cells(gt_lut: np.ndarray, pred_lut: np.ndarray) -> np.ndarray:
    return (gt_lut.astype(np.intp)[:, None] * NUM_COLUMNS + pred_lut.astype(np.intp)[None, :]).ravel()


_PAIR_CELLS = {(g, p): _pair_cells(GT_ROW_FROM_LABEL_IDS if g == "labelIds" else GT_ROW_FROM_TRAIN_IDS,
                                   PRED_COL_FROM_LABEL_IDS if p == "labelIds" else PRED_COL_FROM_TRAIN_IDS)
               for g in ("labelIds", "trainIds") for p in ("labelIds", "trainIds")}
ID_FORMATS = ("labelIds", "trainIds")
_PRED_COL_LUT = {"labelIds": PRED_COL_FROM_LABEL_IDS, "trainIds": PRED_COL_FROM_TRAIN_IDS}
_PRED_CATEGORY_LUT = {fmt: _PRED_INSTANCE_CATEGORY[lut] for fmt, lut in _PRED_COL_LUT.items()}
# Instance ids of the labels iIoU can score, label_id * 1000 + k, span one contiguous range of ids.
_INST_BASE = int(TRAIN_TO_LABEL[list(INSTANCE_CLASSES)].min()) * INSTANCE_ID_MIN
_INST_SPAN = (int(TRAIN_TO_LABEL[list(INSTANCE_CLASSES)].max()) + 1) * INSTANCE_ID_MIN - _INST_BASE
_INST_SLOT = _INST_SPAN + 1  # one more bin per kind of hit for pixels outside every scorable instance
assert _INST_BASE > INSTANCE_ID_MIN and 4 * _INST_SLOT <= 1 << 16


# --- accumulation -----------------------------------------------------------------------------------------
@dataclass
class EvalStats:
    """Everything the scores need, summed over images; stats of separate workers add up exactly."""

    matrix: np.ndarray = field(default_factory=lambda: np.zeros((NUM_ROWS, NUM_COLUMNS), np.int64))
    inst_tp: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES))  # instance-weighted, per train id
    inst_fn: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES))
    cat_inst_tp: np.ndarray = field(default_factory=lambda: np.zeros(len(INSTANCE_CATEGORIES)))
    cat_inst_fn: np.ndarray = field(default_factory=lambda: np.zeros(len(INSTANCE_CATEGORIES)))
    num_images: int = 0
    num_instance_images: int = 0

    def merge(self, other: "EvalStats") -> "EvalStats":
        self.matrix += other.matrix
        self.inst_tp += other.inst_tp
        self.inst_fn += other.inst_fn
        self.cat_inst_tp += other.cat_inst_tp
        self.cat_inst_fn += other.cat_inst_fn
        self.num_images += other.num_images
        self.num_instance_images += other.num_instance_images
        return self

    class_names = CITYSCAPES_CLASSES

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """One image of train ids (255: ignored), as bags and the demo hold them."""
        accumulate(self, gt, pred, "trainIds", "trainIds")

    def scores(self) -> "Scores":
        return scores(self)


def _histogram(values: np.ndarray, bins: int) -> np.ndarray:
    """Counts of the values 0..bins-1 of a uint8/uint16 image, as float64 (exact integers)."""
    if values.size < _EXACT_FLOAT32:  # far faster than np.bincount, which first casts to intp
        return cv2.calcHist([values], [0], None, [bins], [0, bins]).ravel().astype(np.float64)
    return np.bincount(values.ravel(), minlength=bins)[:bins].astype(np.float64)


def pair_counts(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """float64 [256 * 256] counts of the (gt, pred) value pairs of two uint8 images, gt-major (exact integers)."""
    if gt.size < _EXACT_FLOAT32:
        return cv2.calcHist([gt, pred], [0, 1], None, [256, 256], [0, 256, 0, 256]).ravel().astype(np.float64)
    pair = gt.astype(np.uint16)
    pair <<= _PAIR_BITS
    pair |= pred
    return _histogram(pair, 1 << (2 * _PAIR_BITS))


def check_pair(gt: np.ndarray, pred: np.ndarray) -> None:
    """Raise ValueError unless gt and pred are uint8 images of one size."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth is {gt.shape[1]}x{gt.shape[0]} but prediction is "
                         f"{pred.shape[1]}x{pred.shape[0]}")
    if gt.dtype != np.uint8 or pred.dtype != np.uint8:
        raise ValueError(f"ids must be uint8, got ground truth {gt.dtype} and prediction {pred.dtype}")


def accumulate(stats: EvalStats, gt: np.ndarray, pred: np.ndarray, gt_format: str = "labelIds",
               pred_format: str = "trainIds", instance_ids: np.ndarray | None = None) -> None:
    """Add one image. gt, pred: uint8 [H, W] in `gt_format` / `pred_format` ids; instance_ids: Cityscapes
    instanceIds [H, W] (label_id * 1000 + k) for iIoU, or None."""
    check_pair(gt, pred)
    # One 256 x 256 histogram of the raw (gt, pred) pairs, folded into the matrix through a table of cells.
    counts = pair_counts(gt, pred)
    nonzero = np.flatnonzero(counts)
    np.add.at(stats.matrix.reshape(-1), _PAIR_CELLS[gt_format, pred_format][nonzero],
              counts[nonzero].astype(np.int64))
    stats.num_images += 1
    if instance_ids is not None:
        if instance_ids.shape != gt.shape:
            raise ValueError(f"instance ids are {instance_ids.shape[1]}x{instance_ids.shape[0]} but ground truth "
                             f"is {gt.shape[1]}x{gt.shape[0]}")
        _accumulate_instances(stats, instance_ids, pred, pred_format)


def pred_format_mismatch(stats: EvalStats, pred_format: str) -> str:
    """Why predictions accumulated as `pred_format` are evidently in the other format ('' when they are not).

    labelIds given: the same pixels read as train ids (their column is the raw value) agree with the ground truth
    at least twice as often and on a fifth of the pixels. trainIds given: most evaluated pixels got a value that is
    no train id (19..254, label ids of cars, vegetation, ...)."""
    rows = stats.matrix[:NUM_CLASSES]
    valid = int(rows.sum())
    if valid == 0:
        return ""
    train_ids = np.arange(NUM_CLASSES)
    if pred_format == "labelIds":
        as_label, as_train = int(rows[train_ids, TRAIN_TO_LABEL].sum()), int(rows[train_ids, train_ids].sum())
        if as_train > max(2 * as_label, valid // 5):
            return (f"read as trainIds they agree with {100 * as_train / valid:.1f} % of the ground truth, read as "
                    f"labelIds with {100 * as_label / valid:.1f} %: they look like trainIds (what seg_node "
                    f"publishes); pass --pred-format trainIds")
        return ""
    other = int(rows[:, OTHER_COLUMN].sum())
    if other > valid // 2:
        return (f"{100 * other / valid:.1f} % of the evaluated pixels hold values that are no train id: they look "
                f"like labelIds; pass --pred-format labelIds")
    return ""


def _accumulate_instances(stats: EvalStats, instance_ids: np.ndarray, pred: np.ndarray, pred_format: str) -> None:
    """Instance-weighted TP/FN without a mask per instance: one histogram over (instance id, kind of hit)."""
    stats.num_instance_images += 1
    inst = instance_ids
    if inst.dtype != np.uint16:
        if inst.min() < 0 or inst.max() > np.iinfo(np.uint16).max:
            raise ValueError(f"instance ids must fit in 16 bits, got {inst.min()}..{inst.max()}")
        inst = inst.astype(np.uint16)
    label = (inst // INSTANCE_ID_MIN).astype(np.uint8)  # the label id each pixel's instance id encodes
    hit = cv2.LUT(pred, _PRED_COL_LUT[pred_format]) == label
    cat_hit = cv2.LUT(pred, _PRED_CATEGORY_LUT[pred_format]) == cv2.LUT(label, _INSTANCE_CATEGORY)
    kind = hit.view(np.uint8) | (cat_hit.view(np.uint8) << 1)  # 0 miss, 1 class hit, 2 category hit, 3 both
    # Instance ids of scorable labels, shifted to 0.._INST_SPAN-1; all else (wrapped below, or above) -> the last slot.
    code = inst - np.uint16(_INST_BASE)
    np.minimum(code, _INST_SPAN, out=code)
    code += kind.astype(np.uint16) * np.uint16(_INST_SLOT)
    hist = _histogram(code, 4 * _INST_SLOT).reshape(4, _INST_SLOT)[:, :_INST_SPAN]
    sizes = hist.sum(axis=0)
    present = np.flatnonzero(sizes)
    label = (present + _INST_BASE) // INSTANCE_ID_MIN
    train = _INSTANCE_TRAIN[label]
    scored = train != IGNORE_ID  # caravan and trailer have instances but are not scored
    present, label, train = present[scored], label[scored], train[scored]
    size = sizes[present]
    weight = _INSTANCE_WEIGHT[label] / size
    hits = hist[1, present] + hist[3, present]
    np.add.at(stats.inst_tp, train, hits * weight)
    np.add.at(stats.inst_fn, train, (size - hits) * weight)
    category = _INSTANCE_CATEGORY[label]
    cat_hits = hist[2, present] + hist[3, present]
    np.add.at(stats.cat_inst_tp, category, cat_hits * weight)
    np.add.at(stats.cat_inst_fn, category, (size - cat_hits) * weight)


# --- scores -----------------------------------------------------------------------------------------------
@dataclass
class Scores:
    """Fractions 0..1; None where the official evaluator gives NaN (nothing to score). Category and instance scores
    exist for Cityscapes' classes only (empty / None for other class sets, eval.class_metrics)."""

    class_names: tuple[str, ...]
    per_class_iou: dict[str, float | None]
    miou: float | None
    category_iou: dict[str, float | None]
    mean_category_iou: float | None
    pixel_accuracy: float | None
    per_class_iiou: dict[str, float | None]
    iiou: float | None
    category_iiou: dict[str, float | None]
    mean_category_iiou: float | None
    confusion_matrix: np.ndarray  # int64 [K, K] gt class x predicted class
    ignored_predictions: np.ndarray  # int64 [K]: pixels of each class predicted as a label that is not scored


def ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / den


def mean_scored(values) -> float | None:
    valid = [v for v in values if v is not None]
    return math.fsum(valid) / len(valid) if valid else None


def scores(stats: EvalStats) -> Scores:
    m = stats.matrix[:NUM_CLASSES]  # ignored ground truth never counts
    col_sums = m.sum(axis=0)
    row_sums = m.sum(axis=1)
    tp = m[np.arange(NUM_CLASSES), TRAIN_TO_LABEL]
    fp = col_sums[TRAIN_TO_LABEL] - tp
    fn = row_sums - tp
    per_class = {name: ratio(tp[t], tp[t] + fp[t] + fn[t]) for t, name in enumerate(CITYSCAPES_CLASSES)}

    category, category_inst = {}, {}
    for c in CATEGORIES:
        rows = _CATEGORY_ROWS[c]
        cols = TRAIN_TO_LABEL[rows]
        others = [t for t in range(NUM_CLASSES) if t not in rows]
        c_tp = m[np.ix_(rows, cols)].sum()
        c_fn = m[rows].sum() - c_tp
        c_fp = m[np.ix_(others, cols)].sum()
        category[c] = ratio(c_tp, c_tp + c_fp + c_fn)
    for k, c in enumerate(INSTANCE_CATEGORIES):
        rows = _CATEGORY_ROWS[c]
        others = [t for t in range(NUM_CLASSES) if t not in rows]
        c_fp = m[np.ix_(others, _INSTANCE_CATEGORY_COLS[c])].sum()
        category_inst[c] = ratio(stats.cat_inst_tp[k], stats.cat_inst_tp[k] + c_fp + stats.cat_inst_fn[k])

    per_class_inst = {CITYSCAPES_CLASSES[t]: ratio(stats.inst_tp[t], stats.inst_tp[t] + fp[t] + stats.inst_fn[t])
                      for t in INSTANCE_CLASSES}
    if not stats.num_instance_images:
        per_class_inst = {name: None for name in per_class_inst}
        category_inst = {name: None for name in category_inst}
    confusion = m[:, TRAIN_TO_LABEL]
    return Scores(
        class_names=CITYSCAPES_CLASSES, per_class_iou=per_class, miou=mean_scored(per_class.values()),
        category_iou=category, mean_category_iou=mean_scored(category.values()),
        pixel_accuracy=ratio(tp.sum(), m.sum()),
        per_class_iiou=per_class_inst, iiou=mean_scored(per_class_inst.values()),
        category_iiou=category_inst, mean_category_iiou=mean_scored(category_inst.values()),
        confusion_matrix=confusion, ignored_predictions=row_sums - confusion.sum(axis=1),
    )
