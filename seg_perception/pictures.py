"""The PNGs people look at: overlays with a legend of the classes in view, costmaps on metre axes with the camera,
its field of view and a legend. Each figure carries a title saying what it shows (model, frame stamp).

`draw_overlay` and `draw_costmap` fill one matplotlib axes each, so a caller can put several side by side;
`write_figure` lays panels out in a row and saves them. Off the hot path: matplotlib is imported on first use.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg_perception.labels import IGNORE_ID, palette_lut

# Costmap colours (RGB): free green, lethal red, costs in between blend the two; unknown grey.
FREE_RGB, LETHAL_RGB, UNKNOWN_RGB = (30, 230, 40), (250, 30, 40), (128, 128, 128)


@dataclass(frozen=True)
class GridGeometry:
    """Where an OccupancyGrid lies: cell size and the first cell's corner in the grid's frame (m)."""

    resolution: float
    origin_x: float
    origin_y: float


@dataclass(frozen=True)
class CameraView:
    """The camera as seen from above, in the grid's frame: position (m), yaw (rad, > 0 left) and horizontal
    field of view (rad)."""

    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0
    hfov: float = 0.0

    @classmethod
    def from_intrinsics(cls, fx: float, width: int, x: float = 0.0, y: float = 0.0, yaw: float = 0.0) -> "CameraView":
        return cls(x, y, yaw, 2.0 * math.atan(width / (2.0 * fx)))


def stamp_text(stamp_ns: int) -> str:
    return f"{stamp_ns // 1_000_000_000}.{stamp_ns % 1_000_000_000:09d} s"


def costmap_rgb(cells: np.ndarray) -> np.ndarray:
    """RGB of an occupancy grid's cells (same layout): 0 free green, 100 lethal red, blends between, -1 grey."""
    cost = np.clip(cells.astype(np.float32), 0, 100)[..., None] / 100.0
    rgb = (np.asarray(FREE_RGB, np.float32) * (1 - cost) + np.asarray(LETHAL_RGB, np.float32) * cost).astype(np.uint8)
    rgb[cells < 0] = UNKNOWN_RGB
    return rgb


def _share(count: int, total: int) -> str:
    percent = 100 * count / total
    return "<1 %" if percent < 1 else f"{percent:.0f} %"


