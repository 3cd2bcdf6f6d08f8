"""SegMAN encoder (CVPR 2025, arXiv 2412.11890): LASS blocks = neighbourhood attention + 2D selective scan.

Module and parameter names follow the official `segman_encoder.py` (yunxiangfu2001/SegMAN), so official and
ImageNet checkpoints load with no renaming. What changed for export (same numbers as the official kernels):
- natten's `na2d_qk`/`na2d_av` -> `ops.neighborhood_attention.na2d` (tiled halo attention, exact);
- `selective_scan_cuda_oflex` + Triton cross-scan/merge -> `ops.selective_scan` (doubling scan in fp32);
- the stage-4 bias, a bicubic resize of a learned 49x49 table to the token count, is computed as
  M @ table @ M^T with a constant bicubic matrix M (TensorRT has no cubic Resize, and a precomputed L x L
  constant would be 1.3 GB for SegMAN-B/L at 1024x2048).
SyncBN becomes BatchNorm2d (same keys). Maps smaller than a stage's kernel run with the window clamped to the
map (natten would reject them), so inputs below 224 px run too; H and W must be multiples of 32 for the head.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg_perception.models.flops import register_flop_handle
from seg_perception.models.layers import DropPath, drop_path_rates
from seg_perception.models.ops import counting_trace, static_shape, table_constant
from seg_perception.models.ops.neighborhood_attention import na2d
from seg_perception.models.ops.selective_scan import cross_merge, cross_scan, selective_scan


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (eps 1e-6, as the official code)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """Per-channel scale and bias as a grouped 1x1 conv (keys `weight` C x 1 x 1 x 1, `bias` C)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim, 1, 1, 1), init_value))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, groups=x.shape[1])


class RoPE(nn.Module):
    """2D axial rotary embedding per head: row angles on the first d/2 channels, column angles on the rest."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        angle = 1.0 / (10000 ** torch.linspace(0, 1, embed_dim // num_heads // 4))
        self.register_buffer("angle", angle.repeat_interleave(2))

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos), each H x W x d."""
        # positions as table constants: a traced arange/expand exports INT64 ConstantOfShape (TensorRT 8.6 rejects)
        rows, cols = (table_constant(grid, self.angle.device) for grid in position_grids(h, w))
        angles = torch.cat([rows * self.angle, cols * self.angle], dim=-1)
        return angles.sin(), angles.cos()


