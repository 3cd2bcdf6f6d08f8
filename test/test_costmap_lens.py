"""Costmaps through real lenses: ground points projected by OpenCV (plumb_bob with strong barrel distortion, and an
equidistant fisheye) land in the label pixels the flat-ground table gives their cells, and a flat ground rendered
into a distorted depth image comes back at height 0; K alone misses both."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from seg_perception.core.camera_model import CameraModel, camera_from_info, is_rectified
from seg_perception.core.costmap import FUSED, LETHAL, CameraPose, GridSpec, rotation_grid_from_optical
from seg_perception.core.depth_costmap import DepthProjector, DepthSpec

CLASSES = ("road", "car")
H, W = 240, 320
POSE = CameraPose(x=0.2, y=0.1, height=1.2, pitch=math.radians(25), yaw=math.radians(5))
GRID = GridSpec(resolution=0.1, size_x=8.0, size_y=8.0, origin_x=0.0, origin_y=-4.0)
LENSES = {  # name: (K at 2x the stream's size, distortion model, D, K's image size)
    "plumb_bob": (np.array([[400.0, 0, 319.5], [0, 400.0, 239.5], [0, 0, 1]]), "plumb_bob",
                  [-0.3, 0.1, 0.0, 0.0, 0.0], (2 * H, 2 * W)),
    "equidistant": (np.array([[250.0, 0, 161.0], [0, 250.0, 118.0], [0, 0, 1]]), "equidistant",
                    [0.05, -0.02, 0.004, 0.0], (H, W)),
}


def to_optical(points: np.ndarray, pose: CameraPose = POSE) -> np.ndarray:
    """[n, 3] grid-frame points -> the camera's optical frame."""
    return (points - [pose.x, pose.y, pose.height]) @ rotation_grid_from_optical(pose)


def opencv_pixels(points: np.ndarray, lens: str) -> np.ndarray:
    """Pixels (x, y) of grid-frame points in the H x W stream, straight from OpenCV at K's own size, then taken to
    the stream's size with pixel centres at integer coordinates."""
    k, model, d, k_hw = LENSES[lens]
    optical, zero = to_optical(points).reshape(-1, 1, 3), np.zeros(3)
    project = cv2.fisheye.projectPoints if model == "equidistant" else cv2.projectPoints
    pixels = project(optical, zero, zero, k, np.array(d))[0].reshape(-1, 2)
    return (pixels + 0.5) * [W / k_hw[1], H / k_hw[0]] - 0.5


def projector(lens: str, distorted: bool = True) -> DepthProjector:
    k, model, d, k_hw = LENSES[lens]
    proj = DepthProjector(GRID, POSE, CLASSES, {"road": 0, "car": 100}, 0,
                          depth=DepthSpec(ground_classes=("road",)))
    if distorted:
        proj.set_intrinsics(k, k_hw, model, d)
    else:
        proj.set_intrinsics(k, k_hw)
    return proj


@pytest.mark.parametrize("lens", LENSES)
def test_ground_points_mark_exactly_their_cells_through_the_lens(lens):
    xs, ys = GRID.cell_centres()
    near = np.hypot(xs - POSE.x, ys - POSE.y) < 4.0  # cells span several pixels: one cell per marked pixel
    cells = np.flatnonzero(near.ravel())
    centres = np.stack([xs.ravel()[cells], ys.ravel()[cells], np.zeros(cells.size)], 1)
    pixels = np.floor(opencv_pixels(centres, lens) + 0.5).astype(int)
    inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < W) & (pixels[:, 1] >= 0) & (pixels[:, 1] < H)
    radius = np.hypot(pixels[:, 0] - W / 2, pixels[:, 1] - H / 2)
    # the test points: cells seen towards the image's edges, where the lens moves them most, every 7th
    picked = np.flatnonzero(inside & (radius > 0.6 * H))[::7]
    assert picked.size >= 10
    labels = np.zeros((H, W), np.uint8)
    labels[pixels[picked, 1], pixels[picked, 0]] = CLASSES.index("car")
    want = np.zeros(GRID.height * GRID.width, bool)
    want[cells[picked]] = True

    marked = projector(lens).project(labels, (H, W))[FUSED].ravel() == LETHAL
    assert np.array_equal(marked, want), f"{np.count_nonzero(marked & want)}/{picked.size} cells right, " \
                                         f"{np.count_nonzero(marked & ~want)} wrong"
    k_only = projector(lens, distorted=False).project(labels, (H, W))[FUSED].ravel() == LETHAL
    assert np.count_nonzero(k_only & want) < picked.size // 2, "K alone should miss most of them"


