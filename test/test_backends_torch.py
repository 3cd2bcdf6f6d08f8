"""Torch backend: zoo spec parsing, checkpoints, the export contract's outputs, clear errors."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_checks import normalise  # noqa: E402

from seg_perception.backends import BackendError, open_backend  # noqa: E402
from seg_perception.backends.deploy_model import model_info_for  # noqa: E402
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
    backend = TorchBackend.from_zoo("metaseg-t", input_size=SIZE)
    with pytest.raises(ValueError, match="dtype must be uint8"):
        backend.infer(np.zeros((*SIZE, 3), np.float32))


@pytest.mark.parametrize("options, error, match", [
    (dict(precision="fp16"), ValueError, "precision fp16 needs a CUDA device"),
    (dict(cuda_graphs=True), ValueError, "cuda_graphs needs a CUDA device"),
    (dict(precision="bf16"), ValueError, "precision must be one of fp32, fp16"),
    (dict(device="gpu"), ValueError, "device must be auto, cpu, cuda or cuda:N"),
    (dict(device="cpu:1"), ValueError, "device must be"),
])
def test_options_are_checked_before_the_model_is_built(options, error, match):
    with pytest.raises(error, match=match) as exc:
        TorchBackend.from_zoo("no-such-model", **options)  # the option fails first, not the name
    assert "\n" not in str(exc.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_where_there_is_none_is_a_one_line_error(device):
    with pytest.raises(BackendError, match=f"device '{device}' requested but torch .* sees no CUDA device") as exc:
        open_backend("metaseg-t", "torch", device=device, precision="fp16", cuda_graphs=True)
    assert "\n" not in str(exc.value)
    auto = open_backend("metaseg-t", "torch", device="auto", input_size=SIZE)  # auto falls back to the CPU
    assert auto.device.type == "cpu" and auto.describe() == "torch cpu fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        open_backend("metaseg-t", "torch", device="auto", precision="fp16")


def test_channels_last_and_read_only_frames_keep_the_answers():
    torch.manual_seed(1)
    model = build_model("metaseg-t").eval()
    info = model_info_for("metaseg-t", SIZE, with_logits=True)
    image = np.random.default_rng(2).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    frozen = np.frombuffer(image.tobytes(), np.uint8).reshape(image.shape)  # as a ROS message's bytes arrive
    plain = TorchBackend(copy.deepcopy(model), info, channels_last=False)
    want = plain.infer(image, want_logits=True)
    nhwc = TorchBackend(model, info, channels_last=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about tensors over read-only numpy memory
        got = nhwc.infer(frozen, want_logits=True)

    def nhwc_weights(backend):
        return all(p.is_contiguous(memory_format=torch.channels_last) for p in backend.module.parameters()
                   if p.dim() == 4)

    assert nhwc_weights(nhwc) and not nhwc_weights(plain)
    np.testing.assert_allclose(got.logits, want.logits, rtol=1e-4, atol=1e-4)
    assert (got.labels == want.labels).mean() >= 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_and_graphs_agree_with_cpu_fp32():
    torch.manual_seed(0)
    model = build_model("metaseg-t").eval()
    info = model_info_for("metaseg-t", SIZE, with_logits=True)
    image = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    cpu = TorchBackend(copy.deepcopy(model), info).infer(image).labels.copy()
    eager = TorchBackend(copy.deepcopy(model), info, device="cuda", precision="fp16")
    first = eager.infer(image).labels.copy()
    assert (first == cpu).mean() > 0.99 and eager.device_time_ms() > 0
    graph = TorchBackend(model, info, device="cuda", precision="fp16", cuda_graphs=True)
    out = graph.infer(image, want_logits=True)
    assert graph.describe().endswith("CUDA graph") and out.logits.shape == (info.num_classes, *SIZE)
    assert (out.labels == first).mean() > 0.999 and graph.device_time_ms() > 0
    assert graph.infer(image).labels.ctypes.data == out.labels.ctypes.data  # pinned buffers, allocated once
