"""2D neighbourhood attention (natten 0.17 `na2d_qk` + softmax + `na2d_av`, dilation 1) as tiled halo attention.

natten's window for a query at index i along an axis of length L is [s(i), s(i) + k) with
s(i) = clamp(i - k//2, 0, L - k): windows shift inward at the borders instead of padding, and the relative
position bias of key j is rpb[j - i + k - 1] per axis. natten is a CUDA extension; this form is plain
Gather/MatMul/Softmax: queries are cut into t x t tiles, each tile attends densely to the (t + 2r) x (t + 2r)
halo that holds every window of its queries (r = k//2), and a constant additive mask (-inf outside each
query's exact window) plus the gathered rpb make it exact. Interior tiles share one bias block, so the bias
costs a few small constants per layer instead of a tensor the size of the logits.

Maps smaller than the kernel (natten rejects them) use the whole axis as the window; the bias index stays
j - i + k - 1, so the model still runs on small inputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from seg_perception.models.flops import register_flop_handle
from seg_perception.models.ops import counting_trace, static_shape, table_constant

# Largest query tile side: halo/window overhead (t + 2r)^2 / k^2 against the number of tiles.
MAX_TILE = 8


def window_starts(length: int, kernel: int) -> np.ndarray:
    """natten's first key index per query along one axis (windows shifted inward at the borders)."""
    window = min(kernel, length)
    return np.clip(np.arange(length) - kernel // 2, 0, length - window)


@dataclass(frozen=True, eq=False)  # hashed by identity: instances are cached, arrays are not hashable
class AxisTiling:
    """Query tiles and key halos along one axis, and the bias pattern of each run of tiles."""

    tile: int  # queries per tile
    halo: int  # keys per tile
    halo_keys: np.ndarray  # (n_tiles * halo,) int64 key index of each tile's halo, tile-major
    segments: tuple[tuple[int, int, int], ...]  # (first tile, tiles, pattern) runs of tiles with equal patterns
    bias_index: np.ndarray  # (patterns, tile, halo) rpb index j - i + k - 1 (0 where masked)
    valid: np.ndarray  # (patterns, tile, halo) key inside the query's window


@functools.lru_cache(maxsize=256)
def axis_tiling(length: int, kernel: int, max_tile: int = MAX_TILE) -> AxisTiling:
    tile = max(t for t in range(1, max_tile + 1) if length % t == 0)
    halo = min(tile + 2 * (kernel // 2), length)
    n_tiles = length // tile
    first_key = np.clip(np.arange(n_tiles) * tile - kernel // 2, 0, length - halo)
    keys = first_key[:, None] + np.arange(halo)  # tiles, halo
    queries = np.arange(length).reshape(n_tiles, tile)
    starts = window_starts(length, kernel).reshape(n_tiles, tile, 1)
    valid = (keys[:, None, :] >= starts) & (keys[:, None, :] < starts + min(kernel, length))
    index = np.where(valid, keys[:, None, :] - queries[:, :, None] + kernel - 1, 0)
    segments, patterns = [], []
    for t in range(n_tiles):
        if patterns and np.array_equal(index[t], index[t - 1]) and np.array_equal(valid[t], valid[t - 1]):
            first, count, pattern = segments[-1]
            segments[-1] = (first, count + 1, pattern)
        else:
            segments.append((t, 1, len(patterns)))
            patterns.append(t)
    return AxisTiling(tile, halo, keys.reshape(-1), tuple(segments), index[patterns], valid[patterns])


@functools.lru_cache(maxsize=1024)
def _bias_tables(rows: AxisTiling, cols: AxisTiling, row_pattern: int, col_pattern: int,
                 table_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat rpb index and additive mask for one (row pattern, column pattern) block, laid out as the logits'
    (query row, query col) x (key row, key col)."""
    ri, rv = rows.bias_index[row_pattern], rows.valid[row_pattern]  # tile, halo
    ci, cv = cols.bias_index[col_pattern], cols.valid[col_pattern]
    index = ri[:, None, :, None] * table_width + ci[None, :, None, :]
    mask = np.where(rv[:, None, :, None] & cv[None, :, None, :], 0.0, -np.inf).astype(np.float32)
    shape = (rows.tile * cols.tile, rows.halo * cols.halo)
    return index.reshape(-1).astype(np.int64), mask.reshape(shape)


def _tiles(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(..., R*rows, C*cols, d) -> (..., R, C, rows*cols, d)."""
    *lead, h, w, d = static_shape(x)
    x = x.reshape(*lead, h // rows, rows, w // cols, cols, d).transpose(-4, -3)
    return x.reshape(*lead, h // rows, w // cols, rows * cols, d)


def _untile(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    *lead, tr, tc, _, d = static_shape(x)
    x = x.reshape(*lead, tr, tc, rows, cols, d).transpose(-4, -3)
    return x.reshape(*lead, tr * rows, tc * cols, d)


def _na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor) -> torch.Tensor:
    h, w = static_shape(q)[-3:-1]  # q is (..., H, W, d)
    table_width = static_shape(rpb)[-1]  # 2k - 1
    kernel = (table_width + 1) // 2
    rows, cols = axis_tiling(h, kernel), axis_tiling(w, kernel)

    def halos(x: torch.Tensor) -> torch.Tensor:
        x = x.index_select(-3, table_constant(rows.halo_keys, x.device))
        x = x.index_select(-2, table_constant(cols.halo_keys, x.device))
        return _tiles(x, rows.halo, cols.halo)

    logits = _tiles(q, rows.tile, cols.tile) @ halos(k).transpose(-1, -2)  # ..., R, C, t*t, halo*halo
    table = rpb.flatten(1)  # heads, (2k-1)^2
    blocks = []
    for r0, rn, rp in rows.segments:
        row = []
        for c0, cn, cp in cols.segments:
            index, mask = _bias_tables(rows, cols, rp, cp, table_width)
            bias = table.index_select(1, table_constant(index, q.device)).view(-1, 1, 1, *mask.shape)
            bias = bias + table_constant(mask, logits.device, logits.dtype)
            row.append(logits[..., r0:r0 + rn, c0:c0 + cn, :, :] + bias)
        blocks.append(torch.cat(row, dim=-3) if len(row) > 1 else row[0])
    logits = torch.cat(blocks, dim=-4) if len(blocks) > 1 else blocks[0]
    return _untile(logits.softmax(-1) @ halos(v), rows.tile, cols.tile)


class NeighborhoodAttention2D(torch.autograd.Function):
    """One named node for fvcore while counting (`prim::PythonOp.NeighborhoodAttention2D`); forward only."""

    @staticmethod
    def forward(ctx, q, k, v, rpb):
        return _na2d(q, k, v, rpb)


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor) -> torch.Tensor:
    """Neighbourhood attention with relative position bias, as natten's na2d_qk(rpb) -> softmax -> na2d_av.

    q, k, v: (batch, heads, H, W, d), q already scaled; rpb: (heads, 2k-1, 2k-1), which sets the kernel k.
    Returns (batch, heads, H, W, d). Index tables depend on H x W only, so they are constants of a
    fixed-size exported graph.
    """
    if counting_trace():
        return NeighborhoodAttention2D.apply(q, k, v, rpb)
    return _na2d(q, k, v, rpb)


def na2d_flops(inputs, outputs) -> float:
    """natten's fvcore rule: QK = B*h*H*W*d*k^2 (+ B*h*H*W*k^2 for the bias), AV = B*h*H*W*d*k^2."""
    from fvcore.nn.jit_handles import get_shape

    batch, heads, h, w, d = get_shape(inputs[0])
    kernel = (get_shape(inputs[3])[-1] + 1) // 2
    return batch * heads * h * w * kernel * kernel * (2 * d + 1)


register_flop_handle("prim::PythonOp.NeighborhoodAttention2D", na2d_flops)
