"""Torch backend: CPU, or CUDA in fp32 or fp16 (autocast), channels-last, optionally replayed as a CUDA graph.

It runs the same `deploy_wrapper` module as `seg-perception export`, so its outputs follow the deployed contract
(uint8 NHWC RGB in; uint8 labels and confidence, float32 logits out) and can be compared with ONNX Runtime's or
TensorRT's pixel for pixel.

On CUDA a frame is: the image copied into a pinned host buffer, uploaded on the backend's stream, the forward
(or its captured graph) between two CUDA events (`device_time_ms`), the outputs downloaded into pinned buffers
allocated once. 'fp32' is IEEE fp32: cuDNN's TF32 convolutions are switched off while the model runs, so fp32
is the reference that fp16 is measured against.
"""

from __future__ import annotations

import contextlib

import numpy as np

from seg_perception.backends.base import Backend, BackendError, InferenceOutputs, ModelInfo
from seg_perception.backends.device import parse_device
from seg_perception.errors import OptionError

PRECISIONS = ("fp32", "fp16")
_GRAPH_WARMUP = 3  # eager runs on the capture stream before capture, as torch.cuda.graph's docs ask


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'metaseg-t' or 'metaseg-t:path/to/ckpt.pth' -> (zoo name, checkpoint or None)."""
    name, _, checkpoint = spec.partition(":")
    if not name:
        raise ValueError(f"expected a zoo name[:checkpoint], got '{spec}'")
    return name, checkpoint or None


def torch_device(device: str, precision: str = "fp32", cuda_graphs: bool = False) -> str:
    """The torch device for the options, or a one-line error: unknown names, CUDA asked for where torch has
    none, fp16 or CUDA graphs on the CPU."""
    import torch

    if precision not in PRECISIONS:
        raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    dev = parse_device(device)
    available = torch.cuda.is_available()
    if dev.kind == "auto":
        dev = parse_device("cuda" if available else "cpu")
    if dev.kind == "cuda":
        if not available:
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise BackendError(f"device '{device}' requested but torch {torch.__version__} ({build}) sees no "
                               "CUDA device")
        if dev.gpu_index >= torch.cuda.device_count():
            raise BackendError(f"device '{device}' requested but torch sees {torch.cuda.device_count()} CUDA "
                               "device(s)")
        return f"cuda:{dev.gpu_index}"
    if precision == "fp16":
        raise OptionError(f"precision fp16 needs a CUDA device (device '{device}' runs on the CPU, where "
                         "half-precision kernels are slow or missing)")
    if cuda_graphs:
        raise OptionError(f"cuda_graphs needs a CUDA device (device '{device}' runs on the CPU)")
    return "cpu"


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model, info: ModelInfo, device: str = "cpu", precision: str = "fp32",
                 cuda_graphs: bool = False, threads: int = 0, channels_last: bool | None = None) -> None:
        """device: auto | cpu | cuda | cuda:N; precision: fp32 | fp16 (CUDA autocast); cuda_graphs: capture the
        forward once and replay it (fixed input size); channels_last: NHWC weights and activations (default:
        on CUDA, where cuDNN's tensor-core kernels want that layout)."""
        import torch

        from seg_perception.backends.deploy_model import deploy_wrapper

        self.device = torch.device(torch_device(device, precision, cuda_graphs))
        if threads:
            torch.set_num_threads(int(threads))
        self.torch = torch
        self.info = info
        self.precision = precision
        cuda = self.device.type == "cuda"
        # Always with logits: `infer(want_logits=False)` simply does not copy them out.
        module = deploy_wrapper(model, info, with_logits=True).requires_grad_(False).to(self.device)
        if cuda if channels_last is None else channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        h, w = info.input_size
        self._input = torch.empty((1, h, w, 3), dtype=torch.uint8, device=self.device)
        self._device_ms: float | None = None
        self._graph = self._graph_outputs = None
        if not cuda:  # frames are copied in through numpy: read-only message buffers need no torch view
            self._input_np = self._input.numpy()[0]
            return
        self._stream = torch.cuda.Stream(self.device)
        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        pinned = dict(pin_memory=True)
        self._host_image = torch.empty((h, w, 3), dtype=torch.uint8, **pinned)
        self._host_image_np = self._host_image.numpy()
        self._host = {"labels": torch.empty((h, w), dtype=torch.uint8, **pinned),
                      "confidence": torch.empty((h, w), dtype=torch.uint8, **pinned),
                      "logits": torch.empty((info.num_classes, h, w), dtype=torch.float32, **pinned)}
        self._host_np = {k: v.numpy() for k, v in self._host.items()}
        # the weights were copied on the current stream; ours must not read them before that is done
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        if cuda_graphs:
            self._capture()

    @classmethod
    def from_zoo(cls, spec: str, device: str = "cpu", precision: str = "fp32", cuda_graphs: bool = False,
                 input_size: tuple[int, int] = (512, 1024), threads: int = 0,
                 trusted: bool = False) -> "TorchBackend":
        """spec: zoo name, optionally ':checkpoint' (random weights without one); `trusted` lets a checkpoint
        holding more than arrays and plain data be unpickled in full."""
        from seg_perception.backends.deploy_model import build_for_classes, model_info_for
        from seg_perception.models.checkpoint import CheckpointError

        torch_device(device, precision, cuda_graphs)  # a wrong option fails before the model is built
        name, checkpoint = parse_spec(spec)
        try:
            model, classes, _ = build_for_classes(name, checkpoint=checkpoint, trusted=trusted)
        except KeyError as exc:
            raise BackendError(str(exc.args[0])) from None
        except CheckpointError as exc:
            raise BackendError(str(exc)) from None
        return cls(model, model_info_for(name, tuple(input_size), classes, with_logits=True), device, precision,
                   cuda_graphs, threads)

    @contextlib.contextmanager
    def _cuda_settings(self):
        """IEEE fp32 convolutions (cuDNN defaults to TF32) and cuDNN's algorithm search (the size is fixed)."""
        cudnn = self.torch.backends.cudnn
        saved = cudnn.allow_tf32, cudnn.benchmark
        cudnn.allow_tf32, cudnn.benchmark = False, True
        try:
            yield
        finally:
            cudnn.allow_tf32, cudnn.benchmark = saved

    def _forward(self):
        torch = self.torch
        # cache_enabled=False: autocast's weight-cast cache must not outlive a graph capture (torch.cuda.graph docs)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16,
                                                    enabled=self.precision == "fp16", cache_enabled=False):
            return self.module(self._input)

    def _capture(self) -> None:
        """Record the forward into a CUDA graph; `infer` then replays it on the same static buffers."""
        torch = self.torch
        graph = torch.cuda.CUDAGraph()
        try:
            with self._cuda_settings(), torch.cuda.stream(self._stream):
                self._input.zero_()
                for _ in range(_GRAPH_WARMUP):
                    self._forward()
                self._stream.synchronize()
                with torch.cuda.graph(graph, stream=self._stream):
                    self._graph_outputs = self._forward()
        except RuntimeError as exc:  # an op that syncs with the host or changes shapes cannot be captured
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"cuda_graphs: cannot capture '{self.info.name}' as a CUDA graph ({first_line}); "
                               "run it without cuda_graphs") from exc
        self._graph = graph

    def infer(self, image: np.ndarray, want_logits: bool = False) -> InferenceOutputs:
        self.check_input(image)
        if self.device.type == "cpu":
            return self._infer_cpu(image, want_logits)
        torch = self.torch
        stream, (start, end) = self._stream, self._events
        self._host_image_np[...] = image
        outputs = ("labels", "confidence") + (("logits",) if want_logits else ())
        with self._cuda_settings(), torch.cuda.stream(stream):
            self._input[0].copy_(self._host_image, non_blocking=True)
            start.record(stream)
            if self._graph is not None:
                self._graph.replay()
                results = self._graph_outputs
            else:
                results = self._forward()
            end.record(stream)
            for name, tensor in zip(outputs, results):
                self._host[name].copy_(tensor[0], non_blocking=True)
        stream.synchronize()
        self._device_ms = start.elapsed_time(end)
        host = self._host_np
        return InferenceOutputs(labels=host["labels"], confidence=host["confidence"],
                                logits=host["logits"] if want_logits else None)

    def _infer_cpu(self, image: np.ndarray, want_logits: bool) -> InferenceOutputs:
        self._input_np[...] = image
        labels, conf, logits = self._forward()
        # .numpy() on CPU tensors is a view: no copy
        return InferenceOutputs(labels=labels[0].numpy(), confidence=conf[0].numpy(),
                                logits=logits[0].numpy() if want_logits else None)

    def describe(self) -> str:
        return f"{self.name} {self.device} {self.precision}" + (", CUDA graph" if self._graph is not None else "")

    def device_time_ms(self) -> float | None:
        return self._device_ms

    def close(self) -> None:
        """Release the model, the graph and its memory pool (the outputs keep the pool alive) and the input."""
        self.module = self._graph = self._graph_outputs = self._input = None
