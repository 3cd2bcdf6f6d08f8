"""Procedural street scenes with exact Cityscapes ground truth, and `seg-perception synth`.

A street is laid out in metres (road, sidewalks, facades, poles, people, vehicles, ...) and seen by a
forward pinhole camera 1.5 m above the road. Every shape is drawn once, into a map of segment ids;
each segment carries (Cityscapes label id, material, instance id), so the picture and the three label
images come from the same pixels and the ground truth is exact. A material is a colour plus a texture,
different for every class, so that a small model can learn them.

Every shape is a plane (the ground, a facade, an upright billboard), drawn into a map of plane ids as well,
so each pixel's depth is exact: the distance along the optical axis at which its ray meets its plane. The true
top-down map rasterises the same layout onto a costmap grid around the camera: the ground's classes, and the
footprint of whatever stands on them below TOPDOWN_MAX_HEIGHT_M.
"""

from __future__ import annotations

import argparse
import collections
import functools
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from seg_perception.core.costmap import GridSpec
from seg_perception.errors import UsageError
from seg_perception.eval.metrics import LABEL_TO_TRAIN
from seg_perception.labels import IGNORE_ID
from seg_perception.progress import progress_bar

# Cityscapes label ids (cityscapesscripts.helpers.labels)
UNLABELED, EGO_VEHICLE, OUT_OF_ROI, DYNAMIC = 0, 1, 3, 5
ROAD, SIDEWALK, RAIL_TRACK, BUILDING, WALL, FENCE, POLE = 7, 8, 10, 11, 12, 13, 17
TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 31, 32, 33
INSTANCE_LABELS = frozenset({PERSON, RIDER, CAR, TRUCK, BUS, 29, 30, TRAIN, MOTORCYCLE, BICYCLE})

CAMERA_HEIGHT_M = 1.5
TOPDOWN_MAX_HEIGHT_M = 2.0  # parts reaching below this height stand in the top-down map (seg_node's default band)
HOOD_FRACTION = (0.05, 0.1)  # of the image height, drawn per scene or drive
NEAR_M, FAR_M = 2.0, 160.0


