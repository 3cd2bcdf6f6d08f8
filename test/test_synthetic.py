"""The synthetic street-scene generator: classes, exact and consistent ground truth, layout, drives, bags."""

from __future__ import annotations

import sys
import subprocess

import cv2
import numpy as np
import pytest

from seg_perception.core.costmap import GridSpec
from seg_perception.core.depth_costmap import DepthDecoder
from seg_perception.data.synthetic import (CAMERA_HEIGHT_M, INSTANCE_LABELS, Camera, SyntheticFrame, render_drive,
                                           render_scene, render_street, staged_street, write_cityscapes)
from seg_perception.eval.metrics import LABEL_TO_TRAIN
from seg_perception.labels import CITYSCAPES_CLASSES, IGNORE_ID


@pytest.fixture(scope="module")
def frames() -> list[SyntheticFrame]:
    rng = np.random.default_rng(0)
    return [render_scene(rng, 128, 256) for _ in range(5)]


def test_all_nineteen_classes_and_ignored_regions_appear(frames):
    seen = set().union(*(np.unique(f.train_ids).tolist() for f in frames))
    assert seen == set(range(len(CITYSCAPES_CLASSES))) | {IGNORE_ID}
    label_ids = set().union(*(np.unique(f.label_ids).tolist() for f in frames))
    assert {0, 1, 3} <= label_ids  # unlabeled, ego vehicle, out of roi


def test_frame_types_and_shapes(frames):
    f = frames[0]
    assert f.rgb.shape == (128, 256, 3) and f.rgb.dtype == np.uint8
    assert f.label_ids.shape == f.train_ids.shape == f.instance_ids.shape == (128, 256)
    assert f.label_ids.dtype == f.train_ids.dtype == np.uint8 and f.instance_ids.dtype == np.int32


def test_train_ids_follow_cityscapesscripts_table(frames):
    for f in frames:
        np.testing.assert_array_equal(f.train_ids, LABEL_TO_TRAIN[f.label_ids])


