"""DepthProjector and costmap IoU on synthetic frames whose depth and top-down truth are exact: obstacles mark only
their footprint, free space ends at the hit, the height band and "no return" hold, and the flat-ground
projection, scored the same way, smears."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from seg_perception.core.camera_model import CameraModel
from seg_perception.core.costmap import FREE, FUSED, LETHAL, UNKNOWN, CameraPose, GridSpec, cost_lut
from seg_perception.core.depth_costmap import (POINT_DTYPE, DepthDecoder, DepthError, DepthProjector, DepthSpec,
                                               check_registered)
from seg_perception.data.synthetic import CAMERA_HEIGHT_M, Camera, render_street, staged_street
from seg_perception.eval.costmap_metrics import CostmapIoU, resample_truth, visible_cells
from seg_perception.labels import CITYSCAPES_CLASSES

ROAD, PERSON, CAR = (CITYSCAPES_CLASSES.index(n) for n in ("road", "person", "car"))
H, W = 192, 384
GRID = GridSpec(resolution=0.1, size_x=16.0, size_y=12.0, origin_x=0.0, origin_y=-6.0)
COSTS = {"road": 0, "car": 100, "person": 100}
# Distances fall mid-cell, so that a footprint never straddles two cells by rounding.
SCENE = [("car", 0.0, 8.05), ("person", -1.8, 6.05), ("car", 3.0, 12.05)]  # all in view


@pytest.fixture(scope="module")
def frame():
    return render_street(staged_street(SCENE), H, W, topdown=GRID)


def projector(**kw) -> DepthProjector:
    proj = DepthProjector(GRID, CameraPose(height=CAMERA_HEIGHT_M), CITYSCAPES_CLASSES, COSTS, 100,
                          ("road", "person", "car"), **kw)
    proj.set_intrinsics(Camera.for_image(H, W).pinhole().k(), (H, W))
    return proj


def test_obstacles_mark_only_their_true_footprint_where_flat_ground_smears(frame):
    proj = projector()
    depth_layers = proj.project_depth(frame.train_ids, (H, W), frame.depth)
    flat_layers = proj.project(frame.train_ids, (H, W))
    for cls, name in ((CAR, "car"), (PERSON, "person")):
        truth = frame.topdown == cls
        marked = depth_layers[name] == LETHAL
        assert marked.any() and not (marked & ~truth).any(), f"{name}: cells marked off the footprint"
        assert np.count_nonzero(marked & truth) >= 0.9 * np.count_nonzero(truth), f"{name}: footprint missed"
        smear = (flat_layers[name] == LETHAL) & ~truth
        assert np.count_nonzero(smear) > 10 * np.count_nonzero(truth), f"{name}: flat ground did not smear"
    # The fused layer: lethal exactly on the footprints, road free.
    fused = depth_layers[FUSED]
    obstacles = np.isin(frame.topdown, [CAR, PERSON])
    assert not ((fused == LETHAL) & ~obstacles).any()
    assert set(np.unique(fused[frame.topdown == ROAD])) <= {UNKNOWN, FREE}


def test_free_space_ends_at_the_hit_and_the_shadow_stays_unknown():
    """A truck taller than the camera straight ahead: rays over it find no return, so what it hides stays
    unknown. (Rays that pass over a lower obstacle and come down behind it see through, as a raytrace does.)"""
    truck = render_street(staged_street([("truck", 0.0, 8.05)]), H, W, topdown=GRID)
    fused = projector().project_depth(truck.train_ids, (H, W), truck.depth)[FUSED]
    xs, ys = GRID.cell_centres()
    ahead = np.abs(ys) < 0.3
    cam = Camera.for_image(H, W)
    near = CAMERA_HEIGHT_M * cam.focal / (H - 1 - cam.cy)  # the ground the bottom image row sees
    assert (fused[ahead & (xs > near + 0.2) & (xs < 7.9)] == FREE).all()
    assert (fused[ahead & (xs > 7.95) & (xs < 8.15)] == LETHAL).all()
    under = 8.05 * CAMERA_HEIGHT_M / (CAMERA_HEIGHT_M - 0.45)  # ground seen under the body, 0.45 m up
    assert (fused[ahead & (xs > 8.2) & (xs < under - 0.2)] == FREE).all()
    assert (fused[ahead & (xs > under + 0.2)] == UNKNOWN).all()  # hidden by the truck
    assert (fused[ahead & (xs < near - 0.2)] == UNKNOWN).all()  # under the camera, never in view


def test_height_band_and_no_return(frame):
    proj = projector(depth=DepthSpec(min_obstacle_height=0.1, max_obstacle_height=2.0))
    swapped = frame.train_ids.copy()
    swapped[frame.train_ids == CAR] = ROAD  # car points as ground class: too high to be ground
    swapped[frame.train_ids == ROAD] = CAR  # road points as an obstacle class: too low to be an obstacle
    layers = proj.project_depth(swapped, (H, W), frame.depth)
    assert not (layers["car"] == LETHAL).any()
    assert not ((layers[FUSED] == LETHAL) & (frame.topdown != PERSON)).any()  # the person alone stays an obstacle
    # a low band: the person's upper body no longer marks, the cars' lower parts still do
    low = projector(depth=DepthSpec(min_obstacle_height=0.1, max_obstacle_height=0.15))
    assert (low.project_depth(frame.train_ids, (H, W), frame.depth)["car"] == LETHAL).any()
    for value in (0.0, np.nan, np.inf):
        layers = proj.project_depth(frame.train_ids, (H, W), np.full((H, W), value, np.float32))
        assert proj.points_used == 0 and all((g == UNKNOWN).all() for g in layers.values())
    layers = proj.project_depth(frame.train_ids, (H, W), None)
    assert all((g == UNKNOWN).all() for g in layers.values())
    with pytest.raises(ValueError, match="min_obstacle_height"):
        DepthSpec(min_obstacle_height=2.0, max_obstacle_height=1.0)


def test_depth_at_another_resolution_and_buffers_are_reused(frame):
    proj = projector()
    full = {k: v.copy() for k, v in proj.project_depth(frame.train_ids, (H, W), frame.depth).items()}
    half = proj.project_depth(frame.train_ids, (H, W), np.ascontiguousarray(frame.depth[::2, ::2]))
    # Obstacles agree; free space differs where rays graze the car roof (half the depth rows) and comes down far
    # behind it: about 1000 of the 19200 cells.
    assert np.mean(full[FUSED] == half[FUSED]) > 0.9
    assert np.array_equal(full[FUSED] == LETHAL, half[FUSED] == LETHAL)
    assert np.count_nonzero((full["car"] == LETHAL) != (half["car"] == LETHAL)) <= 4
    again = proj.project_depth(frame.train_ids, (H, W), np.ascontiguousarray(frame.depth[::2, ::2]))
    assert all(again[name] is half[name] for name in half)  # the same arrays, refilled
    buffers = dict(proj._geometry.buffers)
    proj.project_depth(frame.train_ids, (H, W), np.ascontiguousarray(frame.depth[::2, ::2]))
    assert all(proj._geometry.buffers[k] is v for k, v in buffers.items())


# What the pose sets in a geometry; each is compared with a geometry built from scratch for that pose.
AIMED = ("stride", "bins", "col_at_camera", "row_at_camera", "camera_z", "col_per_metre", "row_per_metre",
         "z_per_metre", "reach_per_metre", "sample_bin", "cell_bin", "cell_range", "cell_near", "table_sample",
         "table_cell")


def test_a_moving_camera_reaims_the_geometry_in_place_bit_for_bit_as_built_from_scratch(frame):
    """A camera whose pose changes every frame (TF into odom, a pan-tilt head): the flat-ground table and the
    depth geometry are re-aimed in their buffers, not rebuilt, and hold exactly what a projector built for that
    pose holds, for turns, tilts, rolls and moves, when the far corner's distance changes the sample stride, and
    when the pose goes back."""
    grid = GridSpec(resolution=0.2, size_x=16.0, size_y=12.0, origin_x=0.0, origin_y=-6.0)  # strides 1 to 3

    def fresh(pose: CameraPose) -> DepthProjector:
        proj = DepthProjector(grid, pose, CITYSCAPES_CLASSES, COSTS, 100, ("road", "person", "car"))
        proj.set_intrinsics(Camera.for_image(H, W).pinhole().k(), (H, W))
        return proj

    h = CAMERA_HEIGHT_M
    poses = [CameraPose(height=h), CameraPose(height=h, yaw=0.3), CameraPose(height=h, yaw=0.3, pitch=0.08),
             CameraPose(height=h, yaw=0.3, pitch=0.08, roll=-0.05), CameraPose(x=0.7, y=-0.4, height=h + 0.2),
             CameraPose(x=0.7, y=0.4, height=h + 0.2),  # as far from the far corner: only the move changes
             CameraPose(x=8.0, height=h, yaw=-0.6, pitch=0.1), CameraPose(x=-10.0, y=2.0, height=h, yaw=0.1),
             CameraPose(height=h)]
    moving = fresh(poses[0])
    depth = np.ascontiguousarray(frame.depth[::2, ::2])  # half-size depth: the samples' depth pixels differ
    first, table, geometry, strides = None, None, None, []
    for pose in poses:
        moving.set_pose(pose)
        got = {k: v.copy() for k, v in moving.project_depth(frame.train_ids, (H, W), depth).items()}
        flat = {k: v.copy() for k, v in moving.project(frame.train_ids, (H, W)).items()}
        ref = fresh(pose)
        want = ref.project_depth(frame.train_ids, (H, W), depth)
        for name in want:
            assert np.array_equal(got[name], want[name]), (pose, name)
        assert moving.points_used == ref.points_used > 0
        for name, grid_cells in ref.project(frame.train_ids, (H, W)).items():
            assert np.array_equal(flat[name], grid_cells), (pose, name)
        for name in AIMED:
            assert np.array_equal(getattr(moving._geometry, name), getattr(ref._geometry, name)), (pose, name)
        assert np.array_equal(moving._table.cells, ref._table.cells)
        assert np.array_equal(moving._table.pixels, ref._table.pixels)
        # kept, not rebuilt: the flat table always, the depth geometry while the stride holds
        assert table is None or moving._table is table
        if strides and moving._geometry.stride == strides[-1]:
            assert moving._geometry is geometry
        table, geometry = moving._table, moving._geometry
        strides.append(geometry.stride)
        first = first or got
    assert set(strides) == {1, 2, 3}, strides
    assert all(np.array_equal(first[name], got[name]) for name in got)  # back where it started


def test_depth_decoder_and_registration():
    metres = np.array([[0.0, 1.5, 65.535], [2.25, 0.001, 10.0]], np.float32)
    mm = np.round(metres * 1000).astype("<u2")
    dec = DepthDecoder()
    raw = dec.decode(mm.tobytes(), "16UC1", 2, 3, 6)  # millimetres as they came, a view
    assert raw.dtype == np.uint16 and not raw.flags.owndata
    np.testing.assert_array_equal(raw, mm)
    np.testing.assert_allclose(dec.decode(mm.astype(">u2").tobytes(), "16UC1", 2, 3, 6, is_bigendian=1), metres,
                               atol=1e-6)  # converted
    padded = np.zeros((2, 16), np.uint8)  # 12 bytes of floats + 4 of row padding
    padded[:, :12] = metres.view(np.uint8).reshape(2, 12)
    np.testing.assert_array_equal(dec.decode(padded.tobytes(), "32FC1", 2, 3, 16), metres)  # padding dropped
    view = dec.decode(metres.tobytes(), "32FC1", 2, 3, 12)
    np.testing.assert_array_equal(view, metres)
    assert not view.flags.owndata  # a view of the message bytes
    for args, reason in [((mm.tobytes(), "mono8", 2, 3, 6), "not one of 16UC1, 32FC1"),
                         ((mm.tobytes(), "16UC1", 2, 3, 4), "step 4 is smaller"),
                         ((mm.tobytes()[:-2], "16UC1", 2, 3, 6), "holds 10 bytes"),
                         ((b"", "16UC1", 0, 3, 6), "empty")]:
        with pytest.raises(DepthError, match=reason):
            dec.decode(*args)
    check_registered((480, 640), (240, 320))
    with pytest.raises(DepthError, match="aspect ratio"):
        check_registered((480, 640), (480, 848))


def test_depth_decoder_refuses_an_image_over_max_pixels_from_its_fields_before_allocating():
    msgs = pytest.importorskip("sensor_msgs.msg")
    metres = np.full((30, 40), 2.5, ">f4")  # big-endian: decoding it would fill a new float32 buffer
    msg = msgs.Image(height=30, width=40, encoding="32FC1", is_bigendian=1, step=160, data=metres.tobytes())
    fields = (msg.data, msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian)
    np.testing.assert_array_equal(DepthDecoder(max_pixels=1200).decode(*fields), metres)
    with pytest.raises(DepthError, match=r"^40x30 depth image is 1200 pixels, more than max_input_pixels 1000$"):
        DepthDecoder(max_pixels=1000).decode(*fields)
    # A message claiming 10^10 pixels with 16 bytes of data: refused by its fields, as a colour frame is, before its
    # bytes are looked at (the data-size check would speak first otherwise).
    huge = msgs.Image(height=100_000, width=100_000, encoding="32FC1", is_bigendian=1, step=400_000,
                      data=b"\0" * 16)
    with pytest.raises(DepthError, match="100000x100000 depth image is 10000000000 pixels, more than max_input_pixels"):
        DepthDecoder().decode(huge.data, huge.encoding, huge.height, huge.width, huge.step, huge.is_bigendian)


def test_labelled_points_in_the_optical_frame(frame):
    proj = projector()
    confidence = np.full((H, W), 200, np.uint8)
    points, hw = proj.points(frame.train_ids, confidence, (H, W), frame.depth, stride=4, organized=True)
    assert points.dtype == POINT_DTYPE and POINT_DTYPE.itemsize == 16 and hw == (H // 4, W // 4)
    grid = points.reshape(hw)
    cam = Camera.for_image(H, W)
    r, c = 40, 48  # a road pixel (row 160, col 192) below the horizon
    assert frame.train_ids[4 * r, 4 * c] == ROAD
    p = grid[r, c]
    z = CAMERA_HEIGHT_M * cam.focal / (4 * r - cam.cy)
    assert p["z"] == pytest.approx(z, rel=1e-4)
    assert p["x"] == pytest.approx(z * (4 * c - cam.cx) / cam.focal, abs=1e-4)
    assert p["y"] == pytest.approx(CAMERA_HEIGHT_M, rel=1e-4)  # the road is the camera height below the axis
    assert p["label"] == ROAD and p["confidence"] == 200
    assert math.isnan(grid[0, 0]["z"])  # sky: no return
    compact, chw = proj.points(frame.train_ids, None, (H, W), frame.depth, stride=4, organized=False)
    assert chw == (1, np.count_nonzero(frame.depth[::4, ::4] > 0)) and not np.isnan(compact["z"]).any()
    assert (compact["confidence"] == 255).all()


def same_points(a: np.ndarray, b: np.ndarray) -> bool:
    """Field by field, bit for bit (NaN where there is no return); the two padding bytes are not compared."""
    return a.shape == b.shape and all(a[f].tobytes() == b[f].tobytes() for f in POINT_DTYPE.names)


@pytest.mark.parametrize("camera_hw, model_hw, depth_hw, stride", [
    ((192, 384), (64, 128), (192, 384), 1), ((192, 384), (64, 128), (96, 192), 3),
    ((480, 640), (256, 512), (240, 320), 4), ((100, 300), (64, 128), (100, 300), 2),
    ((64, 128), (64, 128), (64, 128), 2), ((75, 101), (32, 48), (150, 202), 5)])
def test_points_from_model_resolution_labels_equal_the_cloud_of_the_resized_mask(camera_hw, model_hw, depth_hw,
                                                                                 stride):
    """The cloud reads labels and confidence at its pixels from the model's arrays: the same cloud, byte for byte,
    as the one built from the mask and confidence resized to the camera (nearest), organised or not."""
    rng = np.random.default_rng(sum(camera_hw) + stride)
    labels = rng.integers(0, 19, model_hw, dtype=np.uint8)
    confidence = rng.integers(0, 256, model_hw, dtype=np.uint8)
    depth = rng.uniform(0.5, 30.0, depth_hw).astype(np.float32)
    depth[rng.random(depth_hw) < 0.2] = 0  # some pixels without a return
    size = (camera_hw[1], camera_hw[0])
    mask = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    mask_confidence = cv2.resize(confidence, size, interpolation=cv2.INTER_NEAREST)
    k = Camera.for_image(*camera_hw).pinhole().k()
    sampled, resized = projector(), projector()
    for proj in (sampled, resized):
        proj.set_intrinsics(k, camera_hw)
    for organized in (True, False):
        got, got_hw = sampled.points(labels, confidence, camera_hw, depth, stride, organized, cloud_hw=camera_hw)
        want, want_hw = resized.points(mask, mask_confidence, camera_hw, depth, stride, organized)
        assert got_hw == want_hw and same_points(got, want)
        assert len(np.unique(got["label"])) > 1
        assert not got.view(np.uint8).reshape(-1, POINT_DTYPE.itemsize)[:, 14:].any()  # padding goes out as zeros


def test_costmap_iou_scores_depth_above_flat_ground(frame):
    proj = projector()
    k = Camera.for_image(H, W).pinhole().k()
    visible = visible_cells(GRID, proj.pose, CameraModel(k, (H, W)), (H, W))
    scores = CostmapIoU(CITYSCAPES_CLASSES, cost_lut(CITYSCAPES_CLASSES, COSTS, 100))
    scores.add("flat_ground", proj.project(frame.train_ids, (H, W)), frame.topdown, visible)
    scores.add("depth", proj.project_depth(frame.train_ids, (H, W), frame.depth), frame.topdown, visible)
    report = scores.report()
    assert report["frames"] == {"flat_ground": 1, "depth": 1}
    for key in ("car", "person", "lethal"):
        assert report["depth"][key] > 0.8 and report["flat_ground"][key] < 0.2, (key, report)
    assert report["depth"]["road"] > 0.6 and report["flat_ground"]["road"] > 0.6
    # the truth on another grid geometry comes back cell for cell where the centres agree
    coarse = GridSpec(resolution=0.3, size_x=15.9, size_y=12.0, origin_x=0.0, origin_y=-6.0)
    truth = np.where(frame.topdown == 255, -1, frame.topdown).astype(np.int8)
    resampled = resample_truth(truth, GRID.resolution, GRID.origin_x, GRID.origin_y, coarse)
    np.testing.assert_array_equal(resampled, frame.topdown[1::3, 1::3])


@pytest.mark.parametrize("output_resolution", ["camera", "model"])
def test_a_points_only_frame_computes_no_mask_and_the_cloud_it_had(tiny_onnx, output_resolution):
    """seg_node with only semantic_points subscribed: the pipeline no longer resizes labels and confidence to the
    camera, and the cloud equals the one built from the mask and confidence it used to compute (a real model)."""
    from seg_perception.backends.onnxruntime_backend import OnnxRuntimeBackend
    from seg_perception.core.pipeline import OutputRequest, SegPipeline

    cam_hw = (96, 160)  # the model runs at 64x128: another size and aspect
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, cam_hw + (3,), dtype=np.uint8)
    depth = rng.uniform(0.5, 30.0, (48, 80)).astype(np.float32)
    proj, reference = projector(), projector()
    for p in (proj, reference):
        p.set_intrinsics(Camera.for_image(*cam_hw).pinhole().k(), cam_hw)
    with OnnxRuntimeBackend(str(tiny_onnx), threads=1) as backend:
        pipeline = SegPipeline(backend, output_resolution, proj, points_stride=3)
        result = pipeline.process(rgb, OutputRequest(mask=False, points=True), depth_source=lambda: depth)
        assert result.mask is None and result.confidence is None and result.points is not None
        cloud, cloud_hw = result.points.copy(), result.points_hw
        outputs = pipeline.process(rgb, OutputRequest(mask=True, confidence=True))
        assert outputs.mask.shape == (cam_hw if output_resolution == "camera" else (64, 128))
        want, want_hw = reference.points(outputs.mask, outputs.confidence, cam_hw, depth, 3)
    assert cloud_hw == want_hw and same_points(cloud, want)
    assert len(np.unique(cloud["label"])) > 1 and len(np.unique(cloud["confidence"])) > 1
