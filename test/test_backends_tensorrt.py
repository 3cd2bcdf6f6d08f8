"""TensorRT backend end to end: build, cache, run, compare with ONNX Runtime. Needs TensorRT, cuda-python and a
GPU; everything that can be checked without them is in test_backends_engine_cache.py / test_deploy_build_engine.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (GPU machines only)")

from seg_perception.backends.engine_cache import (  # noqa: E402
    EngineCacheError, detect_platform, engine_path_for, sidecar_path,
)
from seg_perception.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from seg_perception.backends.tensorrt_backend import TensorRTBackend  # noqa: E402


@pytest.fixture(scope="module")
def platform():
    try:
        return detect_platform()
    except Exception as exc:  # no driver / no GPU
        pytest.skip(f"no usable CUDA GPU: {exc}")


@pytest.fixture
def onnx_copy(tiny_onnx, tmp_path):
    path = tmp_path / tiny_onnx.name
    path.write_bytes(tiny_onnx.read_bytes())
    return path


@pytest.mark.timeout(600)
@pytest.mark.parametrize("precision, agreement", [("fp32", 0.999), ("fp16", 0.99)])
def test_engine_agrees_with_onnxruntime(platform, onnx_copy, precision, agreement):
    backend = TensorRTBackend.from_onnx(onnx_copy, precision=precision)
    reference = OnnxRuntimeBackend(str(onnx_copy))
    assert backend.info.input_size == reference.info.input_size
    image = np.random.default_rng(0).integers(0, 256, (*backend.info.input_size, 3), dtype=np.uint8)
    got, want = backend.infer(image, want_logits=True), reference.infer(image, want_logits=True)
    assert (got.labels == want.labels).mean() >= agreement
    if precision == "fp32":
        assert np.abs(got.logits - want.logits).max() <= 1e-3 * np.abs(want.logits).max()
    assert backend.device_time_ms() > 0
    backend.close()


@pytest.mark.timeout(600)
def test_stale_sidecar_is_refused_then_rebuilt(platform, onnx_copy):
    TensorRTBackend.from_onnx(onnx_copy, precision="fp32").close()
    engine = engine_path_for(onnx_copy, "fp32")
    raw = json.loads(sidecar_path(engine).read_text())
    raw["key"]["trt_version"] = "9.0.0"
    sidecar_path(engine).write_text(json.dumps(raw))
    with pytest.raises(EngineCacheError, match="TensorRT version: engine has 9.0.0"):
        TensorRTBackend.from_engine(engine)
    with pytest.raises(EngineCacheError, match="TensorRT version"):
        TensorRTBackend.from_onnx(onnx_copy, precision="fp32", rebuild=False)
    TensorRTBackend.from_onnx(onnx_copy, precision="fp32").close()  # rebuilds
    assert json.loads(sidecar_path(engine).read_text())["key"]["trt_version"] == trt.__version__
