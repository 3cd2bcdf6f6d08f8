"""Backends behind one interface (`Backend`), chosen from the artifact a user points at.

  ''                      -> the embedded default ONNX model
  *.onnx                  -> ONNX Runtime (auto), or a TensorRT engine built and cached from it (tensorrt)
  *.engine / *.plan       -> TensorRT
  zoo name[:checkpoint]   -> torch (development and parity checks; needs the [models] extra)
"""

from __future__ import annotations

from pathlib import Path

from seg_perception.backends.base import Backend, BackendError, InferenceOutputs, ModelInfo

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "default_model.onnx"
ENGINE_SUFFIXES = (".engine", ".plan")


def resolve_model(model: str) -> str:
    """'' means the embedded default; paths are checked so a typo gets a clear message."""
    if not model:
        return str(DEFAULT_MODEL)
    return model


def is_file_artifact(model: str) -> bool:
    return model.endswith(".onnx") or model.endswith(ENGINE_SUFFIXES)


def backend_for(model: str, backend: str = "auto") -> str:
    """The backend that runs `model` ('' = the embedded default) when `backend` is asked for: onnxruntime,
    tensorrt or torch; ValueError when the two do not go together."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got '{backend}'")
    model = resolve_model(model)
    if model.endswith(ENGINE_SUFFIXES):
        if backend not in ("auto", "tensorrt"):
            raise ValueError(f"{model} is a TensorRT engine; backend '{backend}' cannot run it")
        return "tensorrt"
    if model.endswith(".onnx"):
        if backend == "torch":
            raise ValueError(f"{model} is an ONNX file; the torch backend takes a zoo name[:checkpoint]")
        return "tensorrt" if backend == "tensorrt" else "onnxruntime"
    if backend not in ("auto", "torch"):
        raise ValueError(f"'{model}' is a zoo name; export it first (seg-perception export) to use '{backend}'")
    return "torch"


def open_backend(model: str = "", backend: str = "auto", **options) -> Backend:
    """Open `model` with `backend`. Options go to the backend (threads, device, precision, ...)."""
    kind = backend_for(model, backend)
    model = resolve_model(model)
    if is_file_artifact(model) and not Path(model).is_file():
        raise BackendError(f"model file not found: {model}")
    if kind == "tensorrt":
        from seg_perception.backends.tensorrt_backend import TensorRTBackend
        if model.endswith(".onnx"):
            return TensorRTBackend.from_onnx(model, **options)
        return TensorRTBackend.from_engine(model, **options)
    if kind == "onnxruntime":
        from seg_perception.backends.onnxruntime_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend(model, **options)
    from seg_perception.backends.torch_backend import TorchBackend
    return TorchBackend.from_zoo(model, **options)


__all__ = ["Backend", "BackendError", "InferenceOutputs", "ModelInfo", "open_backend", "backend_for", "DEFAULT_MODEL",
           "BACKENDS"]
