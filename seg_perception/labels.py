"""Cityscapes train-id classes: names, palette, category of each class, ignore value."""

from __future__ import annotations

import numpy as np

IGNORE_ID = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

# ImageNet statistics on 0-255 RGB, as every mmseg / detectron2 config here uses.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def palette_lut(palette: tuple[tuple[int, int, int], ...] | list, ignore_color=(0, 0, 0)) -> np.ndarray:
    """A 256x3 uint8 table: colour of every label value, `ignore_color` for values without a class."""
    lut = np.empty((256, 3), np.uint8)
    lut[:] = ignore_color
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut
