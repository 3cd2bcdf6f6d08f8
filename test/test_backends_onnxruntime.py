"""ONNX Runtime backend: same answers as a plain session, buffers reused across frames, clear errors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from deploy_graphs import contract_onnx
from seg_perception.backends import BackendError, open_backend
from seg_perception.backends.onnxruntime_backend import (
    GPU_PROVIDERS, OnnxRuntimeBackend, choose_providers, provider_options, read_model_info,
)


def test_matches_a_plain_session_on_a_real_model(tiny_onnx):
    backend = OnnxRuntimeBackend(str(tiny_onnx), threads=1)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    h, w = backend.info.input_size
    rng = np.random.default_rng(1)
    for _ in range(2):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = backend.infer(image, want_logits=True)
        labels, conf, logits = session.run(None, {"image": image[None]})
        np.testing.assert_array_equal(got.labels, labels[0])
        np.testing.assert_array_equal(got.confidence, conf[0])
        np.testing.assert_allclose(got.logits, logits[0], rtol=1e-5, atol=1e-5)
    assert backend.infer(image).logits is None


def test_outputs_live_in_buffers_allocated_once(tmp_path):
    backend = open_backend(str(contract_onnx(tmp_path / "m.onnx")), "onnxruntime", threads=1)
    backend.warm_up(2)  # black frames through the same buffers: the next frame's outputs are its own
    a = np.zeros((8, 16, 3), np.uint8)
    a[..., 2] = 200  # blue wins everywhere
    first = backend.infer(a)
    ptr = first.labels.ctypes.data
    assert (first.labels == 2).all() and (first.confidence == 200).all()
    b = np.zeros((8, 16, 3), np.uint8)
    b[..., 1] = 7
    second = backend.infer(b)
    assert second.labels.ctypes.data == ptr  # same memory, rewritten in place
    assert (second.labels == 1).all() and (second.confidence == 7).all()


def test_dynamic_export_runs_at_its_metadata_size(tmp_path):
    backend = OnnxRuntimeBackend(str(contract_onnx(tmp_path / "d.onnx", size=(6, 10), dynamic=True)))
    out = backend.infer(np.full((6, 10, 3), 3, np.uint8))
    assert out.labels.shape == (6, 10) and (out.confidence == 3).all()


@pytest.mark.parametrize("image, match", [
    (np.zeros((8, 15, 3), np.uint8), r"\(8, 16, 3\).*got shape \(8, 15, 3\)"),
    (np.zeros((8, 16, 3), np.float32), "dtype must be uint8"),
    (np.zeros((16, 8, 3), np.uint8).transpose(1, 0, 2), "C-contiguous"),
])
def test_bad_input_is_named(tmp_path, image, match):
    backend = OnnxRuntimeBackend(str(contract_onnx(tmp_path / "m.onnx")))
    with pytest.raises(ValueError, match=match):
        backend.infer(image)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(BackendError, match="not found"):
        OnnxRuntimeBackend(str(tmp_path / "missing.onnx"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"garbage" * 10)
    with pytest.raises(BackendError, match="cannot load ONNX model"):
        OnnxRuntimeBackend(str(corrupt))
    with pytest.raises(BackendError, match="cannot read ONNX model"):
        read_model_info(corrupt)
    with pytest.raises(BackendError, match="metadata lacks"):
        OnnxRuntimeBackend(str(contract_onnx(tmp_path / "nometa.onnx", metadata=False)))
    with pytest.raises(BackendError, match="needs a uint8 output 'confidence'"):
        OnnxRuntimeBackend(str(contract_onnx(tmp_path / "nolabels.onnx", outputs=("labels",))))


def test_missing_gpu_provider_is_an_error_not_a_silent_cpu_run(tmp_path):
    if set(GPU_PROVIDERS) & set(ort.get_available_providers()):
        pytest.skip("this onnxruntime has a GPU provider")
    model = str(contract_onnx(tmp_path / "m.onnx"))
    with pytest.raises(BackendError, match="device 'cuda:1' requested but ONNX Runtime .* no CUDA or TensorRT"):
        OnnxRuntimeBackend(model, device="cuda:1")
    with pytest.raises(BackendError, match=r"lacks \['CUDAExecutionProvider'\]"):
        OnnxRuntimeBackend(model, providers="cuda")
    with pytest.raises(ValueError, match="device must be"):
        OnnxRuntimeBackend(model, device="gpu")
    with pytest.raises(ValueError, match=r"unknown ONNX Runtime provider\(s\) \['gpu'\]"):
        OnnxRuntimeBackend(model, providers="gpu,cpu")
    # auto: no GPU provider here, so the CPU, and the backend says so
    assert OnnxRuntimeBackend(model).describe() == "onnxruntime ['CPUExecutionProvider']"


def test_providers_follow_the_device_and_the_preference_order():
    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    cuda_only = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", available=every) == every
    assert choose_providers("cuda:1", available=cuda_only) == cuda_only
    assert choose_providers("auto", available=["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers("cpu", available=every) == ["CPUExecutionProvider"]
    assert choose_providers("auto", "cpu, cuda", available=every) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cpu", ["TensorrtExecutionProvider"], available=every) == \
        ["TensorrtExecutionProvider", "CPUExecutionProvider"]


def test_tensorrt_provider_caches_its_engine_beside_the_model(tmp_path):
    """Without the cache, ONNX Runtime's TensorRT provider rebuilds the engine at every node start (minutes)."""
    opts = provider_options("TensorrtExecutionProvider", 1, tmp_path / "m.onnx")
    assert opts["device_id"] == 1 and opts["trt_engine_cache_enable"] == "True"
    assert opts["trt_engine_cache_path"] == str(tmp_path / "ort_trt_cache")
    assert provider_options("CUDAExecutionProvider", 0, tmp_path / "m.onnx") == {"device_id": 0}
