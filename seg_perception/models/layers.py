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


def init_weights(m: nn.Module) -> None:
    """The official mmseg-era init (use with `module.apply`): trunc-normal Linear, He-normal by fan-out for convs.
    Matters only for training from scratch; checkpoints overwrite it."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
