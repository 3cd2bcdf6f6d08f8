"""Exportable selective scan and cross-scan/merge against slow loops written from their definitions."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seg_perception.models.ops.selective_scan import (  # noqa: E402
    cross_merge, cross_scan, linear_recurrence, selective_scan)

torch.set_num_threads(1)


def scan_reference(u, delta, A, B, C, D, delta_bias):
    """mamba_ssm's selective_scan_ref with real A: a sequential loop over time."""
    batch, channels, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    delta = torch.nn.functional.softplus(delta + delta_bias[:, None])
    Bc = B.repeat_interleave(channels // groups, dim=1)  # batch, channels, n, length
    Cc = C.repeat_interleave(channels // groups, dim=1)
    h = torch.zeros(batch, channels, n, dtype=u.dtype)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bc[..., t]
        ys.append((h * Cc[..., t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1)


@pytest.mark.parametrize("length,n", [(1, 1), (37, 1), (256, 1), (100, 3)])
def test_matches_sequential_loop(length, n):
    g = torch.Generator().manual_seed(length)
    batch, groups, d = 2, 4, 3
    u, delta = torch.randn(batch, groups * d, length, generator=g), torch.randn(batch, groups * d, length, generator=g)
    A = -torch.exp(torch.randn(groups * d, n, generator=g))
    B, C = torch.randn(batch, groups, n, length, generator=g), torch.randn(batch, groups, n, length, generator=g)
    D, bias = torch.randn(groups * d, generator=g), torch.randn(groups * d, generator=g)
    got = selective_scan(u, delta, A, B, C, D, bias)
    want = scan_reference(*(t.double() for t in (u, delta, A, B, C, D, bias)))
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)


def test_long_sequence_stays_finite_and_exact():
    # slow decay over 16k steps: the closed form exp(cumsum) would overflow here
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 16384, generator=g) * 0.01 + 0.99, torch.randn(1, 3, 16384, generator=g)
    h, want = torch.zeros(1, 3, dtype=torch.float64), []
    for t in range(16384):
        h = a[..., t].double() * h + b[..., t].double()
        want.append(h)
    got = linear_recurrence(a, b)
    assert torch.isfinite(got).all()
    want = torch.stack(want, -1)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4 * float(want.abs().max()))


def test_half_inputs_are_scanned_in_fp32():
    g = torch.Generator().manual_seed(2)
    args = [torch.randn(1, 4, 64, generator=g), torch.randn(1, 4, 64, generator=g), -torch.ones(4, 1),
            torch.randn(1, 4, 1, 64, generator=g), torch.randn(1, 4, 1, 64, generator=g), torch.ones(4), torch.zeros(4)]
    half = selective_scan(*(t.half() if i in (0, 1, 3, 4) else t for i, t in enumerate(args)))
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), selective_scan(*(t.half().float() if i in (0, 1, 3, 4) else t
                                                             for i, t in enumerate(args))), rtol=1e-3, atol=1e-3)


def test_cross_scan_orders_and_merge_inverts_them():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    xs = cross_scan(x)
    h, w = 4, 5
    for i in range(h):
        for j in range(w):
            p, c = i * w + j, j * h + i
            torch.testing.assert_close(xs[:, 0, :, p], x[:, :, i, j])
            torch.testing.assert_close(xs[:, 1, :, c], x[:, :, i, j])
            torch.testing.assert_close(xs[:, 2, :, h * w - 1 - p], x[:, :, i, j])
            torch.testing.assert_close(xs[:, 3, :, h * w - 1 - c], x[:, :, i, j])
    torch.testing.assert_close(cross_merge(xs, h, w), 4 * x.flatten(2))


def test_onnx_export_agrees_without_loops(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")

    class Scan(torch.nn.Module):
        def forward(self, u, delta, B, C):
            A = -torch.ones(8, 1)
            return cross_merge(selective_scan(u, delta, A, B, C, torch.ones(8), torch.zeros(8)).view(1, 4, 2, 30),
                               5, 6)

    g = torch.Generator().manual_seed(3)
    inputs = (torch.randn(1, 8, 30, generator=g), torch.randn(1, 8, 30, generator=g),
              torch.randn(1, 4, 1, 30, generator=g), torch.randn(1, 4, 1, 30, generator=g))
    path = tmp_path / "scan.onnx"
    torch.onnx.export(Scan(), inputs, str(path), opset_version=17, dynamo=False, input_names=["u", "d", "b", "c"])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Loop", "Scan", "CumSum"}, ops
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, dict(zip(["u", "d", "b", "c"], (t.numpy() for t in inputs))))[0]
    np.testing.assert_allclose(got, Scan()(*inputs).numpy(), rtol=0, atol=1e-4)
