"""Mamba's selective scan (S6) as an exportable doubling scan, and VMamba's 4-way cross-scan / cross-merge.

The official SS2D calls `selective_scan_cuda_oflex` (a CUDA kernel) and Triton cross-scan kernels. Per channel
the scan is a first-order linear recurrence h_t = a_t h_{t-1} + b_t, which a Hillis-Steele doubling scan computes
exactly in ceil(log2 L) steps of Slice/Mul/Add/Concat (ONNX opset 17, no Loop). Every factor a_t = exp(delta_t A)
lies in (0, 1], so products only shrink and nothing overflows; the closed form exp(cumsum) would overflow on long
sequences. The scan always runs in fp32: in fp16 the error on a 16k-token sequence was ~1e-2
(research/models.md §6.6), so keep these layers fp32 in TensorRT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seg_perception.models.flops import register_flop_handle
from seg_perception.models.ops import counting_trace, static_shape


def linear_recurrence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along the last axis with h_{-1} = 0, for all t at once (doubling scan)."""
    length, shift = static_shape(a)[-1], 1
    while shift < length:
        # after this step element t holds the composition of the 2*shift steps ending at t; the first `shift`
        # elements have no partner and stay (Slice/Concat only: Pad would add INT64 shape ops TensorRT 8.6 rejects)
        b = torch.cat([b[..., :shift], b[..., shift:] + a[..., shift:] * b[..., :-shift]], dim=-1)
        if 2 * shift < length:
            a = torch.cat([a[..., :shift], a[..., shift:] * a[..., :-shift]], dim=-1)
        shift *= 2
    return b


# Longest chunk of the exported scan: steps unrolled per chunk against the length of the across-chunk scan.
MAX_CHUNK = 64


