"""detectron2's ResNet (the Mask2Former backbone) with detectron2's state-dict layout.

Keys: `stem.conv1.{weight, norm.*}`, `res{2..5}.{i}.conv{1,2,3}.{weight, norm.*}`, `res{2..5}.0.shortcut.*`.
Norm is BatchNorm2d: the same keys as SyncBN (Cityscapes configs) and a superset of FrozenBN's (ADE20K
configs; BatchNorm fills the missing `num_batches_tracked` on load). Stride sits in the 3x3 conv
(STRIDE_IN_1X1 False, torchvision style), as in every Mask2Former config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEPTH_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class ConvNorm(nn.Conv2d):
    """detectron2's `layers.Conv2d`: a conv that owns its norm (keys `<name>.weight`, `<name>.norm.*`)."""

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return x if self.norm is None else self.norm(x)


class BottleneckBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, bottleneck: int, stride: int) -> None:
        super().__init__()
        self.shortcut = None
        if in_ch != out_ch:
            self.shortcut = ConvNorm(in_ch, out_ch, 1, stride=stride, bias=False, norm=nn.BatchNorm2d(out_ch))
        self.conv1 = ConvNorm(in_ch, bottleneck, 1, bias=False, norm=nn.BatchNorm2d(bottleneck))
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, stride=stride, padding=1, bias=False,
                              norm=nn.BatchNorm2d(bottleneck))
        self.conv3 = ConvNorm(bottleneck, out_ch, 1, bias=False, norm=nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        y = self.conv3(y)
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class BasicStem(nn.Module):
    def __init__(self, in_ch: int = 3, out_ch: int = 64) -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_ch, out_ch, 7, stride=2, padding=3, bias=False, norm=nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """Returns [res2, res3, res4, res5] (strides 4, 8, 16, 32; channels 256, 512, 1024, 2048 for R50)."""

    def __init__(self, depth: int = 50, stem_channels: int = 64, base_channels: int = 256) -> None:
        super().__init__()
        self.stem = BasicStem(3, stem_channels)
        in_ch, self.out_channels = stem_channels, []
        for i, blocks in enumerate(DEPTH_BLOCKS[depth]):
            out_ch = base_channels * 2 ** i
            stage = nn.Sequential(*(
                BottleneckBlock(in_ch if b == 0 else out_ch, out_ch, out_ch // 4, 2 if (b == 0 and i > 0) else 1)
                for b in range(blocks)))
            self.add_module(f"res{i + 2}", stage)
            self.out_channels.append(out_ch)
            in_ch = out_ch
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # detectron2's c2_msra_fill

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for name in ("res2", "res3", "res4", "res5"):
            x = getattr(self, name)(x)
            feats.append(x)
        return feats
