"""Every registered model, exported once at a small size: ONNX Runtime agrees with PyTorch, and the graph passes
the TensorRT compatibility check. New registry entries are picked up automatically."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seg_perception.backends.deploy_model import model_info_for  # noqa: E402
from seg_perception.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from seg_perception.backends.torch_backend import TorchBackend  # noqa: E402
from seg_perception.deploy.export import export_onnx  # noqa: E402
from seg_perception.deploy.trt_compat import check_onnx  # noqa: E402
from seg_perception.models.registry import VARIANTS, build_model  # noqa: E402

# Smallest input each family accepts (SegMAN: >= 224 and a multiple of 32); unknown families get DEFAULT_SIZE.
SIZES = {"metaseg": (64, 128), "scaseg": (64, 128), "segman": (224, 224), "mask2former": (128, 128)}
DEFAULT_SIZE = (128, 128)
LABEL_AGREEMENT = 0.999  # fraction of pixels with equal labels
LOGIT_RTOL = 1e-3  # max |ort - torch| relative to max |torch|

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_onnxruntime_matches_torch_and_graph_passes_trt_check(name, tmp_path, one_thread):
    size = SIZES.get(VARIANTS[name].family, DEFAULT_SIZE)
    torch.manual_seed(0)
    model = build_model(name).eval()
    info = model_info_for(name, size, with_logits=True)
    path = export_onnx(model, info, tmp_path / f"{name}.onnx", with_logits=True)

    reference = TorchBackend(model, info)  # same weights, same DeployWrapper as the export
    ort = OnnxRuntimeBackend(str(path), threads=1)
    assert ort.info.input_size == size and ort.info.num_classes == VARIANTS[name].num_classes
    rng = np.random.default_rng(0)
    for _ in range(2):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        want = reference.infer(image, want_logits=True)
        got = ort.infer(image, want_logits=True)
        assert got.labels.shape == size and got.labels.dtype == np.uint8
        scale = float(np.abs(want.logits).max())
        err = float(np.abs(got.logits - want.logits).max())
        assert err <= LOGIT_RTOL * scale, f"{name}: logits differ by {err:.3g} (scale {scale:.3g})"
        agree = float((got.labels == want.labels).mean())
        assert agree >= LABEL_AGREEMENT, f"{name}: labels agree on {agree:.4%} of pixels"
        conf_err = np.abs(got.confidence.astype(int) - want.confidence.astype(int))
        assert (conf_err <= 1).mean() >= LABEL_AGREEMENT, f"{name}: confidence differs by up to {conf_err.max()}"

    report = check_onnx(path)
    assert report.ok, report.describe()
