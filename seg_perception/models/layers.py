"""Small building blocks shared by the mmseg-style families, named so official checkpoint keys fall out."""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth per sample (timm's rule); identity in eval, so it never reaches an exported graph."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class ConvModule(nn.Sequential):
    """mmcv ConvModule (conv -> BN -> ReLU): keys `conv.weight` and `bn.*`; the conv has no bias under a norm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True) if act else nn.Identity()


def drop_path_rates(rate: float, n: int) -> list[float]:
    """Linearly rising stochastic-depth rates over `n` blocks, 0 -> rate (timm/mmseg rule)."""
    return [rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
