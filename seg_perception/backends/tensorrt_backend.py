"""TensorRT 10 backend: named I/O tensors, `execute_async_v3` on one CUDA stream, page-locked host buffers.

Engines come through `engine_cache` (sidecar checked before TensorRT sees the bytes). Buffers are allocated once
at open: per frame, the image is copied into pinned memory, uploaded, run, and only the outputs asked for are
downloaded. CUDA events around the enqueue give `device_time_ms()`.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

from seg_perception.backends.base import Backend, BackendError, InferenceOutputs, ModelInfo
from seg_perception.backends.engine_cache import (
    EngineCacheError, Sidecar, detect_platform, import_cudart, import_tensorrt, read_sidecar, verify_engine,
)

log = logging.getLogger(__name__)


def _check(cudart, result, what: str):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA error in {what}: {err}")
    return rest[0] if len(rest) == 1 else rest


class _Buffer:
    """One I/O tensor: device memory plus a pinned host mirror viewed as a numpy array."""

    def __init__(self, cudart, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.device = _check(cudart, cudart.cudaMalloc(self.nbytes), "cudaMalloc")
        self.host_ptr = _check(cudart, cudart.cudaMallocHost(self.nbytes), "cudaMallocHost")
        raw = (ctypes.c_uint8 * self.nbytes).from_address(int(self.host_ptr))
        self.host = np.frombuffer(raw, dtype=dtype).reshape(shape)

    def free(self, cudart) -> None:
        cudart.cudaFree(self.device)
        cudart.cudaFreeHost(self.host_ptr)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine_path: str | Path, sidecar: Sidecar | None, device: int = 0) -> None:
        trt, cudart = import_tensorrt(), import_cudart()
        self.trt, self.cudart = trt, cudart
        self.path = str(engine_path)
        _check(cudart, cudart.cudaSetDevice(device), "cudaSetDevice")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT {trt.__version__} could not deserialize {engine_path}: it was built by "
                               "another TensorRT version or GPU, or is not an engine (see the TensorRT log)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) for n in names}
        expected = {"image", "labels", "confidence"}
        if not expected <= set(names) or modes["image"] != trt.TensorIOMode.INPUT:
            raise BackendError(f"{engine_path} is not a seg-perception engine: I/O tensors {names}")
        self.info = self._model_info(sidecar)
        h, w = self.info.input_size
        self.context.set_input_shape("image", (1, h, w, 3))
        self._buffers: dict[str, _Buffer] = {}
        for n in names:
            shape = tuple(self.context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise BackendError(f"{engine_path}: tensor '{n}' has unresolved shape {shape}")
            self._buffers[n] = _Buffer(cudart, shape, np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))))
            self.context.set_tensor_address(n, int(self._buffers[n].device))
        for n, want in (("image", np.uint8), ("labels", np.uint8), ("confidence", np.uint8)):
            if self._buffers[n].host.dtype != want:
                raise BackendError(f"{engine_path}: tensor '{n}' is {self._buffers[n].host.dtype}, expected uint8")
        self._stream = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._start = _check(cudart, cudart.cudaEventCreate(), "cudaEventCreate")
        self._end = _check(cudart, cudart.cudaEventCreate(), "cudaEventCreate")
        self._device_ms: float | None = None
        self._h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost

    def _model_info(self, sidecar: Sidecar | None) -> ModelInfo:
        if sidecar is None:
            # No sidecar: the engine's own input shape (opt profile) is all there is; classes are Cityscapes'.
            shape = self.engine.get_tensor_shape("image")
            if shape[1] < 0:
                shape = self.engine.get_tensor_profile_shape("image", 0)[1]
            return ModelInfo(name=Path(self.path).stem, input_size=(int(shape[1]), int(shape[2])),
                             has_logits="logits" in [self.engine.get_tensor_name(i)
                                                     for i in range(self.engine.num_io_tensors)])
        info = ModelInfo.from_metadata(sidecar.model_metadata)
        opt = sidecar.key.input_shapes["image"][1]
        info.input_size = (int(opt[1]), int(opt[2]))
        return info

    @classmethod
    def from_engine(cls, path: str | Path, device: int = 0, threads: int = 0) -> "TensorRTBackend":
        """Load a prebuilt engine. Its sidecar is checked against this machine first; an engine without one
        is loaded with a warning (TensorRT itself then rejects a foreign plan, and we say so).
        threads: ignored (TensorRT runs on the GPU); accepted so the node's options work for every backend."""
        path = Path(path)
        if not path.is_file():
            raise BackendError(f"TensorRT engine not found: {path}")
        try:
            read_sidecar(path)
        except EngineCacheError as exc:
            if "has no sidecar" not in str(exc):
                raise
            log.warning("%s; loading it unchecked", exc)
            return cls(path, None, device)
        sidecar = verify_engine(path)  # integrity, before TensorRT is imported
        try:
            verify_engine(path, platform=detect_platform(device))
        except EngineCacheError as exc:
            source = f" from {sidecar.onnx_path}" if sidecar.onnx_path else ""
            raise EngineCacheError(f"{exc}. Rebuild it{source} with `seg-perception build-engine`, or open the "
                                   "ONNX with backend 'tensorrt' to rebuild automatically") from None
        return cls(path, sidecar, device)

    @classmethod
    def from_onnx(cls, onnx_path: str | Path, precision: str = "fp16", rebuild: bool = True,
                  cache_dir: str | Path | None = None, device: int = 0, threads: int = 0,
                  **build_options) -> "TensorRTBackend":
        """The cached engine for `onnx_path` (built or rebuilt when missing or stale, unless `rebuild=False`).
        build_options: BuildConfig fields (workspace_mb, shapes, calib_images, calib_cache, timing_cache)."""
        from seg_perception.backends.engine_build import BuildConfig, engine_for

        config = BuildConfig(precision=precision, **build_options)
        engine, sidecar = engine_for(onnx_path, config, rebuild=rebuild, cache_dir=cache_dir)
        return cls(engine, sidecar, device)

    def infer(self, image: np.ndarray, want_logits: bool = False) -> InferenceOutputs:
        self.check_input(image)
        cudart, stream, bufs = self.cudart, self._stream, self._buffers
        np.copyto(bufs["image"].host[0], image)
        inp = bufs["image"]
        _check(cudart, cudart.cudaMemcpyAsync(inp.device, inp.host_ptr, inp.nbytes, self._h2d, stream), "upload")
        _check(cudart, cudart.cudaEventRecord(self._start, stream), "cudaEventRecord")
        if not self.context.execute_async_v3(int(stream)):
            raise BackendError(f"TensorRT enqueue failed for {self.path}")
        _check(cudart, cudart.cudaEventRecord(self._end, stream), "cudaEventRecord")
        outputs = ("labels", "confidence") + (("logits",) if want_logits and "logits" in bufs else ())
        for n in outputs:
            b = bufs[n]
            _check(cudart, cudart.cudaMemcpyAsync(b.host_ptr, b.device, b.nbytes, self._d2h, stream), "download")
        _check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        self._device_ms = float(_check(cudart, cudart.cudaEventElapsedTime(self._start, self._end), "elapsed"))
        return InferenceOutputs(labels=bufs["labels"].host[0], confidence=bufs["confidence"].host[0],
                                logits=bufs["logits"].host[0] if "logits" in outputs else None)

    def device_time_ms(self) -> float | None:
        return self._device_ms

    def close(self) -> None:
        if not getattr(self, "_buffers", None):
            return
        cudart = self.cudart
        cudart.cudaStreamSynchronize(self._stream)
        for b in self._buffers.values():
            b.free(cudart)
        self._buffers = {}
        cudart.cudaEventDestroy(self._start)
        cudart.cudaEventDestroy(self._end)
        cudart.cudaStreamDestroy(self._stream)
        self.context = self.engine = None