@dataclass
class SyntheticFrame:
    rgb: np.ndarray           # uint8 HxWx3
    label_ids: np.ndarray     # uint8 HxW, Cityscapes label ids (ignored ids included)
    train_ids: np.ndarray     # uint8 HxW, 0..18 or 255
    instance_ids: np.ndarray  # int32 HxW, label_id*1000+k for instance classes, label_id otherwise
    depth: np.ndarray         # float32 HxW, metres along the optical axis; 0 = no return (sky, ego hood)
    topdown: np.ndarray | None = None  # uint8 train ids on the GridSpec asked for (x forward, y left), 255 unknown


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at CAMERA_HEIGHT_M, looking down the street (+z), image rows grow downwards."""
    height: int
    width: int
    focal: float
    cx: float
    cy: float

    @classmethod
    def for_image(cls, height: int, width: int) -> "Camera":
        # focal ~ image width (a ~53 degree field of view); horizon a little above the middle, as in Cityscapes
        return cls(height, width, float(width), width / 2.0, 0.42 * height)

    def pinhole(self):
        """These intrinsics as the bag writer's CameraInfo description."""
        from seg_perception.bags import PinholeCamera
        return PinholeCamera(self.focal, self.focal, self.cx, self.cy)

    def project(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """World (lateral x, height y, depth z) relative to the camera -> pixel (u, v), last axis."""
        return np.stack([self.cx + self.focal * x / z, self.cy + self.focal * (CAMERA_HEIGHT_M - y) / z], -1)


# ---- materials: colour + texture; several may share a label -------------------------------------------

@dataclass(frozen=True)
class Material:
    colour: tuple[int, int, int]
    pattern: str      # noise | blotch | hstripes | vstripes | tiles | lattice | leaves | sky | flat
    amplitude: float  # relative texture strength


MATERIALS: dict[str, Material] = {
    "sky": Material((140, 190, 235), "sky", 0.10),
    "road": Material((82, 80, 88), "noise", 0.12),
    "marking": Material((235, 235, 225), "noise", 0.05),
    "sidewalk": Material((195, 175, 150), "tiles", 0.18),
    "rail": Material((110, 95, 80), "hstripes", 0.35),
    "brick": Material((150, 85, 60), "hstripes", 0.22),
    "plaster": Material((200, 170, 120), "blotch", 0.15),
    "concrete": Material((135, 130, 125), "blotch", 0.12),
    "window": Material((45, 60, 85), "noise", 0.15),
    "poster": Material((230, 90, 200), "blotch", 0.4),
    "wall": Material((115, 115, 165), "vstripes", 0.15),
    "fence": Material((125, 95, 45), "lattice", 0.45),
    "pole": Material((215, 215, 215), "hstripes", 0.12),
    "light_box": Material((20, 20, 20), "flat", 0.05),
    "lamp_red": Material((255, 30, 20), "flat", 0.05),
    "lamp_amber": Material((255, 190, 0), "flat", 0.05),
    "lamp_green": Material((30, 255, 90), "flat", 0.05),
    "sign": Material((20, 70, 210), "flat", 0.05),
    "sign_face": Material((250, 250, 250), "flat", 0.05),
    "leaves": Material((55, 125, 35), "leaves", 0.45),
    "trunk": Material((90, 60, 35), "vstripes", 0.2),
    "terrain": Material((165, 210, 95), "blotch", 0.2),
    "shirt": Material((140, 40, 190), "noise", 0.15),
    "trousers": Material((70, 25, 90), "noise", 0.15),
    "skin": Material((225, 170, 140), "flat", 0.05),
    "jacket": Material((250, 130, 10), "noise", 0.12),
    "helmet": Material((250, 240, 40), "flat", 0.05),
    "car_blue": Material((25, 55, 190), "noise", 0.08),
    "car_navy": Material((20, 25, 110), "noise", 0.08),
    "glass": Material((30, 40, 55), "blotch", 0.2),
    "tyre": Material((20, 20, 20), "noise", 0.1),
    "tail_light": Material((200, 0, 0), "flat", 0.05),
    "truck": Material((0, 150, 140), "hstripes", 0.25),
    "bus": Material((235, 195, 20), "noise", 0.08),
    "train": Material((130, 15, 45), "noise", 0.08),
    "train_stripe": Material((245, 245, 245), "flat", 0.03),
    "motorcycle": Material((60, 10, 10), "noise", 0.1),
    "chrome": Material((200, 200, 205), "flat", 0.05),
    "bicycle": Material((255, 110, 190), "flat", 0.05),
    "bin": Material((40, 90, 40), "noise", 0.1),
    "hood": Material((15, 15, 20), "blotch", 0.3),
    "border": Material((0, 0, 0), "flat", 0.0),
}
MATERIAL_INDEX = {name: i for i, name in enumerate(MATERIALS)}


def _pattern(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean-ish float32 HxW modulation for one material."""
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    noise = rng.standard_normal((h, w), dtype=np.float32)
    if kind == "noise":
        return noise
    if kind == "blotch":
        small = rng.standard_normal((max(2, h // 12), max(2, w // 12))).astype(np.float32)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) + 0.3 * noise
    if kind == "hstripes":
        return np.broadcast_to(np.sign(np.sin(yy * 2 * np.pi / 4.0)), (h, w)) + 0.3 * noise
    if kind == "vstripes":
        return np.broadcast_to(np.sign(np.sin(xx * 2 * np.pi / 4.0)), (h, w)) + 0.3 * noise
    if kind == "tiles":
        return -2.0 * (((yy % 8) < 1) | ((xx % 12) < 1)).astype(np.float32) + 0.3 * noise
    if kind == "lattice":
        return np.sign(np.sin((xx + yy) * 2 * np.pi / 6.0)) * np.sign(np.sin((xx - yy) * 2 * np.pi / 6.0)) + 0.2 * noise
    if kind == "leaves":
        small = rng.standard_normal((max(2, h // 3), max(2, w // 3))).astype(np.float32)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST) + 0.5 * noise
    if kind == "sky":
        return (yy / h - 0.5) * 3.0 + 0.5 * cv2.resize(rng.standard_normal((4, 8)).astype(np.float32), (w, h))
    return 0.5 * noise  # flat


@functools.lru_cache(maxsize=4)
def material_textures(height: int, width: int) -> np.ndarray:
    """(n_materials*H*W, 3) uint8: every material rendered over the whole image, row-major, cached."""
    rng = np.random.default_rng(1234)
    out = np.empty((len(MATERIALS), height, width, 3), np.uint8)
    for i, m in enumerate(MATERIALS.values()):
        mod = 1.0 + m.amplitude * _pattern(m.pattern, height, width, rng)
        out[i] = np.clip(np.asarray(m.colour, np.float32) * mod[..., None], 0, 255)
    return out.reshape(-1, 3)


# ---- scene description ---------------------------------------------------------------------------------

@dataclass
class Part:
    """A polygon (or a thick polyline) in an object's own frame: metres (lateral, height above ground)."""
    material: str
    label: int
    points: np.ndarray        # (N, 2)
    thickness_m: float = 0.0  # > 0: drawn as a polyline this thick


@dataclass
class Billboard:
    """An upright object facing the camera: parts anchored at ground point (x, z), moving v metres a frame."""
    x: float
    z: float
    parts: list[Part]
    v: float = 0.0


@dataclass
class Quad:
    """A planar surface given by world corners (N, 3) = (x, y, z), or a batch of small ones (K, N, 3)."""
    material: str
    label: int
    corners: np.ndarray


@dataclass
class Street:
    road_half_m: float
    camera_x: float
    ground: list[Quad] = field(default_factory=list)      # drawn first, in order
    surfaces: list[Quad] = field(default_factory=list)    # facades, walls, fences, hedges: far to near
    objects: list[Billboard] = field(default_factory=list)


def _rect(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False))], -1).astype(np.float32)


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return _CIRCLE * np.float32([rx, ry]) + np.float32([cx, cy])


def _person(rng: np.random.Generator) -> list[Part]:
    h = rng.uniform(1.55, 1.95)
    half = rng.uniform(0.2, 0.27)
    return [Part("trousers", PERSON, _rect(-half * 0.8, half * 0.8, 0.0, 0.47 * h)),
            Part("shirt", PERSON, _rect(-half, half, 0.45 * h, 0.85 * h)),
            Part("skin", PERSON, _ellipse(0.0, 0.92 * h, 0.11, 0.13))]


