"""MetaSeg decoder (WACV 2024): one Global Meta Block with Channel Reduction Attention per encoder stage 2-4.

Names follow the official `metaseg_head.py` (hyunwoo137/MetaSeg): `attn{2,3,4}` blocks, `linear_fuse` (mmcv
ConvModule), `linear_pred`, and mmseg BaseDecodeHead's `conv_seg`/`dropout`. `conv_seg` is never called by the
official forward but sits in every checkpoint, so it exists here for strict loading and parameter counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seg_perception.models.layers import ConvModule, DropPath, init_weights, resize_concat_fuse
from seg_perception.models.ops import static_hw


def pooled_window(h: int, w: int, ratio: int) -> tuple[int, int]:
    """Pool window (= stride) for a CRA key map: `ratio`, shrunk to the map so small inputs keep >= 1x1 keys."""
    return max(1, min(ratio, h)), max(1, min(ratio, w))


class StripAttention(nn.Module):
    """Attention with one query and one key channel per head ("strip" Q/K); values keep the full width.

    The logits are rank-1 per head (q_i * k_j), so the cost is dominated by A @ V, not by Q @ K^T.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, num_heads, bias=False)
        self.k = nn.Linear(dim, num_heads, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """x: B x N x C queries, kv: B x M x C keys/values -> B x N x C."""
        b, n, c = x.shape
        q = self.q(x).transpose(1, 2).unsqueeze(-1)  # B, heads, N, 1
        k = self.k(kv).transpose(1, 2).unsqueeze(2)  # B, heads, 1, M
        v = self.v(kv).reshape(b, -1, self.num_heads, c // self.num_heads).transpose(1, 2)  # B, heads, M, d
        attn = ((q @ k) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class ChannelReductionAttention(StripAttention):
    """CRA: strip self-attention whose keys/values are the input average-pooled by `pool_ratio`, then a 1x1
    conv, LayerNorm and GELU; with MetaSeg's ratios every stage attends to a stride-64 grid of the image."""

    def __init__(self, dim: int, num_heads: int, pool_ratio: int) -> None:
        super().__init__(dim, num_heads)
        self.pool_ratio = pool_ratio
        self.sr = nn.Conv2d(dim, dim, 1)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x: B x N x C tokens of an h x w map -> B x N x C."""
        b, _, c = x.shape
        grid = x.transpose(1, 2).reshape(b, c, h, w)
        window = pooled_window(*static_hw(grid), self.pool_ratio)  # fixed in an exported graph, as the ratios
        kv = self.sr(F.avg_pool2d(grid, window, window))
        return super().forward(x, self.act(self.norm(kv.flatten(2).transpose(1, 2))))


class Mlp(nn.Module):
    """1x1 conv MLP on tokens; dropout rate = the block's drop-path rate (an official-code quirk, kept)."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, h, w)
        x = self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        return x.flatten(2).transpose(1, 2)


class GlobalMetaBlock(nn.Module):
    """MetaFormer block: x + CRA(LN(x)), then x + MLP(LN(x)) (official names norm1/norm3)."""

    def __init__(self, dim: int, num_heads: int, pool_ratio: int, mlp_ratio: float = 2.0,
                 drop_path: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.attn = ChannelReductionAttention(dim, num_heads, pool_ratio)
        self.drop_path = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x C x h x w -> same shape."""
        b, c, h, w = x.shape  # traced sizes, so a --dynamic export reshapes to the size it runs at
        t = x.flatten(2).transpose(1, 2)
        t = t + self.drop_path(self.attn(self.norm1(t), h, w))
        t = t + self.drop_path(self.mlp(self.norm3(t), h, w))
        return t.transpose(1, 2).reshape(b, c, h, w)


class MetaSegHead(nn.Module):
    """Stages 2-4 -> GMB each -> resize to stride 8 -> concat [c4, c3, c2] -> 1x1 fuse -> class logits (stride 8)."""

    def __init__(self, in_channels=(64, 128, 320, 512), embed_dim: int = 512, num_classes: int = 19,
                 channels: int = 128, num_heads=(2, 4, 8), pool_ratios=(8, 4, 2), mlp_ratio: float = 2.0,
                 drop_path: float = 0.1, dropout_ratio: float = 0.1) -> None:
        super().__init__()
        c2, c3, c4 = in_channels[1:]
        # Unused by forward; mmseg's BaseDecodeHead creates it and every official checkpoint carries it.
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.attn4 = GlobalMetaBlock(c4, num_heads[2], pool_ratios[2], mlp_ratio, drop_path)
        self.attn3 = GlobalMetaBlock(c3, num_heads[1], pool_ratios[1], mlp_ratio, drop_path)
        self.attn2 = GlobalMetaBlock(c2, num_heads[0], pool_ratios[0], mlp_ratio, drop_path)
        self.linear_fuse = ConvModule(c2 + c3 + c4, embed_dim, 1)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)
        self.apply(init_weights)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        _, c2, c3, c4 = feats
        maps = [self.attn4(c4), self.attn3(c3), self.attn2(c2)]  # c2 is already at stride 8
        return self.linear_pred(self.dropout(resize_concat_fuse(self.linear_fuse, maps, c2)))
