"""Evaluation on a folder of images and a folder of label PNGs in the model's own class ids (255: ignore), as
mmsegmentation's custom datasets lay them out: every label `<labels>/<key><label_suffix>` is scored against the
image `<images>/<key><image_suffix>`, keys being paths below each folder (ADE20K: `images/validation/x.jpg`
with `annotations/validation/x.png`). `reduce_zero_label` reads label 0 as "ignore" and the others one lower,
as ADE20K's annotations are stored. Scores per the model card's classes (eval.class_metrics).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from seg_perception.eval import EvalError
from seg_perception.eval.class_metrics import ClassStats
from seg_perception.eval.image_eval import ImageJob, Sample
from seg_perception.labels import IGNORE_ID

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # tried in turn when no image suffix is given
# mmsegmentation's reduce_zero_label: 0 -> ignore, v -> v - 1, 255 stays ignore
REDUCE_ZERO_LABEL = np.array([IGNORE_ID] + list(range(254)) + [IGNORE_ID], np.uint8)


def find_samples(images: str | os.PathLike, labels: str | os.PathLike, image_suffix: str = "",
                 label_suffix: str = ".png") -> list[Sample]:
    """One sample per label file, sorted by key; raises EvalError naming what is missing."""
    images, labels = Path(images), Path(labels)
    for folder, what in ((images, "images"), (labels, "labels")):
        if not folder.is_dir():
            raise EvalError(f"{what} folder '{folder}' does not exist")
    if not label_suffix:
        raise EvalError("the label suffix cannot be empty")
    suffixes = (image_suffix,) if image_suffix else IMAGE_SUFFIXES
    samples, missing = [], []
    for folder, _, files in os.walk(labels):
        for name in files:
            if not name.endswith(label_suffix) or name == label_suffix:
                continue
            gt = Path(folder) / name
            key = str(gt.relative_to(labels))[: -len(label_suffix)]
            found = [images / (key + s) for s in suffixes if (images / (key + s)).is_file()]
            if not found:
                missing.append(key)
            elif len(found) > 1:
                raise EvalError(f"label '{gt}' matches {len(found)} images ({', '.join(map(str, found))}): "
                                f"pass --image-suffix")
            else:
                samples.append(Sample(key, gt, None, found[0]))
    if not samples and not missing:
        raise EvalError(f"no *{label_suffix} files under '{labels}'")
    if missing:
        raise EvalError(f"{len(missing)} of {len(samples) + len(missing)} labels have no image "
                        f"'{images / missing[0]}{{{','.join(suffixes)}}}'")
    return sorted(samples, key=lambda s: s.key)


@dataclass
class FolderJob(ImageJob):
    reduce_zero_label: bool = False

    def score(self, sample: Sample, gt: np.ndarray, pred: np.ndarray, pred_format: str, class_names) -> ClassStats:
        if self.reduce_zero_label:
            gt = cv2.LUT(gt, REDUCE_ZERO_LABEL)
        stats = ClassStats(class_names)
        try:
            stats.add(gt, pred)
        except ValueError as exc:
            raise EvalError(f"'{sample.gt}': {exc}") from None
        return stats
