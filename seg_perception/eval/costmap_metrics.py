"""Costmap accuracy: per-class IoU of costmap layers against the true top-down class map, over the cells the camera
can see (the ground its image shows: from the near edge of the view out to the grid's edge or max range, the hood
rows left out), accumulated over frames like a dataset IoU.

A class layer scores its LETHAL cells against the cells of that class; the fused layer scores as `lethal`: its
LETHAL cells against the cells whose class costs LETHAL in the cost table. Cells whose truth is unknown (nothing
there, or an ignored class) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from seg_perception.core.camera_model import CameraModel
from seg_perception.core.costmap import FUSED, LETHAL, CameraPose, GridSpec, ground_remap_table
from seg_perception.labels import IGNORE_ID

LETHAL_KEY = "lethal"  # the fused layer's name in the scores


def resample_truth(cells: np.ndarray, resolution: float, origin_x: float, origin_y: float,
                   grid: GridSpec) -> np.ndarray:
    """A true map (int8 train ids, -1 unknown, on its own geometry) -> uint8 train ids on `grid` by nearest cell
    (IGNORE_ID where unknown or outside)."""
    xs, ys = grid.cell_centres()
    col = np.floor((xs - origin_x) / resolution).astype(np.intp)
    row = np.floor((ys - origin_y) / resolution).astype(np.intp)
    inside = (col >= 0) & (col < cells.shape[1]) & (row >= 0) & (row < cells.shape[0])
    out = np.full(xs.shape, IGNORE_ID, np.uint8)
    picked = cells[row[inside], col[inside]]
    out[inside] = np.where(picked < 0, IGNORE_ID, picked).astype(np.uint8)
    return out


def visible_cells(grid: GridSpec, pose: CameraPose, camera: CameraModel, camera_hw: tuple[int, int]) -> np.ndarray:
    """bool [height, width]: the ground cells the camera image shows (the flat-ground projection's view)."""
    cells, _ = ground_remap_table(grid, pose, camera, camera_hw, camera_hw)
    seen = np.zeros(grid.height * grid.width, bool)
    seen[cells] = True
    return seen.reshape(grid.height, grid.width)


@dataclass
class CostmapIoU:
    """Intersection and union counts per mode ('flat_ground', 'depth') and layer, over frames."""

    class_names: tuple[str, ...]
    fused_lut: np.ndarray  # costmap.cost_lut of the fused layer: the cost of every train id
    intersection: dict[str, dict[str, int]] = field(default_factory=dict)
    union: dict[str, dict[str, int]] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)

    def add(self, mode: str, layers: dict[str, np.ndarray], truth: np.ndarray, visible: np.ndarray) -> None:
        """layers: the projector's grids ('' = fused); truth: uint8 train ids on the same grid."""
        scored = visible & (truth != IGNORE_ID)
        inter, union = self.intersection.setdefault(mode, {}), self.union.setdefault(mode, {})
        self.frames[mode] = self.frames.get(mode, 0) + 1
        for name, cells in layers.items():
            if name == FUSED:
                key, true = LETHAL_KEY, self.fused_lut[truth] == LETHAL
            else:
                key, true = name, truth == self.class_names.index(name)
            pred = cells == LETHAL
            inter[key] = inter.get(key, 0) + int(np.count_nonzero(pred & true & scored))
            union[key] = union.get(key, 0) + int(np.count_nonzero((pred | true) & scored))

    def merge(self, other: "CostmapIoU") -> "CostmapIoU":
        """Add another's counts (the same classes and cost table): frames scored apart add up exactly."""
        for mine, theirs in ((self.intersection, other.intersection), (self.union, other.union)):
            for mode, layers in theirs.items():
                counts = mine.setdefault(mode, {})
                for key, n in layers.items():
                    counts[key] = counts.get(key, 0) + n
        for mode, n in other.frames.items():
            self.frames[mode] = self.frames.get(mode, 0) + n
        return self

    def report(self) -> dict:
        """{'frames': {mode: n}, mode: {layer: IoU 0..1 or None where neither side had a cell}}"""
        out: dict = {"frames": dict(self.frames)}
        for mode, union in self.union.items():
            inter = self.intersection[mode]
            out[mode] = {key: (inter[key] / u if u else None) for key, u in union.items()}
        return out


def markdown_rows(costmap_iou: dict) -> list[str]:
    """The report's costmap table: one row per layer, one column per mode."""
    modes = [m for m in costmap_iou if m != "frames"]
    keys = list(dict.fromkeys(k for m in modes for k in costmap_iou[m]))
    lines = ["| costmap layer | " + " | ".join(f"{m} IoU (%)" for m in modes) + " |",
             "|---|" + "---:|" * len(modes)]
    for key in keys:
        values = [costmap_iou[m].get(key) for m in modes]
        lines.append(f"| {key} | " + " | ".join("—" if v is None else f"{100 * v:.2f}" for v in values) + " |")
    frames = ", ".join(f"{m} {n}" for m, n in costmap_iou["frames"].items())
    return lines + ["", f"Costmap frames scored: {frames}."]