def _two_wheeler(rng: np.random.Generator, motor: bool, ridden: bool) -> list[Part]:
    """A bicycle or motorcycle seen from the side (wheels, frame), with its rider above when ridden."""
    label, material = (MOTORCYCLE, "motorcycle") if motor else (BICYCLE, "bicycle")
    r = 0.32 if motor else 0.34
    gap = 0.65 if motor else 0.55
    if motor:
        parts = [Part("tyre", label, _ellipse(-gap, r, r, r)), Part("tyre", label, _ellipse(gap, r, r, r)),
                 Part(material, label,
                      np.float32([[-gap, r + 0.1], [gap, r + 0.1], [gap * 0.8, 1.0], [-gap * 0.5, 0.95]])),
                 Part("chrome", label, _ellipse(0.0, r + 0.05, 0.2, 0.12))]
    else:
        wheel = 0.09  # thick tyres and frame: thin lines vanish at model resolution
        parts = [Part(material, label, _ellipse(-gap, r, r, r)[list(range(16)) + [0]], wheel),
                 Part(material, label, _ellipse(gap, r, r, r)[list(range(16)) + [0]], wheel),
                 Part(material, label, np.float32([[-gap, r], [0.0, r], [0.25, 0.95], [-0.2, 0.9], [-gap, r]]), 0.1),
                 Part(material, label, np.float32([[0.0, r], [gap, r], [0.4, 1.05]]), 0.1)]
    if ridden:
        seat = 0.85 if motor else 0.9
        parts += [Part("jacket", RIDER, _rect(-0.24, 0.22, seat, seat + 0.65)),
                  Part("trousers", RIDER, np.float32([[-0.2, seat], [0.15, seat], [0.25, r], [0.05, r]])),
                  Part("helmet" if motor or rng.random() < 0.5 else "skin", RIDER,
                       _ellipse(0.0, seat + 0.78, 0.13, 0.14))]
    return parts


def _mirrored(material: str, label: int, half_w: float, inset: float, width: float, y0: float,
              y1: float) -> list[Part]:
    """A left/right pair of rectangles on a vehicle's back (tyres, tail lights)."""
    return [Part(material, label, _rect(-half_w + inset, -half_w + inset + width, y0, y1)),
            Part(material, label, _rect(half_w - inset - width, half_w - inset, y0, y1))]


def _car(rng: np.random.Generator) -> list[Part]:
    w = rng.uniform(1.7, 1.95) / 2
    h = rng.uniform(1.35, 1.6)
    paint = "car_blue" if rng.random() < 0.6 else "car_navy"
    cabin = np.float32([[-w, 0.55], [w, 0.55], [0.8 * w, 1.0], [-0.8 * w, 1.0]]) * np.float32([1, h])
    window = np.float32([[-0.85 * w, 0.6], [0.85 * w, 0.6], [0.7 * w, 0.93], [-0.7 * w, 0.93]]) * np.float32([1, h])
    return (_mirrored("tyre", CAR, w, 0.05, 0.25, 0.0, 0.35)
            + [Part(paint, CAR, _rect(-w, w, 0.2, 0.55 * h)), Part(paint, CAR, cabin), Part("glass", CAR, window)]
            + _mirrored("tail_light", CAR, w, 0.05, 0.25, 0.4 * h, 0.5 * h))


def _truck(rng: np.random.Generator) -> list[Part]:
    w, h = 1.25, rng.uniform(3.0, 3.8)
    return _mirrored("tyre", TRUCK, w, 0.1, 0.4, 0.0, 0.6) + [Part("truck", TRUCK, _rect(-w, w, 0.45, h)),
                                                              Part("chrome", TRUCK, _rect(-w, w, 0.45, 0.6))]


def _bus(rng: np.random.Generator) -> list[Part]:
    w, h = 1.27, rng.uniform(3.0, 3.3)
    return (_mirrored("tyre", BUS, w, 0.1, 0.4, 0.0, 0.5)
            + [Part("bus", BUS, _rect(-w, w, 0.3, h)),
               Part("glass", BUS, _rect(-w + 0.15, w - 0.15, 0.55 * h, 0.9 * h))]
            + _mirrored("tail_light", BUS, w, 0.1, 0.2, 0.35 * h, 0.45 * h))


def _train() -> list[Part]:
    w, h = 1.33, 3.6
    return [Part("train", TRAIN, _rect(-w, w, 0.3, h)),
            Part("train_stripe", TRAIN, _rect(-w, w, 1.0, 1.25)),
            Part("glass", TRAIN, _rect(-w + 0.25, w - 0.25, 1.8, 3.1)),
            Part("chrome", TRAIN, _rect(-w + 0.2, w - 0.2, 0.1, 0.35))]


def _pole(rng: np.random.Generator, kind: str) -> list[Part]:
    height = rng.uniform(3.5, 7.0)
    parts = [Part("pole", POLE, _rect(-0.11, 0.11, 0.0, height))]
    if kind == "light":  # a black housing with its three lamps, larger than life so that a small model sees it
        top = height
        parts.append(Part("light_box", TRAFFIC_LIGHT, _rect(-0.3, 0.3, top - 1.5, top + 0.1)))
        parts += [Part(lamp, TRAFFIC_LIGHT, _ellipse(0.0, top - 0.2 - 0.5 * k, 0.17, 0.17))
                  for k, lamp in enumerate(("lamp_red", "lamp_amber", "lamp_green"))]
    elif kind == "sign":
        y = min(height, rng.uniform(2.2, 3.0))
        if rng.random() < 0.5:
            parts += [Part("sign", TRAFFIC_SIGN, _ellipse(0.0, y, 0.45, 0.45)),
                      Part("sign_face", TRAFFIC_SIGN, _rect(-0.28, 0.28, y - 0.08, y + 0.08))]
        else:
            parts += [Part("sign", TRAFFIC_SIGN, _rect(-0.45, 0.45, y - 0.45, y + 0.45)),
                      Part("sign_face", TRAFFIC_SIGN, _ellipse(0.0, y, 0.2, 0.26))]
    return parts


