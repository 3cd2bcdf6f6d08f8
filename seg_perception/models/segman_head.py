"""SegMAN decoder (official `SegMANDecoder`): SegFormer-style fusion of stages 2-4 plus MMSCopE, a
multi-scale context module that pixel-unshuffles three scales of the fused map to stride 32 and mixes them
with one 2D selective-scan block whose sequence length grows with the input.

Names follow the official `segman_decoder.py` (mmcv ConvModules, `linear_c{2,3,4}.proj`, `vssm.*`, and mmseg
BaseDecodeHead's `conv_seg`/`dropout`). Input H and W must be multiples of 32 (pixel-unshuffle).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seg_perception.models.layers import ConvModule
from seg_perception.models.ops import static_shape
from seg_perception.models.segman_encoder import FFN, SS2D, LayerNorm2d


class MLP(nn.Module):
    """Per-pixel Linear (SegFormer's `MLP`, key `proj`): B x C x H x W -> B x E x H x W."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class VSSMBlock(nn.Module):
    """x + cpe1; x + SS2D(LN(x)); x + cpe2; x + FFN_4x(LN(x)) (no layer scale, no drop path)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.token_mixer = SS2D(dim)
        self.norm2 = LayerNorm2d(dim)
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.mlp = FFN(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe1(x)
        x = x + self.token_mixer(self.norm1(x))
        x = x + self.cpe2(x)
        return x + self.mlp(self.norm2(x))


class SegMANHead(nn.Module):
    """Stages 2-4 -> logits at stride 8. `channels` = E (official `channels`), `feat_proj_dim` = P."""

    def __init__(self, in_channels: tuple[int, ...], channels: int, feat_proj_dim: int, num_classes: int,
                 dropout_ratio: float = 0.1) -> None:
        super().__init__()
        e, p = channels, feat_proj_dim
        # mmseg BaseDecodeHead members first, in its order
        self.conv_seg = nn.Conv2d(e, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.conv_downsample_2 = ConvModule(e, 2 * e, 3, stride=2, padding=1)
        self.conv_downsample_4 = ConvModule(e, 4 * e, 5, stride=4, padding=1)
        self.linear_c4 = MLP(in_channels[3], p)
        self.linear_c3 = MLP(in_channels[2], p)
        self.linear_c2 = MLP(in_channels[1], p)
        self.linear_fuse = ConvModule(3 * p, e)
        # reduce_channels[i] takes 4 * 2^i * E: [0] the stride-4 conv, [1] unshuffled x2, [2] unshuffled x
        self.reduce_channels = nn.ModuleList(ConvModule(4 * 2 ** i * e, e) for i in range(3))
        self.vssm = VSSMBlock(3 * e)
        self.short_path = ConvModule(e, e)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(e, e))
        self.proj_out = ConvModule(3 * e, p)
        self.cat = ConvModule(5 * e + 3 * p, e)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        _, c2, c3, c4 = feats
        size = static_shape(c2)[2:]
        up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        c4, c3, c2 = up(self.linear_c4(c4)), up(self.linear_c3(c3)), self.linear_c2(c2)
        x = self.linear_fuse(torch.cat([c4, c3, c2], dim=1))

        # MMSCopE: three scales of x brought to stride 32 and mixed by one selective-scan block
        scales = torch.cat([self.reduce_channels[2](F.pixel_unshuffle(x, 4)),
                            self.reduce_channels[1](F.pixel_unshuffle(self.conv_downsample_2(x), 2)),
                            self.reduce_channels[0](self.conv_downsample_4(x))], dim=1)
        context = up(self.vssm(scales))
        projected = self.proj_out(context)
        out = self.cat(torch.cat([self.short_path(x), up(self.image_pool(x)), context,
                                  c2 + projected, c3 + projected, c4 + projected], dim=1))
        return self.conv_seg(self.dropout(out))
