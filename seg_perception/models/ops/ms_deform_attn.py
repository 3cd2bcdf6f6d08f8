"""Multi-scale deformable attention (Deformable DETR) with a `grid_sample` core, so it exports to ONNX.

The official module calls a custom CUDA kernel; its own PyTorch fallback samples each level with
`F.grid_sample(bilinear, zeros, align_corners=False)`, which exports as ONNX GridSample (opset >= 16) and is
in TensorRT's ONNX matrix from 8.5. Parameter names follow the official `MSDeformAttn`.
"""

from __future__ import annotations

import functools
import math
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg_perception.models.ops import table_constant


def ms_deform_attn_core(value: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                        sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """value B x S x h x d (levels concatenated), locations B x Lq x h x L x P x 2 in [0, 1],
    weights B x Lq x h x L x P -> B x Lq x (h*d)."""
    b, _, heads, d = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    values = value.split([hh * ww for hh, ww in spatial_shapes], dim=1)
    # points before queries (P x Lq samples per head), so the weighted sum over the points reduces a middle
    # axis with Lq-long contiguous runs; summed over the last axis (P = 4) it was ONNX Runtime's slow case
    grids = (2 * sampling_locations - 1).permute(0, 2, 3, 4, 1, 5).flatten(0, 1)  # B*h x L x P x Lq x 2
    weights = attention_weights.permute(0, 2, 3, 4, 1).reshape(b * heads, 1, levels, points, lq)
    per_level = []
    for level, (hh, ww) in enumerate(spatial_shapes):
        v = values[level].flatten(2).transpose(1, 2).reshape(b * heads, d, hh, ww)
        sampled = F.grid_sample(v, grids[:, level], mode="bilinear", padding_mode="zeros", align_corners=False)
        # summed level by level: stacking the levels first copied B*h*d*Lq*L*P floats (132 MB at 512x1024)
        per_level.append((sampled * weights[:, :, level]).sum(2))  # B*h x d x Lq
    return functools.reduce(operator.add, per_level).view(b, heads * d, lq).transpose(1, 2)


@functools.lru_cache(maxsize=64)
def _level_sizes(spatial_shapes: tuple[tuple[int, int], ...], heads: int, points: int) -> np.ndarray:
    """(W, H) of each level repeated in the sampling offsets' layout: (heads * levels * points * 2,)."""
    sizes = np.array([[ww, hh] for hh, ww in spatial_shapes], np.float32)
    return np.ascontiguousarray(np.broadcast_to(sizes[None, :, None, :], (heads, len(sizes), points, 2)).reshape(-1))


class MSDeformAttn(nn.Module):
    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Deformable DETR's init: each head starts sampling along its own direction, 1..P steps out.
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid *= torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value_in: torch.Tensor,
                spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        """query B x Lq x C, reference_points B|1 x Lq x L x 2 (x, y in [0, 1]), value_in B x S x C."""
        b, lq, _ = query.shape
        h, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_in).view(b, value_in.shape[1], h, -1)
        weights = self.attention_weights(query).view(b, lq, h, lv * p).softmax(-1).view(b, lq, h, lv, p)
        # offsets are in pixels of each level: divide by (W, H) of that level. The divisor and the reference
        # points are laid out along the last axis (h*L*P*2), so both broadcasts run over leading axes only:
        # ONNX Runtime broadcasts over a middle axis ~20x slower (13 vs 0.6 ms per layer at 512x1024).
        sizes = _level_sizes(tuple(map(tuple, spatial_shapes)), h, p)
        normalizer = table_constant(sizes, query.device, query.dtype)
        ref = reference_points[:, :, None, :, None, :].expand(-1, -1, h, -1, p, -1)
        locations = ref.reshape(ref.shape[0], lq, -1) + self.sampling_offsets(query) / normalizer
        return self.output_proj(ms_deform_attn_core(value, spatial_shapes, locations.view(b, lq, h, lv, p, 2),
                                                    weights))