def _tree(rng: np.random.Generator) -> list[Part]:
    h = rng.uniform(3.0, 5.0)
    r = rng.uniform(1.2, 2.5)
    return [Part("trunk", VEGETATION, _rect(-0.15, 0.15, 0.0, h)),
            Part("leaves", VEGETATION, _ellipse(0.0, h + r * 0.6, r, r * 1.1))]


def _ground(x0: float, x1: float, z0: float, z1: float, material: str, label: int) -> Quad:
    return Quad(material, label, np.float32([[x0, 0, z0], [x1, 0, z0], [x1, 0, z1], [x0, 0, z1]]))


def _facade(x: float, z0: float, z1: float, y0: float, y1: float, material: str, label: int) -> Quad:
    return Quad(material, label, np.float32([[x, y0, z0], [x, y1, z0], [x, y1, z1], [x, y0, z1]]))


def build_street(rng: np.random.Generator, z_end: float, camera_speed: float = 0.0) -> Street:
    """A random straight street from z=0 to `z_end` (metres). Vehicles in the camera's lane drive with it."""
    rw = rng.uniform(4.0, 6.5)
    rails = rng.random() < 0.45
    street = Street(road_half_m=rw, camera_x=rw / 2 + rng.uniform(-0.4, 0.4))
    lanes = [rw / 2, -rw / 2]  # right-hand traffic: the camera drives in the right lane
    z_lo, z_hi = -20.0, z_end + FAR_M

    def poisson_positions(per_m: float, lo: float = z_lo, hi: float = z_hi) -> np.ndarray:
        return np.sort(rng.uniform(lo, hi, rng.poisson(per_m * (hi - lo))))

    street.ground.append(_ground(-rw, rw, z_lo, z_hi, "road", ROAD))
    for zc in np.arange(z_lo, z_hi, 9.0):  # dashed centre line and solid edge lines
        street.ground.append(_ground(-0.08, 0.08, zc, zc + 4.5, "marking", ROAD))
    for side in (-1, 1):
        street.ground.append(_ground(side * (rw - 0.35), side * (rw - 0.2), z_lo, z_hi, "marking", ROAD))
    if rails:
        for rx in (-0.75, 0.75):
            street.ground.append(_ground(rx - 0.12, rx + 0.12, z_lo, z_hi, "rail", RAIL_TRACK))

    for side in (-1, 1):
        sw = rng.uniform(2.0, 4.5)
        setback = rng.uniform(2.0, 8.0) if rng.random() < 0.7 else 0.0
        x_curb, x_face = side * rw, side * (rw + sw + setback)
        street.ground.append(_ground(x_curb, side * (rw + sw), z_lo, z_hi, "sidewalk", SIDEWALK))
        if rng.random() < 0.4:  # a grass verge between kerb and footpath
            street.ground.append(_ground(x_curb, side * (rw + rng.uniform(0.8, 1.5)), z_lo, z_hi, "terrain", TERRAIN))
        if setback > 0:
            street.ground.append(_ground(side * (rw + sw), x_face, z_lo, z_hi, "terrain", TERRAIN))
        # facades with windows and the odd poster (unlabeled), in blocks with gaps
        z = z_lo
        while z < z_hi:
            length = rng.uniform(8.0, 28.0)
            if rng.random() < 0.15:
                z += rng.uniform(4.0, 10.0)
                continue
            height = rng.uniform(7.0, 26.0)
            street.surfaces.append(_facade(x_face, z, z + length, 0.0, height,
                                           rng.choice(["brick", "plaster", "concrete"]), BUILDING))
            fy, fz = np.meshgrid(np.arange(2.0, height - 1.5, 3.2), np.arange(z + 1.0, z + length - 1.5, 2.6))
            if fy.size:
                fy, fz = fy.reshape(-1, 1), fz.reshape(-1, 1)
                windows = np.stack([np.broadcast_to(np.float32(x_face), (fy.size, 4)),
                                    fy + np.float32([0, 1.5, 1.5, 0]), fz + np.float32([0, 0, 1.2, 1.2])], -1)
                street.surfaces.append(Quad("window", BUILDING, windows.astype(np.float32)))
            if rng.random() < 0.3:
                pz = z + rng.uniform(0, max(length - 3.0, 0.1))
                street.surfaces.append(_facade(x_face, pz, pz + 2.5, 0.8, 2.8, "poster", UNLABELED))
            z += length
        # walls, fences and hedges on the sidewalk's outer edge where there is a front yard
        if setback > 0:
            x_edge = side * (rw + sw)
            z = z_lo
            while z < z_hi:
                length = rng.uniform(6.0, 20.0)
                kind = rng.choice(["wall", "fence", "hedge", "none"], p=[0.2, 0.2, 0.15, 0.45])
                if kind != "none":
                    material, label, h = {"wall": ("wall", WALL, rng.uniform(1.0, 2.5)),
                                          "fence": ("fence", FENCE, rng.uniform(1.0, 1.8)),
                                          "hedge": ("leaves", VEGETATION, rng.uniform(0.8, 1.4))}[kind]
                    street.surfaces.append(_facade(x_edge, z, z + length, 0.0, h, material, label))
                z += length + rng.uniform(0.0, 4.0)
            for tz in poisson_positions(0.08):
                street.objects.append(Billboard(side * (rw + sw + rng.uniform(0.5, setback)), tz, _tree(rng)))
        # street furniture on the kerb
        for pz in poisson_positions(0.08):
            street.objects.append(Billboard(side * (rw + 0.4), pz, _pole(rng, rng.choice(["plain", "light", "sign"]))))
        for tz in poisson_positions(0.02):
            street.objects.append(Billboard(side * (rw + sw * 0.7), tz, _tree(rng)))
        for bz in poisson_positions(0.03):
            street.objects.append(Billboard(side * (rw + 0.9), bz, [Part("bin", DYNAMIC, _rect(-0.3, 0.3, 0.0, 1.0))]))
        # people on the sidewalk, parked cars and two-wheelers at the kerb
        for pz in poisson_positions(0.12):
            street.objects.append(Billboard(side * (rw + rng.uniform(0.6, sw - 0.3)), pz, _person(rng)))
        for cz in poisson_positions(0.07):
            street.objects.append(Billboard(side * (rw - 1.3), cz, _car(rng)))
        for bz in poisson_positions(0.03):
            street.objects.append(Billboard(side * (rw + 1.2), bz, _two_wheeler(rng, rng.random() < 0.4, False)))
    # traffic: riders near the kerb, vehicles in the lanes; the camera's lane moves with the camera
    for lane in lanes:
        speed = camera_speed if lane > 0 else -camera_speed
        kinds = ["car", "car", "truck", "bus", "moto"] + ([] if rails else ["car"])
        for vz in poisson_positions(0.035):
            if lane > 0 and vz < 12.0:
                continue  # nothing in the camera's lane right in front of it
            kind = rng.choice(kinds)
            parts = {"car": _car, "truck": _truck, "bus": _bus}.get(kind)
            parts = parts(rng) if parts else _two_wheeler(rng, True, True)
            street.objects.append(Billboard(lane + rng.uniform(-0.3, 0.3), vz, parts, speed))
        for rz in poisson_positions(0.02):
            motor = rng.random() < 0.3
            street.objects.append(Billboard(np.sign(lane) * (rw - 0.7), rz, _two_wheeler(rng, motor, True),
                                            speed * 0.5))
    if rails:
        for tz in poisson_positions(0.012, 15.0, z_hi):
            street.objects.append(Billboard(0.0, tz, _train(), -camera_speed))
    # the end of the street, drawn before the facades
    street.surfaces.insert(0, Quad("concrete", BUILDING,
                                   np.float32([[-60, 0, z_hi], [60, 0, z_hi], [60, 30, z_hi], [-60, 30, z_hi]])))
    return street