@functools.lru_cache(maxsize=64)
def position_grids(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column index of every position, each H x W x 1 float32."""
    return tuple(grid[..., None].astype(np.float32) for grid in np.meshgrid(np.arange(h), np.arange(w), indexing="ij"))


def rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """x * cos + rot(x) * sin with rot(x)_{2i} = -x_{2i+1}, rot(x)_{2i+1} = x_{2i}."""
    pairs = x.reshape(*static_shape(x)[:-1], -1, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos + rotated * sin


@functools.lru_cache(maxsize=64)
def bicubic_matrix(src: int, dst: int) -> np.ndarray:
    """dst x src matrix M with M @ x = F.interpolate(x, dst, mode='bicubic', align_corners=False) along one
    axis (PyTorch's kernel: A = -0.75, source index clamped at the borders)."""
    a = -0.75
    pos = (np.arange(dst) + 0.5) * (src / dst) - 0.5
    first = np.floor(pos).astype(np.int64)
    t = pos - first
    weights = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
               ((a + 2) * t - (a + 3)) * t * t + 1,
               ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
               ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a]
    m = np.zeros((dst, src))
    for offset, weight in zip(range(-1, 3), weights):
        np.add.at(m, (np.arange(dst), np.clip(first + offset, 0, src - 1)), weight)
    return m.astype(np.float32)


def _resize_bias(table: torch.Tensor, length: int) -> torch.Tensor:
    m = table_constant(bicubic_matrix(static_shape(table)[-1], length), table.device, table.dtype)
    return m @ table @ m.T


class ResizedPositionBias(torch.autograd.Function):
    """Named node while counting: the resize is weight preprocessing (constant per input size), counted 0
    like the official bicubic `F.interpolate`, which fvcore has no rule for."""

    @staticmethod
    def forward(ctx, table, length):
        return _resize_bias(table, length)


def resized_position_bias(table: torch.Tensor, length: int) -> torch.Tensor:
    """heads x S x S learned bias -> heads x L x L, bicubic as the official code, as two MatMuls."""
    if counting_trace():
        return ResizedPositionBias.apply(table, length)
    return _resize_bias(table, length)


register_flop_handle("prim::PythonOp.ResizedPositionBias", lambda inputs, outputs: 0)


class SS2D(nn.Module):
    """VMamba's 2D selective scan (official class `VSSM`, d_state 1, 4 directions, no gate or out-proj).

    x: B x D x H x W -> B x D x H x W (the sum of the four directional scans, mapped back to row-major).
    """

    def __init__(self, d_model: int, d_state: int = 1, directions: int = 4, dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        rank = math.ceil(d_model / 16)
        self.rank, self.d_state = rank, d_state
        bound = 1.0 / math.sqrt(d_model)  # nn.Linear's default init, as the official per-direction Linears
        self.x_proj_weight = nn.Parameter(
            torch.empty(directions * (rank + 2 * d_state), d_model, 1).uniform_(-bound, bound))
        std = rank ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(directions, d_model, rank).uniform_(-std, std))
        # softplus(bias) spread log-uniformly over [dt_min, dt_max] (Mamba's dt init)
        dt = torch.exp(torch.rand(directions, d_model) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(
            directions * d_model, 1))
        self.Ds = nn.Parameter(torch.ones(directions * d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w = static_shape(x)
        k = self.dt_projs_weight.shape[0]
        xs = cross_scan(x).reshape(b, k * d, h * w)
        x_dbl = F.conv1d(xs, self.x_proj_weight, groups=k).view(b, k, -1, h * w)
        dts, bs, cs = torch.split(x_dbl, [self.rank, self.d_state, self.d_state], dim=2)
        dts = F.conv1d(dts.reshape(b, -1, h * w), self.dt_projs_weight.reshape(k * d, -1, 1), groups=k)
        ys = selective_scan(xs, dts, -torch.exp(self.A_logs.float()), bs, cs, self.Ds,
                            self.dt_projs_bias.reshape(-1), delta_softplus=True)
        return cross_merge(ys.view(b, k, d, h * w), h, w).view(b, d, h, w)


class FFN(nn.Module):
    """1x1 expand -> GELU -> + depthwise 3x3 -> 1x1 project."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act_layer = nn.GELU()
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_layer(self.fc1(x))
        return self.fc2(x + self.dwconv(x))


class LASS(nn.Module):
    """Token mixer (official `Attention`): neighbourhood attention with RoPE and rpb, then either the
    selective-scan branch (stages 1-3) or global attention over the NA output (stage 4), plus LePE."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, global_mode: bool,
                 global_bias_size: int = 7) -> None:
        super().__init__()
        self.num_heads, self.global_mode = num_heads, global_mode
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.lepe = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 1)
        if not global_mode:
            self.dwconv = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.BatchNorm2d(dim))
            self.ssm = SS2D(dim)
            self.norm = LayerNorm2d(dim)
        tables = [nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))]
        if global_mode:  # learned at 224 px (7 x 7 tokens), resized to the token count
            tables.append(nn.Parameter(torch.zeros(num_heads, global_bias_size ** 2, global_bias_size ** 2)))
        self.rpb = nn.ParameterList(tables)

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        b, c, h, w = static_shape(x)
        qkv = self.qkv(x)
        lepe = self.lepe(qkv[:, 2 * c:])
        q, k, v = qkv.view(b, 3, self.num_heads, c // self.num_heads, h, w).permute(1, 0, 2, 4, 5, 3).unbind(0)
        q, k = rotate(q, sin, cos) * self.scale, rotate(k, sin, cos)
        out = na2d(q, k, v, self.rpb[0])  # b, heads, h, w, d
        if self.global_mode:
            q, k, out = q.flatten(2, 3), k.flatten(2, 3), out.flatten(2, 3)
            attn = q @ k.transpose(-1, -2) + resized_position_bias(self.rpb[1], h * w)
            out = (attn.softmax(-1) @ out).transpose(-1, -2).reshape(b, c, h, w)
        else:
            out = out.permute(0, 1, 4, 2, 3).reshape(b, c, h, w)
            out = self.norm(self.ssm(F.silu(self.dwconv(out)))) + out
        return self.proj(out + lepe)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, kernel_size: int, global_mode: bool, ffn_dim: int,
                 drop_path: float = 0.0, layer_scale: float | None = None) -> None:
        super().__init__()
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = LayerNorm2d(dim)
        self.token_mixer = LASS(dim, num_heads, kernel_size, global_mode)
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = FFN(dim, ffn_dim)
        self.drop_path = DropPath(drop_path)
        self.layer_scale1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.layer_scale2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe1(x)
        x = x + self.drop_path(self.layer_scale1(self.token_mixer(self.norm1(x), sin, cos)))
        x = x + self.cpe2(x)
        return x + self.drop_path(self.layer_scale2(self.mlp(self.norm2(x))))