def draw_overlay(ax, overlay_rgb: np.ndarray, mask: np.ndarray | None, class_names, palette, title: str = "") -> None:
    """The overlay image, with a legend of the classes present in `mask` (largest share first)."""
    from matplotlib.patches import Patch

    ax.imshow(overlay_rgb)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    if mask is None:
        return
    handles = _class_handles(mask, class_names, palette, with_share=True)
    ignored = int(np.count_nonzero(mask == IGNORE_ID))
    if ignored:
        handles.append(Patch(color="black", label=f"{IGNORE_ID} ignore {_share(ignored, mask.size)}"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
              title="classes in view", title_fontsize=8, borderaxespad=0.0)


def draw_costmap(ax, cells: np.ndarray, grid: GridGeometry, camera: CameraView | None = None,
                 title: str = "") -> None:
    """A [rows = y, cols = x] grid from above: forward (x) up, left (y) to the left, metre axes, the camera and
    its field of view, and a legend of free / cost / lethal / unknown."""
    from matplotlib.patches import Patch

    handles = [Patch(color=np.asarray(FREE_RGB) / 255, label="free (0)"),
               Patch(color=np.asarray(costmap_rgb(np.array([50], np.int8))[0]) / 255, label="cost (1-99)"),
               Patch(color=np.asarray(LETHAL_RGB) / 255, label="lethal (100)"),
               Patch(color=np.asarray(UNKNOWN_RGB) / 255, label="unknown (-1)")]
    _draw_grid(ax, costmap_rgb(cells), grid, camera, title, handles)


def draw_topdown_classes(ax, train_ids: np.ndarray, grid: GridGeometry, class_names, palette,
                         camera: CameraView | None = None, title: str = "") -> None:
    """A [rows = y, cols = x] grid of class ids from above (a true top-down map), as draw_costmap lays grids out,
    with a legend of the classes present; IGNORE_ID (nothing known) grey."""
    from matplotlib.patches import Patch

    lut = palette_lut(palette, ignore_color=UNKNOWN_RGB)
    handles = _class_handles(train_ids, class_names, palette, with_share=False)
    handles.append(Patch(color=np.asarray(UNKNOWN_RGB) / 255, label="nothing known"))
    _draw_grid(ax, lut[train_ids], grid, camera, title, handles)


def _class_handles(ids: np.ndarray, class_names, palette, with_share: bool) -> list:
    """Legend entries for the classes present in `ids`, largest share first."""
    from matplotlib.patches import Patch

    counts = np.bincount(ids.ravel(), minlength=256)[: len(class_names)]
    return [Patch(color=np.asarray(palette[k]) / 255.0,
                  label=f"{k} {class_names[k]}" + (f" {_share(counts[k], ids.size)}" if with_share else ""))
            for k in np.argsort(-counts) if counts[k] > 0]


def _draw_grid(ax, rgb: np.ndarray, grid: GridGeometry, camera: CameraView | None, title: str, handles: list) -> None:
    from matplotlib.lines import Line2D

    rows, cols = rgb.shape[:2]
    x0, x1 = grid.origin_x, grid.origin_x + cols * grid.resolution
    y0, y1 = grid.origin_y, grid.origin_y + rows * grid.resolution
    # imshow rows = x from the bottom, cols = y; +y is drawn to the left by inverting the horizontal axis
    ax.imshow(rgb.transpose(1, 0, 2), origin="lower", extent=(y0, y1, x0, x1), interpolation="nearest")
    ax.set_xlim(y1, y0)
    ax.set_ylim(x0, x1)
    ax.set_xlabel("y, left (m)")
    ax.set_ylabel("x, forward (m)")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=9)
    if camera is not None:
        reach = 2.0 * max(x1 - x0, y1 - y0)  # clipped by the axes limits
        if camera.hfov > 0:
            for side in (-0.5, 0.5):
                angle = camera.yaw + side * camera.hfov
                ax.plot([camera.y, camera.y + reach * math.sin(angle)],
                        [camera.x, camera.x + reach * math.cos(angle)], color="black", lw=1.0, ls="--")
            handles.append(Line2D([], [], color="black", ls="--", label=f"field of view "
                                  f"{math.degrees(camera.hfov):.0f}°"))
        ax.plot([camera.y], [camera.x], marker=(3, 0, math.degrees(camera.yaw)), markersize=11, color="black",
                markeredgecolor="white", clip_on=False)
        handles.append(Line2D([], [], marker=(3, 0, 0), ls="", color="black", markeredgecolor="white",
                              label="camera"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
              borderaxespad=0.0, facecolor="white")


def new_figure(panels: int, title: str, panel_size: tuple[float, float] = (6.0, 4.2)):
    """A figure with `panels` axes in a row under a title; returns (figure, axes list)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on robots and in CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(panel_size[0] * panels, panel_size[1]), layout="constrained",
                             squeeze=False)
    fig.suptitle(title, fontsize=10)
    return fig, list(axes[0])


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def write_overlay_png(path: str | os.PathLike, overlay_rgb: np.ndarray, mask: np.ndarray | None, class_names,
                      palette, title: str) -> Path:
    h, w = overlay_rgb.shape[:2]
    fig, (ax,) = new_figure(1, title, (min(12.0, 3.0 + 8.0 * w / max(h, w)), 0.6 + 8.0 * h / max(h, w)))
    draw_overlay(ax, overlay_rgb, mask, class_names, palette)
    return save_figure(fig, path)


def write_costmap_png(path: str | os.PathLike, cells: np.ndarray, grid: GridGeometry, camera: CameraView | None,
                      title: str) -> Path:
    fig, (ax,) = new_figure(1, title, (7.0, 5.6))
    draw_costmap(ax, cells, grid, camera)
    return save_figure(fig, path)
