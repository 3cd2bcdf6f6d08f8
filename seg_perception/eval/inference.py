"""Full-resolution label maps from a fixed-size model: whole-image (exactly what the node publishes), sliding
window, and flip / multi-scale test-time augmentation. Every forward pass goes through `SegPipeline.process`.

Augmented modes average softmax probabilities (mmsegmentation's TTA convention) and need the model's logits
output (`seg-perception export --logits`, or `wrap --logits` for a third-party graph). Windows smaller than the
model input are padded with the mean colour, which the graph's normalisation turns into zeros, as mmsegmentation
pads normalised images.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from seg_perception.core.pipeline import OutputRequest, SegPipeline
from seg_perception.eval import EvalError

MODES = ("whole", "slide")
_MASK_ONLY = OutputRequest(mask=True)
_LOGITS_ONLY = OutputRequest(mask=False, logits=True)


@dataclass(frozen=True)
class InferenceConfig:
    """whole: the image resized to the model input (the node's path); slide: model-size windows over the image
    at its own resolution. Scales multiply that grid; flip adds the mirrored image."""

    mode: str = "whole"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    stride: tuple[int, int] | None = None  # slide step (rows, cols); default 2/3 of the model input

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"inference mode must be one of {MODES}, got '{self.mode}'")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.stride is not None and min(self.stride) <= 0:
            raise ValueError(f"stride must be positive, got {self.stride}")

    @property
    def needs_logits(self) -> bool:
        return self.mode != "whole" or self.flip or tuple(self.scales) != (1.0,)

    def check(self, info) -> None:
        """Raise EvalError when the model (ModelInfo) cannot run this configuration."""
        if self.needs_logits and not info.has_logits:
            raise EvalError(f"model '{info.name}' has no logits output, which {self.mode} inference with scales "
                            f"{list(self.scales)} and flip={self.flip} needs: export it with --logits "
                            "(a third-party graph: wrap it with --logits)")


class Predictor:
    """Class-id label map [H, W] at the input image's size; one traced pipeline frame per forward pass."""

    def __init__(self, pipeline: SegPipeline, config: InferenceConfig) -> None:
        self.pipeline = pipeline
        self.config = config
        info = pipeline.info
        config.check(info)
        self.model_hw = tuple(info.input_size)
        self.num_classes = info.num_classes
        self.stride = config.stride or (max(1, self.model_hw[0] * 2 // 3), max(1, self.model_hw[1] * 2 // 3))
        self.pad_color = tuple(int(round(c)) for c in info.mean)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        if not self.config.needs_logits:
            return self._forward(rgb, _MASK_ONLY).mask
        image_hw = rgb.shape[:2]
        base = self.model_hw if self.config.mode == "whole" else image_hw
        probs = np.zeros(base + (self.num_classes,), np.float32)  # H x W x K, summed over augmentations
        for scale in self.config.scales:
            grid = (max(1, round(base[0] * scale)), max(1, round(base[1] * scale)))
            scaled = _resize(rgb, grid)
            for flipped in (False, True) if self.config.flip else (False,):
                view = np.ascontiguousarray(scaled[:, ::-1]) if flipped else scaled
                p = self._tiled_probs(view)
                if flipped:
                    p = p[:, ::-1]
                if p.shape[:2] != base:  # bilinear, as mmsegmentation resizes logits; any channel count
                    p = cv2.resize(p, (base[1], base[0]), interpolation=cv2.INTER_LINEAR)
                probs += p
        labels = probs.argmax(axis=2).astype(np.uint8)
        if labels.shape != image_hw:  # nearest, as the node upsamples its mask
            labels = cv2.resize(labels, (image_hw[1], image_hw[0]), interpolation=cv2.INTER_NEAREST)
        return labels

    def _forward(self, rgb: np.ndarray, request: OutputRequest):
        tracer = self.pipeline.tracer
        slot = tracer.begin()
        result = self.pipeline.process(rgb, request, slot)
        tracer.commit(slot)
        return result

    def _tiled_probs(self, image: np.ndarray) -> np.ndarray:
        """Softmax probabilities [h, w, K] of an image of any size, from model-size windows."""
        (mh, mw), (sh, sw) = self.model_hw, self.stride
        h, w = image.shape[:2]
        ph, pw = max(h, mh), max(w, mw)
        if (ph, pw) != (h, w):
            image = cv2.copyMakeBorder(image, 0, ph - h, 0, pw - w, cv2.BORDER_CONSTANT, value=self.pad_color)
        total = np.zeros((ph, pw, self.num_classes), np.float32)
        count = np.zeros((ph, pw, 1), np.float32)
        for y in _window_starts(ph, mh, sh):
            for x in _window_starts(pw, mw, sw):
                window = np.ascontiguousarray(image[y:y + mh, x:x + mw])
                logits = self._forward(window, _LOGITS_ONLY).logits
                if logits is None:
                    raise EvalError(f"model '{self.pipeline.info.name}' returned no logits")
                total[y:y + mh, x:x + mw] += _softmax_hwk(logits)
                count[y:y + mh, x:x + mw] += 1.0
        total /= count
        return total[:h, :w]


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window origins covering [0, size), the last one flush with the end (mmsegmentation's slide_inference)."""
    n = max(size - window + stride - 1, 0) // stride + 1
    return sorted({min(i * stride, size - window) for i in range(n)})


def _softmax_hwk(logits: np.ndarray) -> np.ndarray:
    """float32 [K, h, w] logits -> [h, w, K] probabilities."""
    z = logits.transpose(1, 2, 0)
    e = np.exp(z - z.max(axis=2, keepdims=True))
    e /= e.sum(axis=2, keepdims=True)
    return e


def _resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """An RGB image to hw (INTER_AREA supports at most 4 channels at arbitrary ratios)."""
    if image.shape[:2] == hw:
        return image
    shrink = hw[0] < image.shape[0]  # INTER_AREA when shrinking avoids aliasing, as the pipeline does
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