def ground_depth(lens: str, max_depth: float = 30.0) -> np.ndarray:
    """float32 [H, W]: the depth (optical z) of the flat ground z = 0 at each pixel of the distorted stream, from
    each pixel's undistorted ray; 0 (no return) above the horizon and beyond max_depth."""
    k, model, d, k_hw = LENSES[lens]
    cols, rows = np.meshgrid(np.arange(W), np.arange(H))
    at_k = (np.stack([cols, rows], -1).reshape(-1, 1, 2) + 0.5) * [k_hw[1] / W, k_hw[0] / H] - 0.5
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-14)
    undistort = cv2.fisheye.undistortPoints if model == "equidistant" else cv2.undistortPoints
    rays = undistort(at_k, k, np.array(d), criteria=criteria).reshape(-1, 2)
    direction = np.column_stack([rays, np.ones(len(rays))]) @ rotation_grid_from_optical(POSE).T  # grid frame
    with np.errstate(divide="ignore"):
        depth = np.where(direction[:, 2] < 0, -POSE.height / direction[:, 2], 0.0)
    depth[depth > max_depth] = 0.0
    return depth.reshape(H, W).astype(np.float32)


@pytest.mark.parametrize("lens", LENSES)
def test_a_flat_ground_in_a_distorted_depth_image_comes_back_at_height_zero(lens):
    depth = ground_depth(lens)
    labels = np.zeros((H, W), np.uint8)  # all road
    rotation, origin = rotation_grid_from_optical(POSE), np.array([POSE.x, POSE.y, POSE.height])
    heights = {}
    for distorted in (True, False):
        proj = projector(lens, distorted)
        pts, _ = proj.points(labels, None, (H, W), depth)
        xyz = np.stack([pts["x"], pts["y"], pts["z"]], 1).astype(np.float64)
        xyz = xyz[np.isfinite(xyz).all(1)]
        assert len(xyz) > 0.3 * H * W
        heights[distorted] = np.abs(xyz @ rotation.T + origin)[:, 2]
        proj.project_depth(labels, (H, W), depth)  # the costmap keeps the same ground points
        heights[distorted, "used"] = proj.points_used
    assert heights[True].max() < 0.03, f"ground points up to {heights[True].max():.3f} m off the ground"
    assert heights[False].max() > 0.3, "K alone should put edge points well off the ground"
    assert heights[True, "used"] > heights[False, "used"]


def test_a_rescaled_model_projects_as_opencv_does_at_its_own_size():
    k, model, d, k_hw = LENSES["plumb_bob"]
    camera = CameraModel(k, k_hw, model, d)
    points = to_optical(np.array([[2.0, 1.0, 0.0], [3.0, -1.5, 0.0], [1.5, 0.0, 0.0]]))
    pixels = camera.project(points, (H, W))
    want = (cv2.projectPoints(points, np.zeros(3), np.zeros(3), k, np.array(d))[0].reshape(-1, 2) + 0.5) / 2 - 0.5
    assert np.allclose(pixels, want, atol=1e-9)
    rays = camera.rays(pixels, (H, W))
    assert np.allclose(rays, points[:, :2] / points[:, 2:], atol=1e-9)  # rays undo project


class _Info:  # the CameraInfo fields camera_from_info reads (it takes rclpy's and a bag reader's alike)
    def __init__(self, **fields) -> None:
        self.height, self.width, self.distortion_model, self.d = H, W, "plumb_bob", [-0.3, 0.1, 0.0, 0.0, 0.0]
        self.k = [200.0, 0, 159.5, 0, 200.0, 119.5, 0, 0, 1]
        self.p = [150.0, 0, 160.0, 0, 0, 150.0, 120.0, 0, 0, 0, 1, 0]
        self.__dict__.update(fields)


def test_rectified_images_use_p_and_raw_ones_k_and_d():
    assert [is_rectified("auto", t) for t in ("/cam/image_rect", "/cam/image_rect_color", "/cam/image_raw")] == \
        [True, True, False]
    assert is_rectified("true", "/cam/image_raw") and not is_rectified("false", "/cam/image_rect")
    rect = camera_from_info(_Info(distortion_model="whatever"), rectified=True)
    assert np.array_equal(rect.k, [[150, 0, 160], [0, 150, 120], [0, 0, 1]]) and not rect.distorted
    raw = camera_from_info(_Info(), rectified=False)
    assert raw.k[0, 0] == 200 and raw.distorted and raw.distortion_model == "plumb_bob"
    assert not camera_from_info(_Info(distortion_model="", d=[]), rectified=False).distorted
    for fields, problem in (({"distortion_model": "kannala"}, "distortion model 'kannala' is not one of"),
                            ({"d": [-0.3, 0.1]}, "plumb_bob needs 5 coefficients in D, got 2")):
        with pytest.raises(ValueError, match=problem):
            camera_from_info(_Info(**fields), rectified=False)
    with pytest.raises(ValueError, match="a rectified image needs P"):
        camera_from_info(_Info(p=[0.0] * 12), rectified=True)