# ---- rendering -----------------------------------------------------------------------------------------

class _SegmentMap:
    """uint16 map of segment ids; a segment is one (label id, material, instance id)."""

    def __init__(self, height: int, width: int) -> None:
        self.ids = np.zeros((height, width), np.uint16)
        self.plane_ids = np.zeros((height, width), np.uint16)  # 0: no surface (no depth return)
        self.planes: list[tuple[float, float, float, float]] = [(0.0, 0.0, 1.0, 0.0)]  # n . P = c, camera-relative
        self.label: list[int] = [SKY]
        self.material: list[int] = [MATERIAL_INDEX["sky"]]
        self.instance: list[int] = [SKY]
        self._index: dict[tuple[int, int, int], int] = {(SKY, self.material[0], SKY): 0}
        self._instances: dict[int, int] = {}

    def new_instance(self, label: int) -> int:
        self._instances[label] = self._instances.get(label, -1) + 1
        return label * 1000 + self._instances[label]

    def segment(self, label: int, material: str, instance: int | None = None) -> int:
        key = (label, MATERIAL_INDEX[material], label if instance is None else instance)
        if key not in self._index:
            self._index[key] = len(self.label)
            self.label.append(key[0])
            self.material.append(key[1])
            self.instance.append(key[2])
        return self._index[key]

    def plane(self, normal, c: float) -> int:
        """A new plane id for points P (lateral, height, depth) with normal . P = c."""
        self.planes.append((float(normal[0]), float(normal[1]), float(normal[2]), float(c)))
        return len(self.planes) - 1

    def fill(self, pixels: np.ndarray, seg: int, thickness_px: int = 0, plane: int = 0) -> None:
        """Fill one polygon (N, 2) or a batch (K, N, 2); or stroke a polyline `thickness_px` wide."""
        pts = np.round(np.clip(pixels, -1e6, 1e6)).astype(np.int32)
        polys = list(pts) if pts.ndim == 3 else [pts]
        for image, value in ((self.ids, seg), (self.plane_ids, plane)):
            if thickness_px > 0:
                cv2.polylines(image, polys, False, value, thickness_px)
            else:
                cv2.fillPoly(image, polys, value)

    def depth(self, cam: "Camera") -> np.ndarray:
        """Depth along the optical axis where each pixel's ray meets its plane; 0 where there is none."""
        nx, ny, nz, c = np.asarray(self.planes, np.float32).T
        ids = self.plane_ids
        h, w = ids.shape
        a = (np.arange(w, dtype=np.float32) - cam.cx) / cam.focal  # lateral per metre of depth
        b = (np.arange(h, dtype=np.float32)[:, None] - cam.cy) / cam.focal  # drop per metre of depth
        den = nx[ids] * a
        den -= ny[ids] * b
        den += nz[ids]
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.divide((c - CAMERA_HEIGHT_M * ny)[ids], den, out=den)
        z[(ids == 0) | ~(z > 0) | (z == np.inf)] = 0
        return z