class Stage(nn.Module):
    """Official `BasicLayer`: one RoPE table shared by the stage's blocks."""

    def __init__(self, dim: int, depth: int, num_heads: int, kernel_size: int, global_mode: bool, ffn_dim: int,
                 drop_paths: list[float], layer_scale: float | None) -> None:
        super().__init__()
        self.rope = RoPE(dim, num_heads)
        self.blocks = nn.ModuleList(Block(dim, num_heads, kernel_size, global_mode, ffn_dim, p, layer_scale)
                                    for p in drop_paths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sin, cos = self.rope(*static_shape(x)[2:])
        for block in self.blocks:
            x = block(x, sin, cos)
        return x


def stem(in_channels: int, dim: int) -> nn.Sequential:
    """Stride-4 stem: four conv3x3 (s2, s1, s2, s1) with BN, GELU between; keys `patch_embed.{0..10}`."""
    half = dim // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, half, 3, 2, 1, bias=False), nn.BatchNorm2d(half), nn.GELU(),
        nn.Conv2d(half, half, 3, 1, 1, bias=False), nn.BatchNorm2d(half), nn.GELU(),
        nn.Conv2d(half, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim), nn.GELU(),
        nn.Conv2d(dim, dim, 3, 1, 1, bias=False), nn.BatchNorm2d(dim))


class SegMANEncoder(nn.Module):
    """Four LASS stages at strides 4-32 (the last with global attention); returns the four stage maps.

    `layers` alternates stages and stride-2 conv+BN downsamples (the last is Identity), as the official code.
    """

    def __init__(self, embed_dims: tuple[int, ...], depths: tuple[int, ...], num_heads: tuple[int, ...],
                 kernel_sizes: tuple[int, ...], mlp_ratios: tuple[float, ...], layer_scale: float | None = None,
                 drop_path_rate: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        self.embed_dims = tuple(embed_dims)
        self.patch_embed = stem(in_channels, embed_dims[0])
        rates = drop_path_rates(drop_path_rate, sum(depths))
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            first = sum(depths[:i])
            self.layers.append(Stage(dim, depth, num_heads[i], kernel_sizes[i], i == len(depths) - 1,
                                     int(mlp_ratios[i] * dim), rates[first:first + depth], layer_scale))
            self.layers.append(nn.Sequential(nn.Conv2d(dim, embed_dims[i + 1], 3, 2, 1, bias=False),
                                             nn.BatchNorm2d(embed_dims[i + 1]))
                               if i < len(depths) - 1 else nn.Identity())
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i % 2 == 0:
                outs.append(x)
        return outs


def _init_weights(m: nn.Module) -> None:
    # the official `_init_weights` (applied after the token mixers' own init, so it wins)
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
