"""Cityscapes evaluation: the official folder layout in, one dataset-level confusion matrix out.

Predictions come either from a model run through `SegPipeline` (whole / slide / TTA, see eval.inference) or from
label PNGs made elsewhere, found the way cityscapesscripts finds them (`<city>_<seq>_<frame>*.png` anywhere under
the folder, exactly one per ground-truth image). Images are spread over worker processes; each returns its
image's `EvalStats`, which add up exactly, so the result does not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from seg_perception.eval import EvalError
from seg_perception.eval.inference import InferenceConfig, Predictor
from seg_perception.eval.metrics import ID_FORMATS, EvalStats, accumulate

GT_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
IMAGE_SUFFIX = "_leftImg8bit.png"


@dataclass(frozen=True)
class Sample:
    key: str  # <city>_<seq>_<frame>
    gt: Path  # *_gtFine_labelIds.png
    instances: Path | None  # *_gtFine_instanceIds.png when present
    image: Path  # leftImg8bit/<split>/<city>/<key>_leftImg8bit.png (may not exist in --predictions mode)


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


def read_ids(path: Path) -> np.ndarray:
    """A single-channel label or instance PNG as stored (8 or 16 bit); palette PNGs give their indices."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise EvalError(f"cannot read image '{path}'")
    if img.ndim == 3:  # OpenCV expands palette PNGs to colour; PIL returns their indices, as the official script
        from PIL import Image

        with Image.open(path) as pil:
            if pil.mode != "P":
                raise EvalError(f"'{path}' has {img.shape[2]} channels; label images must have one")
            img = np.asarray(pil)
    return img


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise EvalError(f"cannot read image '{path}'")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --- one job, run in this process or in workers -------------------------------------------------------------
@dataclass
class CityscapesJob:
    samples: list[Sample]
    predictions: list[Path] | None = None  # label PNGs (else model runs)
    pred_format: str = "labelIds"  # of the prediction PNGs
    model: str = ""
    backend: str = "auto"
    threads: int = 0
    inference: InferenceConfig = InferenceConfig()
    instances: bool = True  # iIoU where instanceIds exist

    def __post_init__(self) -> None:
        if self.pred_format not in ID_FORMATS:
            raise ValueError(f"prediction format must be one of {ID_FORMATS}, got '{self.pred_format}'")


@dataclass
class ImageResult:
    stats: EvalStats
    durations_ms: np.ndarray  # [forward passes, stages + 1] from the pipeline's tracer (empty without a model)


class _Evaluator:
    """Per-process state: the model (opened once) and the predictor."""

    def __init__(self, job: CityscapesJob) -> None:
        self.job = job
        self.predictor: Predictor | None = None
        self.backend = None
        if job.predictions is None:
            from seg_perception.backends import open_backend
            from seg_perception.core.pipeline import SegPipeline
            from seg_perception.core.trace import Tracer

            options = {"threads": job.threads} if job.threads else {}
            self.backend = open_backend(job.model, job.backend, **options)
            pipeline = SegPipeline(self.backend, "camera", tracer=Tracer(capacity=1024))
            self.predictor = Predictor(pipeline, job.inference)

    def __call__(self, index: int) -> ImageResult:
        job, sample = self.job, self.job.samples[index]
        gt = read_ids(sample.gt)
        if gt.dtype != np.uint8:
            raise EvalError(f"'{sample.gt}' is {gt.dtype}; labelIds images are 8 bit")
        if self.predictor is None:
            pred, fmt, durations = read_ids(job.predictions[index]), job.pred_format, np.zeros((0, 0))
            source = job.predictions[index]
        else:
            rgb = read_rgb(sample.image)
            tracer = self.predictor.pipeline.tracer
            before = tracer.committed
            pred, fmt = self.predictor.predict(rgb), "trainIds"
            durations = tracer.durations_ms(tracer.committed - before)
            source = sample.image
        if pred.shape != gt.shape:
            raise EvalError(f"size mismatch: '{source}' is {pred.shape[1]}x{pred.shape[0]} but ground truth "
                            f"'{sample.gt}' is {gt.shape[1]}x{gt.shape[0]}")
        if pred.dtype != np.uint8:
            raise EvalError(f"'{source}' is {pred.dtype}; label images must be 8 bit")
        inst = read_ids(sample.instances) if job.instances and sample.instances is not None else None
        stats = EvalStats()
        accumulate(stats, gt, pred, "labelIds", fmt, inst)
        return ImageResult(stats, durations)


_WORKER: _Evaluator | None = None


def _init_worker(job: CityscapesJob) -> None:
    global _WORKER
    cv2.setNumThreads(1)  # one process per core already
    _WORKER = _Evaluator(job)


def _run_in_worker(index: int) -> ImageResult:
    return _WORKER(index)


def evaluate(job: CityscapesJob, workers: int = 1,
             progress: Callable[[Iterator[ImageResult], int], Iterator[ImageResult]] | None = None
             ) -> tuple[EvalStats, np.ndarray]:
    """Dataset-level stats and the stacked per-forward-pass stage durations (ms)."""
    n = len(job.samples)
    total, durations = EvalStats(), []
    if workers <= 1:
        evaluator = _Evaluator(job)
        results: Iterator[ImageResult] = map(evaluator, range(n))
        pool = None
    else:
        # Never plain fork: a parent with live thread pools (OpenCV, ONNX Runtime, DDS) can hand a child a held
        # lock. Scoring PNGs uses a fork server (a clean process forks the workers, cheap); a model gets a fresh
        # interpreter per worker, so no ONNX Runtime or CUDA state is shared with the process that checked it.
        if job.predictions is not None:
            context = multiprocessing.get_context("forkserver")
            # Workers fork from a server that has imported this module (numpy, OpenCV, the label table) once,
            # instead of each importing it: ~0.3 s less per worker.
            context.set_forkserver_preload([__name__])
        else:
            context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                   initializer=_init_worker, initargs=(job,))
        results = pool.map(_run_in_worker, range(n), chunksize=max(1, min(16, n // (4 * workers))))
    try:
        for result in progress(results, n) if progress else results:
            total.merge(result.stats)
            if result.durations_ms.size:
                durations.append(result.durations_ms)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        elif evaluator.backend is not None:
            evaluator.backend.close()
    return total, (np.concatenate(durations) if durations else np.zeros((0, 0)))
