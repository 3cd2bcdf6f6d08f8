"""Torch eager backend (CPU, or CUDA with fp16 autocast) for development and parity checks.

It runs the same `deploy_wrapper` module as `seg-perception export`, so its outputs follow the deployed contract
(uint8 NHWC RGB in; uint8 labels and confidence, float32 logits out) and can be compared with ONNX Runtime's or
TensorRT's pixel for pixel.
"""

from __future__ import annotations

import numpy as np

from seg_perception.backends.base import Backend, BackendError, InferenceOutputs, ModelInfo


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'metaseg-t' or 'metaseg-t:path/to/ckpt.pth' -> (zoo name, checkpoint or None)."""
    name, _, checkpoint = spec.partition(":")
    if not name:
        raise ValueError(f"expected a zoo name[:checkpoint], got '{spec}'")
    return name, checkpoint or None


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model, info: ModelInfo, device: str = "cpu", fp16: bool = False, threads: int = 0) -> None:
        import torch

        from seg_perception.deploy.export import deploy_wrapper

        if fp16 and not device.startswith("cuda"):
            raise ValueError("fp16 needs a CUDA device (CPU half-precision kernels are slow or missing)")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device '{device}' requested but torch sees no CUDA device")
        if threads:
            torch.set_num_threads(int(threads))
        self.torch = torch
        self.info = info
        self.device = torch.device(device)
        self.fp16 = fp16
        # Always with logits: `infer(want_logits=False)` simply does not copy them out.
        self.module = deploy_wrapper(model, info, with_logits=True).to(self.device)
        h, w = info.input_size
        self._input = torch.empty((1, h, w, 3), dtype=torch.uint8, device=self.device)
        self._events = None
        if self.device.type == "cuda":
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        self._device_ms: float | None = None

    @classmethod
    def from_zoo(cls, spec: str, device: str = "cpu", fp16: bool = False,
                 input_size: tuple[int, int] = (512, 1024), threads: int = 0,
                 trusted: bool = False) -> "TorchBackend":
        """spec: zoo name, optionally ':checkpoint' (random weights without one); `trusted` lets a checkpoint
        holding more than arrays and plain data be unpickled in full."""
        from seg_perception.deploy.export import build_for_classes, model_info_for
        from seg_perception.models.checkpoint import CheckpointError

        name, checkpoint = parse_spec(spec)
        try:
            model, classes, _ = build_for_classes(name, checkpoint=checkpoint, trusted=trusted)
        except KeyError as exc:
            raise BackendError(str(exc.args[0])) from None
        except CheckpointError as exc:
            raise BackendError(str(exc)) from None
        return cls(model, model_info_for(name, tuple(input_size), classes, with_logits=True), device, fp16, threads)

    def infer(self, image: np.ndarray, want_logits: bool = False) -> InferenceOutputs:
        self.check_input(image)
        torch = self.torch
        self._input.copy_(torch.from_numpy(image)[None])
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            if self._events:
                self._events[0].record()
            labels, conf, logits = self.module(self._input)
            if self._events:
                self._events[1].record()
        if self._events:
            self._events[1].synchronize()
            self._device_ms = self._events[0].elapsed_time(self._events[1])
        return InferenceOutputs(labels=labels[0].cpu().numpy(), confidence=conf[0].cpu().numpy(),
                                logits=logits[0].float().cpu().numpy() if want_logits else None)

    def device_time_ms(self) -> float | None:
        return self._device_ms

    def close(self) -> None:
        self.module = None
