"""A camera's lens, ROS-free: intrinsics, distortion model and coefficients, and the image size they refer to.

`project` (distort) and `rays` (undistort) go through OpenCV and serve only when remap tables and sample rays are
built, never per frame. Without distortion both reduce to the pinhole arithmetic the tables used before, so those
callers keep their own exact code path (`distorted` says which to take).
"""

from __future__ import annotations

import cv2
import numpy as np

# sensor_msgs/CameraInfo distortion_model names (sensor_msgs/distortion_models.hpp) -> coefficients they carry
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}
# undistortion is an iteration: enough of it for strong lenses, to well under a thousandth of a pixel
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)


def distortion_problem(distortion_model: str, d) -> str:
    """Why (distortion_model, d) is not a lens this package can model ('' when it is)."""
    if not any(d):
        return ""  # no coefficients (or all zero): no distortion, whatever the name
    if distortion_model not in DISTORTION_MODELS:
        return (f"distortion model '{distortion_model}' is not one of {', '.join(DISTORTION_MODELS)} "
                f"(a rectified image needs rectified: true)")
    if len(d) != DISTORTION_MODELS[distortion_model]:
        return f"{distortion_model} needs {DISTORTION_MODELS[distortion_model]} coefficients in D, got {len(d)}"
    return ""


def scaled_intrinsics(k: np.ndarray, k_hw: tuple[int, int], hw: tuple[int, int]) -> tuple[float, ...]:
    """(fx, fy, cx, cy) of K, given for an image of size k_hw, for the same view at size hw (pixel centres at
    integer coordinates)."""
    sx, sy = hw[1] / k_hw[1], hw[0] / k_hw[0]
    return k[0, 0] * sx, k[1, 1] * sy, (k[0, 2] + 0.5) * sx - 0.5, (k[1, 2] + 0.5) * sy - 0.5


class CameraModel:
    """K (3x3) of an image of size hw, plus its lens distortion (sensor_msgs/CameraInfo's names and D; '' or all
    zero = none). Distortion coefficients act on normalised coordinates, so they hold at every image size."""

    def __init__(self, k: np.ndarray, hw: tuple[int, int], distortion_model: str = "", d=()) -> None:
        self.k = np.asarray(k, np.float64).reshape(3, 3)
        if self.k[0, 0] <= 0 or self.k[1, 1] <= 0:
            raise ValueError(f"intrinsics need fx > 0 and fy > 0, got fx={self.k[0, 0]}, fy={self.k[1, 1]}")
        self.hw = (int(hw[0]), int(hw[1]))
        problem = distortion_problem(distortion_model, d)
        if problem:
            raise ValueError(problem)
        self.distorted = any(d)
        self.distortion_model = distortion_model if self.distorted else ""
        self.d = np.asarray(d, np.float64) if self.distorted else np.zeros(0)
        self.fisheye = self.distortion_model == "equidistant"
        # what tables are keyed by: equal keys, equal geometry
        self.key = (self.k.tobytes(), self.hw, self.distortion_model, self.d.tobytes())
        self._max_radius: float | None = None

    def k_at(self, hw: tuple[int, int]) -> np.ndarray:
        """K for the same view at image size hw."""
        fx, fy, cx, cy = scaled_intrinsics(self.k, self.hw, hw)
        return np.array([[fx, self.k[0, 1] * hw[1] / self.hw[1], cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    def project(self, points: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        """[n, 2] float64 pixels (x, y; centres at integer coordinates) at image size hw of [n, 3] points in the
        optical frame (z > 0)."""
        points = np.asarray(points, np.float64).reshape(-1, 3)
        if self.fisheye:  # distortPoints skips the Jacobian projectPoints computes: 5x faster
            normalised = np.ascontiguousarray(points[:, :2] / points[:, 2:]).reshape(-1, 1, 2)
            return cv2.fisheye.distortPoints(normalised, self.k_at(hw), self.d).reshape(-1, 2)
        zero = np.zeros(3)
        pixels, _ = cv2.projectPoints(points.reshape(-1, 1, 3), zero, zero, self.k_at(hw), self.d)
        return pixels.reshape(-1, 2)

    def rays(self, pixels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        """[n, 2] float64 (x, y) of the rays (x, y, 1), optical frame, through [n, 2] pixels of an hw image."""
        pixels = np.ascontiguousarray(pixels, np.float64).reshape(-1, 1, 2)
        if self.fisheye:
            rays = cv2.fisheye.undistortPoints(pixels, self.k_at(hw), self.d, criteria=_UNDISTORT_CRITERIA)
        else:
            rays = cv2.undistortPoints(pixels, self.k_at(hw), self.d, criteria=_UNDISTORT_CRITERIA)
        return rays.reshape(-1, 2)

    @property
    def max_radius(self) -> float:
        """The largest |(x, y)| of a ray through the image's border: a point farther off the axis is outside the
        view, though a radial polynomial may fold it back into the image (so projection must not be trusted)."""
        if self._max_radius is None and self.fisheye:
            self._max_radius = np.inf  # theta_d is monotonic over the half-space in front (z > 0)
        if self._max_radius is None:
            h, w = self.hw
            border = np.concatenate([np.stack([np.arange(w), np.full(w, y)], 1) for y in (-0.5, h - 0.5)]
                                    + [np.stack([np.full(h, x), np.arange(h)], 1) for x in (-0.5, w - 0.5)])
            self._max_radius = float(np.hypot(*self.rays(border, self.hw).T).max())
        return self._max_radius


def is_rectified(setting: str, image_topic: str) -> bool:
    """seg_node's `rectified` parameter for an image topic: 'true', 'false', or 'auto' = image_pipeline's naming
    (image_proc publishes image_rect and image_rect_color; a camera driver image_raw)."""
    return "rect" in image_topic if setting == "auto" else setting == "true"


def camera_from_info(info, rectified: bool) -> CameraModel:
    """The lens a sensor_msgs/CameraInfo (rclpy's or a bag reader's) gives an image: a rectified one uses P's 3x3
    and no distortion, a raw one K and D (REP 104). Raises ValueError, in one line, for what cannot be modelled."""
    hw = (int(info.height), int(info.width))
    if rectified:
        p = np.asarray(info.p, np.float64).reshape(3, 4)
        if p[0, 0] <= 0 or p[1, 1] <= 0:
            raise ValueError(f"a rectified image needs P with fx > 0 and fy > 0, got fx={p[0, 0]:g}, "
                             f"fy={p[1, 1]:g} (a raw image: rectified false)")
        return CameraModel(p[:, :3], hw)
    return CameraModel(np.asarray(info.k, np.float64).reshape(3, 3), hw, info.distortion_model, tuple(info.d))