def chunked_linear_recurrence(a: torch.Tensor, b: torch.Tensor, max_chunk: int = MAX_CHUNK) -> torch.Tensor:
    """`linear_recurrence` computed in chunks: the graph the ONNX export writes (same numbers to ~1e-6).

    The sequence is cut into n chunks of T steps (T = the largest divisor of L <= `max_chunk`), laid out
    (T, ..., n) so that step t of every chunk is one contiguous block. Within the chunks the recurrence runs
    sequentially from h = 0, T unrolled Mul/Add steps on (..., n) rows, along with the running product P_t of
    the factors; the chunk-end states are then combined across chunks by the doubling scan (ceil(log2 n)
    steps on 1/T of the data), and each chunk adds P_t times the state entering it. That is O(L) element
    work in ~12 passes over the data, against ~10 passes per step for ceil(log2 L) steps of the doubling
    scan (ONNX Runtime CPU copies every Slice). Ops: Transpose, Reshape, Split, Mul, Add, Concat (ORT's
    transpose optimizer may move the Transposes; a constant Gather instead was slower). SegMAN-T, 512x1024,
    one thread: ONNX Runtime ~0.9 s per frame with this graph, ~2.6 s with the doubling scan.
    """
    *lead, length = static_shape(a)
    chunk = max(t for t in range(1, min(max_chunk, length) + 1) if length % t == 0)
    if chunk < 8 or length // chunk < 2:  # short or awkward lengths: the doubling scan is as good
        return linear_recurrence(a, b)
    n, dims = length // chunk, len(lead)
    to_rows = (dims + 1,) + tuple(range(dims + 1))  # ..., n, T -> T, ..., n

    def rows(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # flattened to T x (everything else): ONNX Runtime's transpose optimizer cannot push the Transpose
        # through that Reshape, so the Split below cuts contiguous rows. Split straight after the Transpose,
        # it turned the pair into a Split along the strided T axis, the slowest node of the graph.
        return x.reshape(*lead, n, chunk).permute(to_rows).reshape(chunk, -1).unbind(0)

    a_rows, b_rows = rows(a), rows(b)
    h, p = [b_rows[0]], [a_rows[0]]
    for t in range(1, chunk):
        h.append(a_rows[t] * h[-1] + b_rows[t])
        p.append(a_rows[t] * p[-1])
    ends = linear_recurrence(p[-1].reshape(*lead, n), h[-1].reshape(*lead, n))  # state at each chunk's end
    carry = torch.cat([torch.zeros_like(ends[..., :1]), ends[..., :-1]], dim=-1)  # state entering each chunk
    out = torch.stack(h) + torch.stack(p) * carry.reshape(-1)  # T x (..., n)
    return out.reshape(chunk, *lead, n).permute(tuple(range(1, dims + 2)) + (0,)).reshape(*lead, length)


def _selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus: bool) -> torch.Tensor:
    batch, channels, length = u.shape
    groups, n = B.shape[1], A.shape[1]
    dtype = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus and torch.onnx.is_in_onnx_export():
        # softplus as max(x, 0) + log(1 + exp(-|x|)): the same function (F.softplus returns x above 20, where
        # the second term is < 3e-9), and 4x faster in ONNX Runtime, whose Softplus kernel is not vectorised
        delta = F.relu(delta) + torch.log(1 + torch.exp(-delta.abs()))
    elif delta_softplus:
        delta = F.softplus(delta)
    # channels split into `groups` (scan directions); B_t and C_t are shared by the channels of a group
    delta_g = delta.view(batch, groups, channels // groups, 1, length)
    a = torch.exp(delta_g * A.float().view(groups, channels // groups, n, 1))
    b = (delta_g * u.view(batch, groups, channels // groups, 1, length)) * B.float().unsqueeze(2)
    # the export writes the chunked form (faster in ONNX Runtime on CPU); eager keeps the doubling scan
    scan = chunked_linear_recurrence if torch.onnx.is_in_onnx_export() else linear_recurrence
    h = scan(a, b)  # batch, groups, channels/groups, n, length
    y = (h * C.float().unsqueeze(2)).sum(3).reshape(batch, channels, length)
    if D is not None:
        y = y + D.float()[:, None] * u
    return y.to(dtype)


class SelectiveScan(torch.autograd.Function):
    """One named node for fvcore while counting (`prim::PythonOp.SelectiveScan`); forward only."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):
        return _selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                   delta_softplus: bool = True) -> torch.Tensor:
    """`selective_scan_fn` of mamba_ssm / VMamba with real A, computed in fp32, returned in u's dtype.

    u, delta: (batch, G*d, L); A: (G*d, N); B, C: (batch, G, N, L) shared by the d channels of group g;
    D, delta_bias: (G*d,). With delta' = softplus(delta + delta_bias), per channel and state n:
    h_t = exp(delta'_t A) h_{t-1} + delta'_t B_t u_t,  y_t = sum_n C_t h_t + D u_t.
    """
    if counting_trace():
        return SelectiveScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus)
    return _selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(batch, C, H, W) -> (batch, 4, C, H*W): row-major, column-major, and both reversed (CrossScanTriton)."""
    rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(ys: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(batch, 4, C, H*W) in the four scan orders -> (batch, C, H*W) row-major sum (CrossMergeTriton)."""
    rows = ys[:, 0] + ys[:, 2].flip(-1)
    cols = ys[:, 1] + ys[:, 3].flip(-1)
    return rows + cols.reshape(*cols.shape[:2], w, h).transpose(2, 3).flatten(2)


def selective_scan_flops(inputs, outputs) -> float:
    """VMamba's fvcore rule: 9*B*L*D*N for the recurrence plus B*D*L for the D skip."""
    from fvcore.nn.jit_handles import get_shape

    batch, channels, length = get_shape(inputs[0])
    n = get_shape(inputs[2])[1]
    return 9 * batch * length * channels * n + batch * channels * length


register_flop_handle("prim::PythonOp.SelectiveScan", selective_scan_flops)
register_flop_handle("aten::flip", None)  # data movement: 0 by the convention