def _clip_quad_to_depth(corners: np.ndarray, near: float, far: float) -> np.ndarray | None:
    """Clip a planar polygon against the planes z=near and z=far (Sutherland-Hodgman)."""
    poly = corners
    for bound, keep_above in ((near, True), (far, False)):
        out = []
        n = len(poly)
        for i in range(n):
            a, b = poly[i], poly[(i + 1) % n]
            ina = a[2] >= bound if keep_above else a[2] <= bound
            inb = b[2] >= bound if keep_above else b[2] <= bound
            if ina:
                out.append(a)
            if ina != inb:
                t = (bound - a[2]) / (b[2] - a[2])
                out.append(a + t * (b - a))
        if len(out) < 3:
            return None
        poly = np.asarray(out, np.float32)
    return poly


def _draw_street(seg: _SegmentMap, cam: Camera, street: Street, camera_z: float, frame: int) -> None:
    offset = np.float32([street.camera_x, 0.0, camera_z])
    for quad in street.ground + street.surfaces:
        corners = quad.corners - offset
        if corners.ndim == 3:  # a batch of small quads: keep those wholly in range instead of clipping
            z = corners[..., 2]
            poly = corners[((z > NEAR_M) & (z < FAR_M)).all(axis=1)]
            if not len(poly):
                continue
        else:
            z = corners[:, 2]
            if z.max() < NEAR_M or z.min() > FAR_M:
                continue
            poly = _clip_quad_to_depth(corners, NEAR_M, FAR_M)
            if poly is None:
                continue
        first = corners.reshape(-1, 3)[:3]  # a batch of quads shares one plane (windows on a facade)
        normal = np.cross(first[1] - first[0], first[2] - first[0])
        plane = seg.plane(normal, float(normal @ first[0]))
        seg.fill(cam.project(poly[..., 0], poly[..., 1], poly[..., 2]), seg.segment(quad.label, quad.material),
                 plane=plane)
    depth = np.array([o.z + o.v * frame - camera_z for o in street.objects], np.float32)
    for i in np.argsort(-depth):
        z = float(depth[i])
        if not NEAR_M + 1.0 < z < FAR_M:
            continue
        obj = street.objects[i]
        # one instance per instance-class label in the object (a rider and the bicycle under them)
        instances = {label: seg.new_instance(label) for label in {p.label for p in obj.parts} & INSTANCE_LABELS}
        scale = cam.focal / z
        x = obj.x - street.camera_x
        plane = seg.plane((0.0, 0.0, 1.0), z)
        for part in obj.parts:
            px = np.stack([cam.cx + scale * (x + part.points[:, 0]),
                           cam.cy + scale * (CAMERA_HEIGHT_M - part.points[:, 1])], -1)
            seg_id = seg.segment(part.label, part.material, instances.get(part.label))
            thickness = max(1, int(round(part.thickness_m * scale))) if part.thickness_m > 0 else 0
            seg.fill(px, seg_id, thickness, plane)


