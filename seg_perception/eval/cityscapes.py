"""Cityscapes evaluation: the official folder layout in, cityscapesscripts' scores out (eval.metrics).

Predictions come either from a model of Cityscapes' 19 classes (eval.image_eval runs it) or from label PNGs
made elsewhere, found the way cityscapesscripts finds them (`<city>_<seq>_<frame>*.png` anywhere under the
folder, exactly one per ground-truth image).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg_perception.eval import EvalError, require_cityscapes_classes
from seg_perception.eval.image_eval import ImageJob, Sample, read_ids
from seg_perception.eval.metrics import ID_FORMATS, EvalStats, accumulate

GT_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
IMAGE_SUFFIX = "_leftImg8bit.png"


def find_samples(root: str | os.PathLike, split: str = "val", need_images: bool = True) -> list[Sample]:
    """Ground-truth files of `split` under the official layout, sorted; raises EvalError naming what is missing."""
    root = Path(root)
    gt_dir = root / "gtFine" / split
    if not root.is_dir():
        raise EvalError(f"Cityscapes root '{root}' is not a folder")
    if not gt_dir.is_dir():
        raise EvalError(f"no ground-truth folder '{gt_dir}' (expected <root>/gtFine/<split>/<city>/*{GT_SUFFIX})")
    samples = []
    for gt in sorted(gt_dir.glob(f"*/*{GT_SUFFIX}")):
        key = gt.name[: -len(GT_SUFFIX)]
        inst = gt.with_name(key + INSTANCE_SUFFIX)
        image = root / "leftImg8bit" / split / gt.parent.name / (key + IMAGE_SUFFIX)
        samples.append(Sample(key, gt, inst if inst.is_file() else None, image))
    if not samples:
        raise EvalError(f"no *{GT_SUFFIX} files under '{gt_dir}/<city>/'")
    if need_images:
        missing = [s.image for s in samples if not s.image.is_file()]
        if missing:
            raise EvalError(f"{len(missing)} of {len(samples)} images have no camera image, e.g. '{missing[0]}'")
    return samples


def match_predictions(pred_dir: str | os.PathLike, samples: list[Sample]) -> list[Path]:
    """One `<key>*.png` under pred_dir (recursively) per sample, as the official evaluator requires."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EvalError(f"predictions folder '{pred_dir}' does not exist")
    keys = {s.key for s in samples}
    lengths = sorted({len(k) for k in keys})
    found: dict[str, list[Path]] = {}
    for folder, _, files in os.walk(pred_dir):
        for name in files:
            if not name.endswith(".png"):
                continue
            for n in lengths:  # fnmatch("<key>*.png") is a prefix test on the name
                if name[:n] in keys:
                    found.setdefault(name[:n], []).append(Path(folder) / name)
    preds = []
    for s in samples:
        hits = found.get(s.key, [])
        if len(hits) != 1:
            problem = "no prediction" if not hits else f"{len(hits)} predictions ({', '.join(map(str, hits[:3]))})"
            raise EvalError(f"{problem} matching '{s.key}*.png' under '{pred_dir}' for ground truth '{s.gt}'")
        preds.append(hits[0])
    return preds


@dataclass
class CityscapesJob(ImageJob):
    pred_format: str = "labelIds"  # of the prediction PNGs (the official format)
    instances: bool = True  # iIoU where instanceIds exist

    def __post_init__(self) -> None:
        if self.pred_format not in ID_FORMATS:
            raise ValueError(f"prediction format must be one of {ID_FORMATS}, got '{self.pred_format}'")

    def check_model(self, info) -> None:
        require_cityscapes_classes(info)
        super().check_model(info)

    def score(self, sample: Sample, gt: np.ndarray, pred: np.ndarray, pred_format: str, class_names) -> EvalStats:
        inst = read_ids(sample.instances) if self.instances and sample.instances is not None else None
        stats = EvalStats()
        accumulate(stats, gt, pred, "labelIds", pred_format, inst)
        return stats
