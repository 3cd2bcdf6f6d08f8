"""Exportable selective scan and cross-scan/merge against slow loops written from their definitions."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seg_perception.models.ops.selective_scan import (  # noqa: E402
    chunked_linear_recurrence, cross_merge, cross_scan, linear_recurrence, selective_scan)

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


def sequential_recurrence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t from h = 0, one step at a time in float64."""
    h, out = torch.zeros(a.shape[:-1], dtype=torch.float64), []
    for t in range(a.shape[-1]):
        h = a[..., t].double() * h + b[..., t].double()
        out.append(h)
    return torch.stack(out, -1)


def test_long_sequence_stays_finite_and_exact():
    # slow decay over 16k steps: the closed form exp(cumsum) would overflow here
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 16384, generator=g) * 0.01 + 0.99, torch.randn(1, 3, 16384, generator=g)
    want = sequential_recurrence(a, b)
    got = linear_recurrence(a, b)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("length", [196, 784, 3136])  # SegMAN's 14x14, 28x28 and 56x56 token maps
def test_chunked_scan_carries_the_state_across_chunks(length):
    """The export's chunked graph (4 x 49, 14 x 56 and 49 x 64 steps here) against the plain loop, with a
    state of order one that lives for tens to thousands of steps, so every chunk inherits a real carry."""
    g = torch.Generator().manual_seed(length)
    a = torch.exp(-0.05 * torch.rand(2, 3, length, generator=g))
    b = 0.1 * torch.randn(2, 3, length, generator=g)
    want = sequential_recurrence(a, b)
    assert want.abs().max() > 0.5
    got = chunked_linear_recurrence(a, b)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


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


@pytest.mark.parametrize("hw", [(5, 6), (14, 14), (28, 28), (56, 56)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_onnx_export_agrees_without_loops(tmp_path, hw):
    """The exported graph (chunked from 196 tokens on) in ONNX Runtime against eager torch, with scan
    parameters that keep the state of order one for ~20 steps and more: a wrong carry between chunks shows."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    h, w = hw
    length = h * w

    class Scan(torch.nn.Module):
        def forward(self, u, delta, B, C):
            A = -torch.ones(8, 1)
            bias = torch.full((8,), -3.0)  # softplus(randn - 3) ~ 0.05: factors ~0.95
            return cross_merge(selective_scan(u, delta, A, B, C, torch.ones(8), bias).view(1, 4, 2, length), h, w)

    g = torch.Generator().manual_seed(3)
    inputs = (torch.randn(1, 8, length, generator=g), torch.randn(1, 8, length, generator=g),
              torch.randn(1, 4, 1, length, generator=g), torch.randn(1, 4, 1, length, generator=g))
    path = tmp_path / "scan.onnx"
    torch.onnx.export(Scan(), inputs, str(path), opset_version=17, dynamo=False, input_names=["u", "d", "b", "c"])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Loop", "Scan", "CumSum"}, ops
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, dict(zip(["u", "d", "b", "c"], (t.numpy() for t in inputs))))[0]
    want = Scan()(*inputs).numpy()
    assert np.abs(want).max() > 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
