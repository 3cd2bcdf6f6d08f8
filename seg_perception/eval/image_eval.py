"""Image-by-image evaluation of a dataset, in this process or in worker processes: each image's prediction comes
from a model run through `SegPipeline` (whole / slide / TTA, see eval.inference) or from a label PNG made
elsewhere, and is scored against its ground truth into statistics that add up exactly, so the result does not
depend on the number of workers. What a dataset's ground truth means (Cityscapes label ids, or the model's own
class ids) is its job's `score` (eval.cityscapes, eval.folder).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from seg_perception.core.image_codec import MAX_PIXELS, ImageDecodeError, check_pixels, compressed_size
from seg_perception.eval import EvalError
from seg_perception.eval.inference import InferenceConfig, Predictor

_HEADER_BYTES = 1 << 20  # where a PNG's or JPEG's size is found (a JPEG's frame header follows its EXIF blocks)


@dataclass(frozen=True)
class Sample:
    key: str  # what ground truth and prediction files are matched by
    gt: Path  # ground-truth label PNG
    instances: Path | None  # Cityscapes *_gtFine_instanceIds.png when present
    image: Path  # the camera image (may not exist when predictions are given)


def check_size(path: Path, what: str) -> None:
    """Refuse a file that is not a PNG or JPEG, or one whose header claims more than MAX_PIXELS, before decoding
    it: a small file can claim a huge image."""
    try:
        with open(path, "rb") as f:
            head = np.frombuffer(f.read(_HEADER_BYTES), np.uint8)
        check_pixels(*compressed_size(head), MAX_PIXELS, what)
    except (OSError, ImageDecodeError) as exc:
        raise EvalError(f"cannot read {what} '{path}': {exc}") from None


def read_ids(path: Path) -> np.ndarray:
    """A single-channel label or instance PNG as stored (8 or 16 bit); palette PNGs give their indices."""
    check_size(path, "label image")
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
    check_size(path, "image")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise EvalError(f"cannot read image '{path}'")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass
class ImageJob:
    """What to evaluate; a dataset's subclass says what its ground truth means (`score`)."""

    samples: list[Sample]
    predictions: list[Path] | None = None  # label PNGs (else the model runs)
    pred_format: str = "trainIds"  # of the prediction PNGs
    model: str = ""
    backend: str = "auto"
    threads: int = 0
    inference: InferenceConfig = InferenceConfig()

    def check_model(self, info) -> None:
        """Raise EvalError when the model (ModelInfo) cannot be scored on this dataset."""
        self.inference.check(info)

    def score(self, sample: Sample, gt: np.ndarray, pred: np.ndarray, pred_format: str, class_names):
        """One image's statistics; class_names: the model's (None when scoring prediction PNGs)."""
        raise NotImplementedError


@dataclass
class ImageResult:
    stats: object  # eval.metrics.EvalStats or eval.class_metrics.ClassStats
    durations_ms: np.ndarray  # [forward passes, stages + 1] from the pipeline's tracer (empty without a model)


class _Evaluator:
    """Per-process state: the model (opened once) and the predictor."""

    def __init__(self, job: ImageJob) -> None:
        self.job = job
        self.predictor: Predictor | None = None
        self.backend = None
        self.class_names = None
        if job.predictions is None:
            from seg_perception.backends import open_backend
            from seg_perception.core.pipeline import SegPipeline
            from seg_perception.core.trace import Tracer

            options = {"threads": job.threads} if job.threads else {}
            self.backend = open_backend(job.model, job.backend, **options)
            job.check_model(self.backend.info)
            self.class_names = self.backend.info.class_names
            pipeline = SegPipeline(self.backend, "camera", tracer=Tracer(capacity=1024))
            self.predictor = Predictor(pipeline, job.inference)

    def __call__(self, index: int) -> ImageResult:
        job, sample = self.job, self.job.samples[index]
        gt = read_ids(sample.gt)
        if gt.dtype != np.uint8:
            raise EvalError(f"'{sample.gt}' is {gt.dtype}; ground-truth label images are 8 bit")
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
        return ImageResult(job.score(sample, gt, pred, fmt, self.class_names), durations)


_WORKER: _Evaluator | None = None


def _init_worker(job: ImageJob) -> None:
    global _WORKER
    cv2.setNumThreads(1)  # one process per core already
    _WORKER = _Evaluator(job)


def _run_in_worker(index: int) -> ImageResult:
    return _WORKER(index)


def evaluate(job: ImageJob, workers: int = 1,
             progress: Callable[[Iterator[ImageResult], int], Iterator[ImageResult]] | None = None
             ) -> tuple[object, np.ndarray]:
    """Dataset-level stats and the stacked per-forward-pass stage durations (ms)."""
    n = len(job.samples)
    total, durations = None, []
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
            # Workers fork from a server that has imported the scoring modules (numpy, OpenCV, the label table)
            # once, instead of each importing them: ~0.3 s less per worker.
            context.set_forkserver_preload([__name__, type(job).__module__])
        else:
            context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                   initializer=_init_worker, initargs=(job,))
        results = pool.map(_run_in_worker, range(n), chunksize=max(1, min(16, n // (4 * workers))))
    try:
        for result in progress(results, n) if progress else results:
            total = result.stats if total is None else total.merge(result.stats)
            if result.durations_ms.size:
                durations.append(result.durations_ms)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        elif evaluator.backend is not None:
            evaluator.backend.close()
    return total, (np.concatenate(durations) if durations else np.zeros((0, 0)))
