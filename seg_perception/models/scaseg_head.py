"""SCASeg decoder (arXiv 2411.17061, IEEE TIP 2026): Strip Cross-Attention inside Cross-Layer Blocks.

Built from the paper's description only (no official code or tables were reachable; docs/models.md lists every
open choice, and the registry marks the entries unchecked). Top-down over the four encoder stages i = 4..1:

    M_i = Cat[rho(F_1), ..., rho(F_i), rho(D_{i+1}), ..., rho(D_4)]   (rho: average-pool to the key grid)
    D_i = CLB(lateral_i(F_i), M_i)                                    (encoder features are the queries)
    logits = conv_seg(fuse(Cat[Up(D_1), ..., Up(D_4)]))               (at stride 4)

The key grid is stride 64 of the input, as in MetaSeg's CRA, so keys stay few at any resolution. Strip
attention: queries and keys have one channel per head, values keep the full width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seg_perception.models.layers import ConvModule, DropPath, init_weights, resize_concat_fuse
from seg_perception.models.metaseg_head import StripAttention
from seg_perception.models.ops import static_hw

KEY_STRIDE = 64


def pool_to_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Average-pool `x` with an integer window onto `grid` (exportable, unlike a non-divisible adaptive pool)."""
    h, w = static_hw(x)
    window = (max(1, h // grid[0]), max(1, w // grid[1]))
    return F.avg_pool2d(x, window, window)[:, :, :grid[0], :grid[1]]


class LocalPerceptionModule(nn.Module):
    """Depthwise 3x3 conv + BN + GELU: the convolutional local context the CLB adds beside global attention."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.dwconv(x)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CrossLayerBlock(nn.Module):
    """D = CLB(query map, multi-stage key map): strip cross-attention, local perception, MLP, each residual."""

    def __init__(self, dim: int, kv_channels: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.blend = nn.Conv2d(kv_channels, dim, 1)
        self.kv_norm = nn.LayerNorm(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = StripAttention(dim, num_heads)
        self.lpm = LocalPerceptionModule(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """x: B x C x h x w queries; keys: B x kv_channels x gh x gw (pooled) -> B x C x h x w."""
        b, c, h, w = x.shape
        kv = F.gelu(self.kv_norm(self.blend(keys).flatten(2).transpose(1, 2)))
        t = x.flatten(2).transpose(1, 2)
        t = t + self.drop_path(self.attn(self.norm1(t), kv))
        x = t.transpose(1, 2).reshape(b, c, h, w)
        x = x + self.drop_path(self.lpm(x))
        t = self.norm2(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        return x + self.drop_path(self.mlp(t))


class SCASegHead(nn.Module):
    """Four lateral query maps, top-down Cross-Layer Blocks, fusion at stride 4 -> logits (stride 4)."""

    def __init__(self, in_channels=(32, 64, 160, 256), embed_dim: int = 128, num_classes: int = 19,
                 num_heads=(1, 2, 4, 8), mlp_ratio: float = 2.0, drop_path: float = 0.1,
                 dropout_ratio: float = 0.1) -> None:
        super().__init__()
        self.num_stages = len(in_channels)
        for i, c in enumerate(in_channels, start=1):
            setattr(self, f"lateral{i}", nn.Conv2d(c, embed_dim, 1))
            # keys of stage i: encoder stages 1..i plus decoder outputs i+1..n
            kv_channels = sum(in_channels[:i]) + embed_dim * (self.num_stages - i)
            setattr(self, f"clb{i}", CrossLayerBlock(embed_dim, kv_channels, num_heads[i - 1], mlp_ratio, drop_path))
        self.linear_fuse = ConvModule(embed_dim * self.num_stages, embed_dim, 1)
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.conv_seg = nn.Conv2d(embed_dim, num_classes, 1)
        self.apply(init_weights)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        h1, w1 = static_hw(feats[0])
        stride_ratio = KEY_STRIDE // 4  # stage 1 is at stride 4
        grid = (max(1, h1 // stride_ratio), max(1, w1 // stride_ratio))
        pooled_enc = [pool_to_grid(f, grid) for f in feats]
        decoded: dict[int, torch.Tensor] = {}
        for i in range(self.num_stages, 0, -1):
            keys = torch.cat(pooled_enc[:i] + [pool_to_grid(decoded[j], grid)
                                               for j in range(i + 1, self.num_stages + 1)], dim=1)
            query = getattr(self, f"lateral{i}")(feats[i - 1])
            decoded[i] = getattr(self, f"clb{i}")(query, keys)
        maps = [decoded[i] for i in range(1, self.num_stages + 1)]  # decoded[1] is at stride 4, as feats[0]
        return self.conv_seg(self.dropout(resize_concat_fuse(self.linear_fuse, maps, feats[0])))
