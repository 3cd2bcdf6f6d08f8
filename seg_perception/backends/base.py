"""The one small interface every inference backend implements, and the model metadata it exposes.

Contract of an exported model (see seg_perception.deploy.export):
  input  `image`      uint8  [1, H, W, 3]  RGB, NHWC: the camera's bytes; cast, normalisation and layout are in the graph
  output `labels`     uint8  [1, H, W]     argmax train id at model resolution
  output `confidence` uint8  [1, H, W]     max class probability scaled to 0..255
  output `logits`     float32 [1, K, H, W] optional, for evaluation
"""

from __future__ import annotations

import abc
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from seg_perception.errors import UsageError
from seg_perception.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IMAGENET_MEAN, IMAGENET_STD

# Keys of the metadata_props written into every exported ONNX file (and engine sidecars).
META_PREFIX = "seg_perception."


@dataclass
class ModelInfo:
    """What the runtime needs to interpret a model; read from the artifact itself."""

    name: str = "unknown"
    variant: str = ""
    input_size: tuple[int, int] = (512, 1024)  # H, W the graph takes
    class_names: tuple[str, ...] = CITYSCAPES_CLASSES
    palette: tuple[tuple[int, int, int], ...] = CITYSCAPES_PALETTE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    has_logits: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_metadata(self) -> dict[str, str]:
        """Flat string map for ONNX metadata_props / sidecars."""
        out = {}
        for key, value in asdict(self).items():
            out[META_PREFIX + key] = json.dumps(value)
        return out

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "ModelInfo":
        kwargs = {}
        for key, raw in meta.items():
            if not key.startswith(META_PREFIX):
                continue
            name = key[len(META_PREFIX):]
            if name not in cls.__dataclass_fields__:
                continue
            try:
                value = json.loads(raw)
                if name in ("input_size", "mean", "std", "class_names"):
                    value = tuple(value)
                elif name == "palette":
                    value = tuple(tuple(c) for c in value)
            except TypeError:  # a number where a list belongs, ...
                raise ValueError(f"model metadata {key} = {raw[:40]!r} has the wrong type") from None
            kwargs[name] = value
        if "input_size" not in kwargs:
            raise ValueError("model metadata lacks seg_perception.input_size: was it written by seg-perception export "
                             "or wrap? (a third-party graph: seg-perception wrap)")
        size = kwargs["input_size"]
        if len(size) != 2 or not all(isinstance(v, int) and 0 < v <= 16384 for v in size):
            raise ValueError(f"model metadata {META_PREFIX}input_size {list(size)} is not [height, width] in 1..16384")
        return cls(**kwargs)


@dataclass
class InferenceOutputs:
    """Views into backend-owned buffers, valid until the next `infer` call."""

    labels: np.ndarray  # uint8 [H, W]
    confidence: np.ndarray  # uint8 [H, W]
    logits: np.ndarray | None = None  # float32 [K, H, W]


class BackendError(UsageError, RuntimeError):
    """A model file or engine cannot be used; the message names the file and the problem."""


class Backend(abc.ABC):
    """Runs one model on one RGB uint8 image at the model's input size."""

    name: str = "abstract"
    info: ModelInfo

    @abc.abstractmethod
    def infer(self, image: np.ndarray, want_logits: bool = False) -> InferenceOutputs:
        """image: uint8 [H, W, 3] RGB, H x W == info.input_size, C-contiguous."""

    def describe(self) -> str:
        """The backend and where it runs, for logs and reports (e.g. "torch cuda:0 fp16, CUDA graph")."""
        return self.name

    def device_time_ms(self) -> float | None:
        """Device-side time of the last `infer` (CUDA events), when the backend measures it."""
        return None

    def close(self) -> None:
        """Free sessions, engines and buffers."""

    def interrupt(self) -> None:
        """Ask an `infer` running on another thread to stop soon (it then raises); by default it runs to its end.
        Used at shutdown, so that a slow model does not hold the process."""

    def warm_up(self, frames: int = 2) -> None:
        """Run `frames` black images: the first runs allocate memory and pick kernels, and are several times
        slower than the steady state (SegMAN-B, ONNX Runtime CPU, 512x1024: 12.7 s, 16.7 s, then 8.7 s)."""
        image = np.zeros((*self.info.input_size, 3), np.uint8)
        for _ in range(frames):
            self.infer(image)

    def check_input(self, image: np.ndarray) -> None:
        h, w = self.info.input_size
        if image.dtype != np.uint8:
            raise ValueError(f"{self.name}: input dtype must be uint8, got {image.dtype}")
        if image.shape != (h, w, 3):
            raise ValueError(f"{self.name}: input must be ({h}, {w}, 3) uint8 RGB, got shape {image.shape}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
