"""Exportable neighbourhood attention against a slow loop written from natten 0.17's definition."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seg_perception.models.ops.neighborhood_attention import axis_tiling, na2d  # noqa: E402

torch.set_num_threads(1)


def natten_reference(q, k, v, rpb):
    """Per query: window [s, s+k) per axis with s = clamp(i - k//2, 0, L - k) (natten's shift-inward rule,
    with the window clamped to the axis when L < k), logits q.k + rpb[h, dj + k - 1, dl + k - 1], softmax, sum."""
    batch, heads, h, w, _ = q.shape
    kernel = (rpb.shape[-1] + 1) // 2
    out = torch.zeros_like(q)
    for i in range(h):
        si = min(max(i - kernel // 2, 0), h - min(kernel, h))
        for j in range(w):
            sj = min(max(j - kernel // 2, 0), w - min(kernel, w))
            keys = [(a, b) for a in range(si, si + min(kernel, h)) for b in range(sj, sj + min(kernel, w))]
            ks = torch.stack([k[:, :, a, b] for a, b in keys], dim=2)  # batch, heads, n, d
            vs = torch.stack([v[:, :, a, b] for a, b in keys], dim=2)
            bias = torch.stack([rpb[:, a - i + kernel - 1, b - j + kernel - 1] for a, b in keys], dim=1)
            logits = (q[:, :, i, j, None, :] * ks).sum(-1) + bias
            out[:, :, i, j] = (logits.softmax(-1)[..., None] * vs).sum(2)
    return out


@pytest.mark.parametrize("hw,kernel", [((16, 24), 7), ((13, 11), 3), ((9, 20), 11), ((6, 5), 7), ((7, 7), 7)])
def test_matches_natten_reference_loop(hw, kernel):
    g = torch.Generator().manual_seed(kernel)
    q, k, v = (torch.randn(2, 3, *hw, 4, generator=g, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(3, 2 * kernel - 1, 2 * kernel - 1, generator=g, dtype=torch.float64)
    torch.testing.assert_close(na2d(q, k, v, rpb), natten_reference(q, k, v, rpb), rtol=0, atol=1e-4)


def test_tiling_windows_cover_every_query_and_interior_tiles_share_one_bias():
    t = axis_tiling(64, 11)
    assert (t.tile, t.halo) == (8, 18)
    # first tile, interior run, last tile: three bias patterns whatever the length
    assert [(count, pattern) for _, count, pattern in t.segments] == [(1, 0), (6, 1), (1, 2)]
    assert t.valid.sum(-1).min() == t.valid.sum(-1).max() == 11


def test_gradients_reach_queries_keys_values_and_bias():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 10, 12, 4, generator=g, requires_grad=True) for _ in range(3))
    rpb = torch.zeros(2, 9, 9, requires_grad=True)
    (na2d(q, k, v, rpb) * torch.randn(1, 2, 10, 12, 4, generator=g)).sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v, rpb))


def test_onnx_export_is_plain_ops_and_agrees(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")

    class NA(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rpb = torch.nn.Parameter(torch.randn(2, 13, 13))

        def forward(self, q, k, v):
            return na2d(q, k, v, self.rpb)

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 24, 20, 8, generator=g) for _ in range(3))
    model, path = NA().eval(), tmp_path / "na.onnx"
    torch.onnx.export(model, (q, k, v), str(path), opset_version=17, dynamo=False,
                      input_names=["q", "k", "v"], output_names=["out"])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops <= {"Gather", "MatMul", "Transpose", "Reshape", "Add", "Softmax", "Slice", "Concat", "Constant",
                   "Unsqueeze", "Cast", "Shape", "Flatten"}, ops
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, natten_reference(q, k, v, model.rpb).numpy(), rtol=0, atol=1e-4)
