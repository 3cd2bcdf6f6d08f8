"""ONNX Runtime backend: CPU by default; CUDA / TensorRT execution providers when installed and asked for.

Outputs are written by ORT straight into numpy buffers allocated once (I/O binding), and the caller's image is
bound in place, so a frame costs no allocation on our side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seg_perception.backends.base import Backend, BackendError, InferenceOutputs, ModelInfo
from seg_perception.backends.device import parse_device
from seg_perception.errors import OptionError

# Short provider names users may type, and the GPU providers `device` auto/cuda picks, in preference order.
PROVIDER_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "cpu": "CPUExecutionProvider"}
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_NUMPY_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16,
                 "tensor(int32)": np.int32, "tensor(int64)": np.int64}


def provider_names(providers: str | list[str]) -> list[str]:
    """'tensorrt, cuda' or a list of short or full names -> full ORT provider names; OptionError for others."""
    names = [p.strip() for p in providers.split(",")] if isinstance(providers, str) else list(providers)
    names = [PROVIDER_NAMES.get(n.lower(), n) for n in names if n]
    unknown = [n for n in names if not n.endswith("ExecutionProvider")]
    if unknown:
        raise OptionError(f"unknown ONNX Runtime provider(s) {unknown}: use {', '.join(PROVIDER_NAMES)} or full "
                         "names such as CUDAExecutionProvider")
    return names


def choose_providers(device: str = "auto", providers: str | list[str] = "",
                     available: list[str] | None = None) -> list[str]:
    """ONNX Runtime execution providers, in preference order, for `device` or an explicit `providers` list.

    device auto: the GPU providers this onnxruntime has (TensorRT, then CUDA), then the CPU; cpu: the CPU only;
    cuda[:N]: the GPU providers, an error when there are none. providers: 'tensorrt,cuda' or full names such
    as 'CUDAExecutionProvider', each of which must be present; the CPU provider is always last, for the ops a
    GPU provider does not take.
    """
    import onnxruntime as ort

    available = ort.get_available_providers() if available is None else available
    dev = parse_device(device)
    names = provider_names(providers)
    if names:
        missing = [n for n in names if n not in available]
        if missing:
            raise BackendError(f"ONNX Runtime {ort.__version__} here lacks {missing} (available: {available}); "
                               "install onnxruntime-gpu for CUDA/TensorRT, or leave providers empty")
    elif dev.kind == "cpu":
        names = []
    else:
        names = [p for p in GPU_PROVIDERS if p in available]
        if dev.kind == "cuda" and not names:
            raise BackendError(f"device '{device}' requested but ONNX Runtime {ort.__version__} here has no CUDA "
                               f"or TensorRT execution provider (available: {available}); install "
                               "onnxruntime-gpu, or use device cpu")
    return [n for n in names if n != PROVIDER_NAMES["cpu"]] + [PROVIDER_NAMES["cpu"]]


def provider_options(provider: str, gpu_index: int, model_path: str | Path) -> dict[str, str | int]:
    """A GPU provider's options. TensorRT's engine is cached beside the model: without the cache ONNX Runtime
    rebuilds it at every start, which takes minutes."""
    options: dict[str, str | int] = {"device_id": gpu_index}
    if provider == PROVIDER_NAMES["tensorrt"]:
        cache = str(Path(model_path).parent / "ort_trt_cache")
        options.update(trt_engine_cache_enable="True", trt_engine_cache_path=cache,
                       trt_timing_cache_enable="True", trt_timing_cache_path=cache)
    return options


def read_model_info(path: str | Path) -> ModelInfo:
    """The ModelInfo in an exported ONNX file's metadata, without building a session."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise BackendError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not an ONNX model
        raise BackendError(f"cannot read ONNX model {path}: {exc}") from exc
    try:
        return ModelInfo.from_metadata({p.key: p.value for p in proto.metadata_props})
    except ValueError as exc:
        raise BackendError(f"{path}: {exc}") from exc


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str, threads: int = 0, providers: str | list[str] = "", device: str = "auto") -> None:
        """threads: intra-op threads (0 = ORT's default, one per physical core); device and providers: see
        `choose_providers` (cuda:N puts the GPU providers on GPU N). A GPU asked for and missing is an error, not
        a silent CPU run; `providers` (and `describe()`) says which ones run."""
        import onnxruntime as ort

        self.path = str(path)
        if not Path(self.path).is_file():
            raise BackendError(f"ONNX file not found: {self.path}")
        chosen = choose_providers(device, providers)
        dev = parse_device(device)
        asked_for_gpu = dev.kind == "cuda" or bool(provider_names(providers))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(self.path, sess_options=opts, providers=[
                (p, provider_options(p, dev.gpu_index, self.path)) if p in GPU_PROVIDERS else p for p in chosen])
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
            raise BackendError(f"cannot load ONNX model {self.path}: {exc}") from exc
        try:
            self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        except ValueError as exc:
            raise BackendError(f"{self.path}: {exc}") from exc
        self.providers = self.session.get_providers()
        failed = [p for p in chosen if p not in self.providers]
        if failed and asked_for_gpu:  # ORT falls back to the CPU when a provider cannot start (no CUDA libraries)
            raise BackendError(f"ONNX Runtime could not start {failed} for {self.path} (its log says why); running "
                               f"on {self.providers} instead was not asked for")
        self._run_options = ort.RunOptions()  # its `terminate` flag stops a run between two kernels
        self._check_signature()
        h, w = self.info.input_size
        self._buffers = {o.name: np.empty(self._output_shape(o.name, o.shape, h, w), _NUMPY_DTYPES[o.type])
                         for o in self.session.get_outputs() if o.name in ("labels", "confidence", "logits")}
        # One binding per output set, outputs bound once to the preallocated buffers.
        self._bindings = {False: self._binding(("labels", "confidence"))}
        if "logits" in self._buffers:
            self._bindings[True] = self._binding(("labels", "confidence", "logits"))

    def _check_signature(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        problems = []
        if "image" not in inputs or inputs["image"].type != "tensor(uint8)":
            problems.append(f"needs a uint8 input 'image', has {[(i.name, i.type) for i in inputs.values()]}")
        for name in ("labels", "confidence"):
            if name not in outputs or outputs[name].type != "tensor(uint8)":
                problems.append(f"needs a uint8 output '{name}'")
        if problems:
            raise BackendError(f"{self.path} is not a seg-perception export: " + "; ".join(problems)
                               + " (a third-party graph: seg-perception wrap)")

    def _output_shape(self, name: str, declared: list, h: int, w: int) -> tuple[int, ...]:
        """The contract's shape for output `name`, checked against the dimensions the file fixes."""
        want = (1, self.info.num_classes, h, w) if name == "logits" else (1, h, w)
        # Exporters name the dims they could not fix (height, width, and sometimes batch/classes): skip those.
        if len(declared) != len(want) or any(isinstance(d, int) and d != x for d, x in zip(declared, want)):
            raise BackendError(f"{self.path}: output '{name}' has shape {declared}, expected {list(want)} "
                               f"for input {h}x{w} and {self.info.num_classes} classes")
        return want

    def _binding(self, names: tuple[str, ...]):
        binding = self.session.io_binding()
        for name in names:
            buf = self._buffers[name]
            binding.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        return binding

    def infer(self, image: np.ndarray, want_logits: bool = False) -> InferenceOutputs:
        self.check_input(image)
        if not image.flags.c_contiguous:
            raise ValueError(f"{self.name}: input must be C-contiguous")
        binding = self._bindings[want_logits and "logits" in self._buffers]
        h, w = self.info.input_size
        binding.bind_input("image", "cpu", 0, np.uint8, [1, h, w, 3], image.ctypes.data)
        self.session.run_with_iobinding(binding, self._run_options)
        logits = self._buffers["logits"][0] if binding is self._bindings.get(True) else None
        return InferenceOutputs(labels=self._buffers["labels"][0], confidence=self._buffers["confidence"][0],
                                logits=logits)

    def interrupt(self) -> None:
        self._run_options.terminate = True

    def describe(self) -> str:
        return f"{self.name} {self.providers}"

    def close(self) -> None:
        self._bindings.clear()
        self.session = None
