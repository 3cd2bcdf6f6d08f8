"""The pictures the package writes: costmaps on metre axes the right way round, overlays with a legend of exactly
the classes in view."""

from __future__ import annotations

import cv2
import numpy as np

from seg_perception.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from seg_perception.pictures import (FREE_RGB, LETHAL_RGB, UNKNOWN_RGB, CameraView, GridGeometry, costmap_rgb,
                                     draw_costmap, draw_overlay, new_figure, save_figure, write_costmap_png)


def _rendered(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3]


def test_costmap_colours_free_cost_lethal_unknown():
    rgb = costmap_rgb(np.array([[0, 50, 100, -1]], np.int8))
    assert tuple(rgb[0, 0]) == FREE_RGB and tuple(rgb[0, 2]) == LETHAL_RGB and tuple(rgb[0, 3]) == UNKNOWN_RGB
    assert rgb[0, 0, 1] > rgb[0, 1, 1] > rgb[0, 2, 1]  # cost fades green to red


def test_costmap_draws_forward_up_left_left_on_metre_axes():
    grid = GridGeometry(resolution=0.5, origin_x=0.0, origin_y=-5.0)  # 10 m ahead, 5 m either side
    cells = np.zeros((20, 20), np.int8)  # rows y, cols x
    cells[15:, 15:] = 100  # ahead (x 7.5..10 m) and left (y 2.5..5 m): lethal
    fig, (ax,) = new_figure(1, "test")
    draw_costmap(ax, cells, grid, CameraView.from_intrinsics(fx=100.0, width=200), title="costmap")
    assert ax.get_xlim() == (5.0, -5.0) and ax.get_ylim() == (0.0, 10.0)  # +y drawn to the left
    assert "(m)" in ax.get_xlabel() and "(m)" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:4] == ["free (0)", "cost (1-99)", "lethal (100)", "unknown (-1)"]
    assert labels[4:] == ["field of view 90°", "camera"]
    pixels = _rendered(fig)
    height = pixels.shape[0]

    def colour_at(y_m, x_m):
        col, row = ax.transData.transform((y_m, x_m))
        return tuple(int(v) for v in pixels[height - int(row), int(col)])

    assert colour_at(4.0, 9.0) == LETHAL_RGB  # top left of the map
    assert colour_at(-4.0, 9.0) == FREE_RGB  # top right: right of the robot
    assert colour_at(4.0, 1.0) == FREE_RGB  # bottom left: near
    save_figure(fig, "/dev/null")


def test_overlay_legend_lists_exactly_the_classes_in_view_largest_first():
    mask = np.zeros((40, 60), np.uint8)  # road
    mask[:10] = 13  # car: a quarter
    mask[:, :3] = 255  # ignore
    fig, (ax,) = new_figure(1, "test")
    draw_overlay(ax, np.zeros((40, 60, 3), np.uint8), mask, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["0 road 71 %", "13 car 24 %", "255 ignore 5 %"]
    save_figure(fig, "/dev/null")


def test_costmap_png_is_written(tmp_path):
    path = write_costmap_png(tmp_path / "costmap.png", np.full((40, 40), -1, np.int8), GridGeometry(0.1, 0, -2),
                             None, "title")
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 200
