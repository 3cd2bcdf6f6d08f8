"""ONNX Runtime backend: CPU by default; CUDA / TensorRT execution providers when installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seg_perception.backends.base import Backend, BackendError, InferenceOutputs, ModelInfo


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str, threads: int = 0, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        self.path = str(path)
        if not Path(self.path).is_file():
            raise BackendError(f"ONNX file not found: {self.path}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            opts.intra_op_num_threads = int(threads)
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(self.path, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
            raise BackendError(f"cannot load ONNX model {self.path}: {exc}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.info = ModelInfo.from_metadata(meta)
        except ValueError as exc:
            raise BackendError(f"{self.path}: {exc}") from exc
        self.providers = self.session.get_providers()
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._has_logits = "logits" in self._outputs

    def infer(self, image: np.ndarray, want_logits: bool = False) -> InferenceOutputs:
        self.check_input(image)
        names = ["labels", "confidence"] + (["logits"] if want_logits and self._has_logits else [])
        outs = self.session.run(names, {"image": image[None]})
        return InferenceOutputs(labels=outs[0][0], confidence=outs[1][0],
                                logits=outs[2][0] if len(outs) > 2 else None)