def _draw_ego(seg: _SegmentMap, cam: Camera, hood_fraction: float) -> None:
    """Ego hood at the bottom (ego vehicle) and a thin frame of out-of-roi pixels at the sides and bottom."""
    h, w = cam.height, cam.width
    u = np.linspace(0, w - 1, 33, dtype=np.float32)
    top = h * (1.0 - hood_fraction * (1.0 - 0.6 * ((u - cam.cx) / cam.cx) ** 2))
    hood = np.concatenate([np.stack([u, top], -1), np.float32([[w - 1, h - 1], [0, h - 1]])])
    seg.fill(hood, seg.segment(EGO_VEHICLE, "hood"))
    border = max(1, w // 128)
    frame = (_rect(0, border - 1, 0, h - 1), _rect(w - border, w - 1, 0, h - 1), _rect(0, w - 1, h - border, h - 1))
    seg.fill(np.stack(frame), seg.segment(OUT_OF_ROI, "border"))


def _compose(seg: _SegmentMap, cam: Camera, rng: np.random.Generator) -> SyntheticFrame:
    h, w = cam.height, cam.width
    label_of = np.asarray(seg.label, np.uint8)
    material_of = np.asarray(seg.material, np.int64)
    label_ids = label_of[seg.ids]
    index = material_of[seg.ids] * (h * w) + np.arange(h * w).reshape(h, w)
    rgb = np.take(material_textures(h, w), index.ravel(), axis=0).reshape(h, w, 3)
    # global illumination and white-balance change, one lookup table per channel
    gain = rng.uniform(0.75, 1.2) * rng.uniform(0.93, 1.07, 3)
    lut = np.clip(np.arange(256, dtype=np.float32)[:, None] * gain[None, :], 0, 255).astype(np.uint8)
    rgb = cv2.LUT(rgb, lut.reshape(256, 1, 3))
    return SyntheticFrame(rgb=rgb, label_ids=label_ids, train_ids=LABEL_TO_TRAIN[label_ids],
                          instance_ids=_visible_instances(seg)[seg.ids], depth=seg.depth(cam))


def _visible_instances(seg: _SegmentMap) -> np.ndarray:
    """Instance id of every segment, renumbered 0..k-1 per label over the instances left visible, as in Cityscapes."""
    instance = np.asarray(seg.instance, np.int32)
    visible = np.bincount(seg.ids.ravel(), minlength=len(instance)) > 0
    renumbered: dict[int, int] = {}
    per_label: collections.Counter = collections.Counter()
    for i in np.flatnonzero(visible & (instance >= 1000)):
        old = int(instance[i])
        if old not in renumbered:
            label = old // 1000
            renumbered[old] = label * 1000 + per_label[label]
            per_label[label] += 1
        instance[i] = renumbered[old]
    return instance


def topdown_map(street: Street, camera_z: float, frame: int, grid: GridSpec) -> np.ndarray:
    """uint8 [grid.height, grid.width] train ids of what is on the ground around the camera (grid frame: the
    ground under the camera, x forward, y left), 255 where nothing is: ground quads, then the footprints of
    facades, walls and objects reaching below TOPDOWN_MAX_HEIGHT_M. Objects are where `_draw_street` draws them."""
    out = np.full((grid.height, grid.width), IGNORE_ID, np.uint8)
    shift = 4  # sub-cell precision for OpenCV's fixed-point vertices

    def cells(x_rel: np.ndarray, z_rel: np.ndarray) -> np.ndarray:
        """camera-relative (lateral right, depth) -> fixed-point (col, row) with cell centres at integers"""
        col = (z_rel - grid.origin_x) / grid.resolution - 0.5
        row = (-x_rel - grid.origin_y) / grid.resolution - 0.5
        return np.round(np.stack([col, row], -1).clip(-1e5, 1e5) * (1 << shift)).astype(np.int32)

    def draw(x_rel, z_rel, label: int, area: bool) -> None:
        train = int(LABEL_TO_TRAIN[label])
        if train == IGNORE_ID:
            return
        pts = cells(np.asarray(x_rel, np.float32), np.asarray(z_rel, np.float32))
        if area:
            cv2.fillPoly(out, [pts], train, shift=shift)
        cv2.polylines(out, [pts], area, train, 1, shift=shift)  # thin footprints are lines of cells

    near, far = grid.origin_x - 1.0, grid.origin_x + grid.size_x + 1.0  # what can touch the grid, ahead

    def on_grid(z_rel: np.ndarray) -> bool:
        return z_rel.max() >= near and z_rel.min() <= far

    for quad in street.ground:
        if on_grid(quad.corners[:, 2] - camera_z):
            draw(quad.corners[:, 0] - street.camera_x, quad.corners[:, 2] - camera_z, quad.label, True)
    for quad in street.surfaces:
        if (quad.corners.ndim == 2 and quad.corners[:, 1].min() < TOPDOWN_MAX_HEIGHT_M
                and on_grid(quad.corners[:, 2] - camera_z)):
            draw(quad.corners[:, 0] - street.camera_x, quad.corners[:, 2] - camera_z, quad.label, False)
    for obj in street.objects:
        z = obj.z + obj.v * frame - camera_z
        if not (NEAR_M + 1.0 < z < FAR_M and near <= z <= far):  # drawn in the image, and on the grid
            continue
        for part in obj.parts:
            if part.points[:, 1].min() < TOPDOWN_MAX_HEIGHT_M:
                half = part.thickness_m / 2
                x = obj.x - street.camera_x + np.float32([part.points[:, 0].min() - half,
                                                          part.points[:, 0].max() + half])
                draw(x, [z, z], part.label, False)
    return out


def _render(street: Street, cam: Camera, camera_z: float, frame: int, hood: float,
            rng: np.random.Generator, topdown: GridSpec | None = None) -> SyntheticFrame:
    seg = _SegmentMap(cam.height, cam.width)
    _draw_street(seg, cam, street, camera_z, frame)
    _draw_ego(seg, cam, hood)
    out = _compose(seg, cam, rng)
    if topdown is not None:
        out.topdown = topdown_map(street, camera_z, frame, topdown)
    return out


def render_scene(rng: np.random.Generator, height: int, width: int,
                 topdown: GridSpec | None = None) -> SyntheticFrame:
    """One random street scene seen from a forward camera; `topdown`: also the true map on this grid."""
    street = build_street(rng, z_end=0.0)
    return _render(street, Camera.for_image(height, width), 0.0, 0, rng.uniform(*HOOD_FRACTION), rng, topdown)


def render_drive(rng: np.random.Generator, n_frames: int, height: int, width: int,
                 step_m: float = 0.8, topdown: GridSpec | None = None) -> Iterator[SyntheticFrame]:
    """`n_frames` temporally coherent frames of a camera driving `step_m` metres a frame down one street."""
    street = build_street(rng, z_end=n_frames * step_m, camera_speed=step_m)
    cam = Camera.for_image(height, width)
    hood = rng.uniform(*HOOD_FRACTION)
    light_seed = int(rng.integers(1 << 31))  # one illumination for the whole drive
    for i in range(n_frames):
        yield _render(street, cam, i * step_m, i, hood, np.random.default_rng(light_seed), topdown)


def render_street(street: Street, height: int, width: int, topdown: GridSpec | None = None,
                  seed: int = 0) -> SyntheticFrame:
    """A hand-laid street (e.g. `staged_street`) seen from its camera, without an ego hood."""
    return _render(street, Camera.for_image(height, width), 0.0, 0, 0.0, np.random.default_rng(seed), topdown)


def staged_street(objects: Iterable[tuple[str, float, float]], road_half_m: float = 8.0, seed: int = 0) -> Street:
    """A flat road with nothing on it but `objects`: (kind, metres to the right of the camera, metres ahead),
    kind one of car, person, pole, truck. For tests and figures whose geometry is known by hand."""
    rng = np.random.default_rng(seed)
    builders = {"car": _car, "person": _person, "truck": _truck, "pole": lambda r: _pole(r, "plain")}
    street = Street(road_half_m=road_half_m, camera_x=0.0)
    street.ground.append(_ground(-road_half_m, road_half_m, -20.0, FAR_M, "road", ROAD))
    street.objects += [Billboard(x, z, builders[kind](rng)) for kind, x, z in objects]
    return street


# ---- Cityscapes layout ---------------------------------------------------------------------------------

DRIVE_SAMPLES, DRIVE_EVERY = 10, 4  # frames kept per drive, and every how many rendered frames
CITIES = {"train": ("synthville", "synthburg"), "val": ("synthdorf",), "test": ("synthham",)}


def cityscapes_stem(split: str, index: int) -> tuple[str, str]:
    """(city, '<city>_<seq:06d>_<frame:06d>') for the index-th image of a split."""
    cities = CITIES.get(split, (f"synth{split}",))
    city = cities[index % len(cities)]
    return city, f"{city}_{index // 100:06d}_{index % 100:06d}"


def write_cityscapes(root: str | Path, split: str, n: int, size: tuple[int, int] = (512, 1024),
                     seed: int = 0, drives: int = 0, on_image: Callable[[], None] | None = None) -> list[Path]:
    """Write n scenes in the Cityscapes layout under root, then `drives` x DRIVE_SAMPLES frames of drives
    (what a camera on a moving robot sees: the demo's domain); returns the written leftImg8bit paths.
    `on_image` is called after each image is written (progress)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    scenes = (render_scene(rng, *size) for _ in range(n))
    drive_frames = (frame for _ in range(drives)
                    for i, frame in enumerate(render_drive(rng, DRIVE_SAMPLES * DRIVE_EVERY, *size))
                    if i % DRIVE_EVERY == 0)
    frames = itertools.chain(scenes, drive_frames)  # streamed: a dataset never sits in memory
    written = []
    for i, frame in enumerate(frames):
        city, stem = cityscapes_stem(split, i)
        img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        image = img_dir / f"{stem}_leftImg8bit.png"
        cv2.imwrite(str(image), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelIds.png"), frame.label_ids)
        cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelTrainIds.png"), frame.train_ids)
        cv2.imwrite(str(gt_dir / f"{stem}_gtFine_instanceIds.png"), frame.instance_ids.astype(np.uint16))
        written.append(image)
        if on_image is not None:
            on_image()
    return written


# ---- CLI -----------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    from seg_perception.sizes import parse_hw
    p.add_argument("--out", default="synthetic", help="dataset root (Cityscapes layout)")
    p.add_argument("--split", action="append", default=None,
                   help="SPLIT or SPLIT:N, repeatable (default: train:200 and val:50)")
    p.add_argument("--size", type=parse_hw, default=(512, 1024), help="HxW of the images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drives", type=int, default=0,
                   help=f"also write this many drives ({DRIVE_SAMPLES} frames each) into the train split")
    p.add_argument("--bag", help="write a drive as a rosbag2 at this path instead of a dataset")
    p.add_argument("--frames", type=int, default=100, help="frames in the drive (--bag)")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    p.add_argument("--compressed", action="store_true", help="store CompressedImage (png) instead of Image")
    p.add_argument("--rate", type=float, default=10.0, help="frame rate of the drive, Hz")


def run(args) -> int:
    if args.bag:
        from seg_perception.bags import write_drive_bag
        h, w = args.size
        grid = GridSpec()  # seg_node's default costmap grid, the camera above its origin
        frames = progress_bar(args.frames, "frame", desc=args.bag,
                              iterable=render_drive(np.random.default_rng(args.seed), args.frames, h, w, topdown=grid))
        path = write_drive_bag(args.bag, frames, storage=args.storage, compressed=args.compressed,
                               camera_info=Camera.for_image(h, w).pinhole(), rate_hz=args.rate, topdown_grid=grid)
        print(f"wrote {path}: {args.frames} frames {h}x{w} at {args.rate} Hz")
        return 0
    for k, spec in enumerate(args.split or ["train:200", "val:50"]):
        split, _, n = spec.partition(":")
        if not split or not (n or "100").isdigit():
            raise UsageError(f"--split expects SPLIT or SPLIT:N such as train:200, got '{spec}'")
        count, drives = int(n or 100), args.drives if split == "train" else 0
        with progress_bar(count + drives * DRIVE_SAMPLES, "img", desc=split) as bar:
            paths = write_cityscapes(args.out, split, count, args.size, seed=args.seed + 1000 * k, drives=drives,
                                     on_image=bar.update)
        print(f"wrote {len(paths)} {split} images under {args.out}")
    return 0