def test_instance_ids_agree_with_labels(frames):
    for f in frames:
        inst, lab = f.instance_ids, f.label_ids
        is_instance = np.isin(lab, list(INSTANCE_LABELS))
        assert (inst[is_instance] >= 1000).all()
        np.testing.assert_array_equal(inst[is_instance] // 1000, lab[is_instance])
        np.testing.assert_array_equal(inst[~is_instance], lab[~is_instance])
    # several distinct cars in one scene, numbered from 0
    cars = np.unique(frames[0].instance_ids[frames[0].label_ids == 26])
    assert len(cars) >= 2 and cars.min() == 26000


def test_classes_have_distinct_appearance(frames):
    """Mean colours per class differ, the premise of a small model learning them."""
    means = {}
    for t in range(len(CITYSCAPES_CLASSES)):
        pix = np.concatenate([f.rgb[f.train_ids == t] for f in frames])
        means[t] = pix.reshape(-1, 3).astype(np.float32).mean(0)
    names = list(means)
    closest = min(np.abs(means[a] - means[b]).sum() for i, a in enumerate(names) for b in names[i + 1:])
    assert closest > 10


def test_render_is_deterministic_per_seed():
    a = render_scene(np.random.default_rng(7), 64, 128)
    b = render_scene(np.random.default_rng(7), 64, 128)
    c = render_scene(np.random.default_rng(8), 64, 128)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    assert (a.label_ids != c.label_ids).mean() > 0.05


def test_drive_is_temporally_coherent():
    drive = list(render_drive(np.random.default_rng(2), 4, 96, 192))
    assert len(drive) == 4
    same = [(a.label_ids == b.label_ids).mean() for a, b in zip(drive, drive[1:])]
    other = render_scene(np.random.default_rng(99), 96, 192)
    assert min(same) > 0.75
    assert (drive[0].label_ids == other.label_ids).mean() < min(same)
    assert any((a.rgb != b.rgb).any() for a, b in zip(drive, drive[1:]))  # the camera does move


def test_cityscapes_layout_is_what_cityscapesscripts_and_the_evaluator_read(tmp_path):
    from cityscapesscripts.helpers.csHelpers import getCsFileInfo

    from seg_perception.eval.cityscapes import find_samples
    from seg_perception.eval.image_eval import read_ids
    written = write_cityscapes(tmp_path, "val", 3, size=(64, 128), seed=5)
    assert len(written) == 3 and all(p.is_file() for p in written)
    samples = find_samples(tmp_path, "val")
    assert [s.image for s in samples] == sorted(written)
    for s in samples:
        info = getCsFileInfo(str(s.gt))
        assert info.type == "gtFine" and info.type2 == "labelIds" and s.key.startswith(info.city)
        label_ids = read_ids(s.gt)
        instance_ids = read_ids(s.instances)
        train_ids = read_ids(s.gt.with_name(s.key + "_gtFine_labelTrainIds.png"))
        assert instance_ids.dtype == np.uint16 and instance_ids.max() >= 1000
        np.testing.assert_array_equal(train_ids, LABEL_TO_TRAIN[label_ids])
        np.testing.assert_array_equal(np.where(instance_ids >= 1000, instance_ids // 1000, instance_ids), label_ids)
        assert cv2.imread(str(s.image)).shape == (64, 128, 3)
    # same seed, same data
    again = write_cityscapes(tmp_path / "again", "val", 1, size=(64, 128), seed=5)
    np.testing.assert_array_equal(cv2.imread(str(again[0])), cv2.imread(str(written[0])))


def test_synth_cli_writes_a_drive_bag(tmp_path):
    from seg_perception.bags import CAMERA_INFO, IMAGE, BagReader, grid_array, mono8_array
    bag = tmp_path / "drive"
    subprocess.run([sys.executable, "-m", "seg_perception.cli", "synth", "--bag", str(bag), "--frames", "3",
                    "--size", "48x96", "--seed", "4"], check=True, timeout=120)
    with BagReader(bag) as reader:
        assert reader.topic("/camera/image_raw", (IMAGE,)) == IMAGE
        assert reader.topic("/camera/camera_info", (CAMERA_INFO,)) == CAMERA_INFO
        assert reader.count("/camera/image_raw") == reader.count("/camera/semantic_gt") == 3
        gt = mono8_array(reader.first("/camera/semantic_gt"))
        info = reader.first("/camera/camera_info")
        depth = reader.first("/camera/depth/image_raw")
        topdown = grid_array(reader.first("/camera/semantic_gt_topdown"))
        assert reader.count("/camera/depth/camera_info") == 3
    expected = next(render_drive(np.random.default_rng(4), 3, 48, 96, topdown=GridSpec()))
    np.testing.assert_array_equal(gt, expected.train_ids)
    assert info.k[0] == pytest.approx(96.0) and info.height == 48
    assert depth.encoding == "16UC1" and (depth.height, depth.width) == (48, 96)
    mm = DepthDecoder().decode(depth.data, depth.encoding, depth.height, depth.width, depth.step)
    np.testing.assert_allclose(mm / 1000, np.where(expected.depth > 65.535, 0, expected.depth), atol=5e-4)
    np.testing.assert_array_equal(topdown, np.where(expected.topdown == IGNORE_ID, -1, expected.topdown.astype(int)))


def test_depth_is_exact_and_the_top_down_map_holds_the_layout():
    """Road depth where the ray through a pixel centre meets the ground; a billboard at its distance; the
    top-down map has the road around the camera and the car's footprint one cell deep at its distance."""
    grid = GridSpec(resolution=0.1, size_x=20.0, size_y=16.0, origin_x=0.0, origin_y=-8.0)
    frame = render_street(staged_street([("car", 1.0, 9.05)], road_half_m=6.0), 120, 240, topdown=grid)
    cam = Camera.for_image(120, 240)
    road = frame.train_ids == CITYSCAPES_CLASSES.index("road")
    rows = np.nonzero(road)[0]
    np.testing.assert_allclose(frame.depth[road], CAMERA_HEIGHT_M * cam.focal / (rows - cam.cy), rtol=1e-5)
    car = frame.train_ids == CITYSCAPES_CLASSES.index("car")
    assert car.any() and np.allclose(frame.depth[car], 9.05)
    assert (frame.depth[frame.train_ids == CITYSCAPES_CLASSES.index("sky")] == 0).all()  # no return
    xs, ys = grid.cell_centres()
    footprint = frame.topdown == CITYSCAPES_CLASSES.index("car")
    assert np.allclose(xs[footprint], 9.05) and ys[footprint].min() < -0.5 and ys[footprint].max() > -1.5
    assert (frame.topdown[(np.abs(ys) < 5.9) & ~footprint] == CITYSCAPES_CLASSES.index("road")).all()
    assert (frame.topdown[np.abs(ys) > 6.1] == IGNORE_ID).all()  # beyond the road: nothing
