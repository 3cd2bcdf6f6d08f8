"""Torch backend: zoo spec parsing, checkpoints, the export contract's outputs, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_checks import normalise  # noqa: E402

from seg_perception.backends import BackendError, open_backend  # noqa: E402
from seg_perception.backends.torch_backend import TorchBackend, parse_spec  # noqa: E402
from seg_perception.models.registry import build_model  # noqa: E402

SIZE = (64, 128)


def test_parse_spec():
    assert parse_spec("metaseg-t") == ("metaseg-t", None)
    assert parse_spec("metaseg-t:ckpt/a.pth") == ("metaseg-t", "ckpt/a.pth")
    with pytest.raises(ValueError, match="zoo name"):
        parse_spec(":a.pth")


def test_checkpoint_weights_are_used(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(3)
    model = build_model("metaseg-t").eval()
    ckpt = tmp_path / "metaseg-t.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    image = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    loaded = open_backend(f"metaseg-t:{ckpt}", input_size=SIZE)
    assert isinstance(loaded, TorchBackend) and loaded.info.input_size == SIZE
    got = loaded.infer(image, want_logits=True)
    with torch.inference_mode():
        x = normalise(image[None])  # the ImageNet statistics, written out in model_checks
        want = model(x)[0].numpy()
    # Same weights (another seed would differ by O(1)); layout changes only the float summation order.
    np.testing.assert_allclose(got.logits, want, rtol=1e-4, atol=1e-4)
    assert (got.labels == want.argmax(0)).mean() >= 0.999
    assert got.confidence.dtype == np.uint8 and got.logits.dtype == np.float32
    assert loaded.infer(image).logits is None and loaded.device_time_ms() is None


def test_errors_are_clear():
    with pytest.raises(BackendError, match="unknown model 'nope'"):
        TorchBackend.from_zoo("nope")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        TorchBackend.from_zoo("metaseg-t", fp16=True, input_size=SIZE)
    backend = TorchBackend.from_zoo("metaseg-t", input_size=SIZE)
    with pytest.raises(ValueError, match="dtype must be uint8"):
        backend.infer(np.zeros((*SIZE, 3), np.float32))
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no CUDA device"):
            TorchBackend.from_zoo("metaseg-t", device="cuda", input_size=SIZE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_agrees_with_cpu_fp32():
    torch.manual_seed(0)
    model = build_model("metaseg-t").eval()
    from seg_perception.deploy.export import model_info_for
    info = model_info_for("metaseg-t", SIZE, with_logits=True)
    image = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    cpu = TorchBackend(model, info).infer(image).labels.copy()
    gpu = TorchBackend(model, info, device="cuda", fp16=True)
    out = gpu.infer(image)
    assert (out.labels == cpu).mean() > 0.99 and gpu.device_time_ms() > 0
