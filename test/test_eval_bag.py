"""`seg-perception eval bag`: sqlite3 and mcap, Image and CompressedImage, ground truth from a topic or a folder,
--write-bag and --trace; all with the tiny_onnx model through the node's pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import hand_metrics
import numpy as np
import pytest

from seg_perception.bags import BagReader, PinholeCamera, mono8_array, stamp_ns, write_drive_bag
from seg_perception.backends.onnxruntime_backend import OnnxRuntimeBackend
from seg_perception.cli import main
from seg_perception.core.pipeline import SegPipeline

H, W = 72, 144  # camera size, not the model's 64x128
START_NS, RATE = 1_700_000_000_000_000_000, 10.0


def _frames(n: int = 4, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rgb = cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), (7, 7), 0)
        gt = cv2.resize(rng.choice([0, 1, 2, 8, 10, 13, 255], size=(H // 8, W // 8)).astype(np.uint8), (W, H),
                        interpolation=cv2.INTER_NEAREST)
        out.append((rgb, gt))
    return out


def _predictions(model: Path, frames) -> list[np.ndarray]:
    with OnnxRuntimeBackend(str(model), threads=1) as backend:
        pipeline = SegPipeline(backend, "camera")
        return [pipeline.process(rgb).mask.copy() for rgb, _ in frames]


def _eval(bag: Path, out: Path, *extra: str) -> int:
    return main(["eval", "bag", str(bag), "--out", str(out), "--threads", "1", "--quiet", *extra])


@pytest.mark.parametrize("storage, compressed", [("sqlite3", False), ("mcap", True)])
def test_bag_scores_equal_node_pipeline(storage, compressed, tiny_onnx, tmp_path):
    frames = _frames()
    bag = write_drive_bag(tmp_path / "drive", frames, storage=storage, compressed=compressed,
                          compressed_format="png")
    topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    out = tmp_path / "report.json"
    assert _eval(bag, out, "--image-topic", topic, "--gt-topic", "/camera/semantic_gt", "--model",
                 str(tiny_onnx)) == 0
    report = json.loads(out.read_text())
    preds = _predictions(tiny_onnx, frames)  # png is lossless: the same pixels reach the model
    assert np.array_equal(np.asarray(report["confusion_matrix"]), hand_metrics.confusion([g for _, g in frames], preds))
    assert report["num_images"] == 4 and report["source"]["unmatched_frames"] == 0
    assert report["iiou"] is None  # no instance ids in a bag
    lat = report["latency_ms"]
    assert lat["decode"]["count"] == 4 and lat["inference"]["count"] == 4 and lat["end_to_end"]["p99"] > 0


def test_ground_truth_equal_to_prediction_scores_one(tiny_onnx, tmp_path):
    frames = _frames(3, seed=1)
    preds = _predictions(tiny_onnx, frames)
    bag = write_drive_bag(tmp_path / "b", [(rgb, p) for (rgb, _), p in zip(frames, preds)], storage="mcap")
    out = tmp_path / "r.json"
    assert _eval(bag, out, "--image-topic", "/camera/image_raw", "--gt-topic", "/camera/semantic_gt", "--model",
                 str(tiny_onnx)) == 0
    report = json.loads(out.read_text())
    assert report["miou"] == 1.0 and report["pixel_accuracy"] == 1.0


def test_gt_dir_matches_by_stamp_and_counts_unmatched(tiny_onnx, tmp_path):
    frames = _frames()
    bag = write_drive_bag(tmp_path / "b", [(rgb, None) for rgb, _ in frames], compressed=True)  # jpeg
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    period = int(1e9 / RATE)
    for i, (_, gt) in enumerate(frames[:3]):  # the last frame has no ground truth
        cv2.imwrite(str(gt_dir / f"{START_NS + i * period + 300_000}.png"), gt)  # 0.3 ms off: within tolerance
    out = tmp_path / "r.json"
    assert _eval(bag, out, "--image-topic", "/camera/image_raw/compressed", "--gt-dir", str(gt_dir), "--model",
                 str(tiny_onnx)) == 0
    report = json.loads(out.read_text())
    assert report["num_images"] == 3 and report["source"]["unmatched_frames"] == 1
    assert np.asarray(report["confusion_matrix"]).sum() == sum(int((g < 19).sum()) for _, g in frames[:3])
    assert _eval(bag, out, "--image-topic", "/camera/image_raw/compressed", "--gt-dir", str(gt_dir), "--model",
                 str(tiny_onnx), "--stamp-tolerance-ms", "0.1") == 2  # nothing within 0.1 ms


def test_write_bag_and_trace(tiny_onnx, tmp_path):
    frames = _frames(3)
    bag = write_drive_bag(tmp_path / "b", frames, camera_info=PinholeCamera(100.0, 100.0, 71.5, 35.5))
    params = tmp_path / "seg.yaml"
    params.write_text("/**:\n  ros__parameters:\n    camera_pitch: 0.3\n    costmap_size_x: 10.0\n"
                      "    costmap_classes: [road]\n")
    out, written, trace = tmp_path / "r.json", tmp_path / "pred_bag", tmp_path / "trace.json"
    assert _eval(bag, out, "--image-topic", "/camera/image_raw", "--gt-topic", "/camera/semantic_gt", "--model",
                 str(tiny_onnx), "--write-bag", str(written), "--params-file", str(params), "--trace", str(trace)) == 0
    preds = _predictions(tiny_onnx, frames)
    with BagReader(written) as reader:
        assert reader.topics == {
            "/camera/image_raw": "sensor_msgs/msg/Image", "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
            "/semantic_mask": "sensor_msgs/msg/Image", "/semantic_mask/color": "sensor_msgs/msg/Image",
            "/semantic_costmap": "nav_msgs/msg/OccupancyGrid", "/semantic_costmap/road": "nav_msgs/msg/OccupancyGrid"}
        masks = [(stamp_ns(m.header), mono8_array(m)) for _, _, m in reader.messages(["/semantic_mask"])]
        grids = [m for _, _, m in reader.messages(["/semantic_costmap"])]
    assert [s for s, _ in masks] == [START_NS + i * int(1e9 / RATE) for i in range(3)]
    for (_, mask), pred in zip(masks, preds):
        assert np.array_equal(mask, pred)
    assert len(grids) == 3 and grids[0].info.width == 100 and grids[0].info.height == 200
    assert (grids[0].data >= 0).any() and (grids[0].data == -1).any()  # ground seen ahead, unknown elsewhere
    events = json.loads(trace.read_text())["traceEvents"]
    assert sum(e.get("name") == "inference" for e in events) == 3


@pytest.mark.parametrize("args, message", [
    (["--image-topic", "/nope", "--gt-topic", "/camera/semantic_gt"], "has no topic '/nope'"),
    (["--image-topic", "/camera/image_raw", "--gt-topic", "/camera/camera_info"], "is sensor_msgs/msg/CameraInfo"),
    (["--image-topic", "/camera/image_raw", "--gt-dir", "/nonexistent"], "ground-truth folder"),
])
def test_bad_bag_input(args, message, tiny_onnx, tmp_path, capsys):
    bag = write_drive_bag(tmp_path / "b", _frames(1))
    out = tmp_path / "r.json"
    assert _eval(bag, out, "--model", str(tiny_onnx), *args) == 2
    err = capsys.readouterr().err
    assert message in err and not out.exists()
    assert _eval(tmp_path / "missing", out, "--image-topic", "/x", "--gt-topic", "/y") == 2
    assert "does not exist" in capsys.readouterr().err


def test_gt_size_mismatch_is_an_error(tiny_onnx, tmp_path, capsys):
    rgb, gt = _frames(1)[0]
    bag = write_drive_bag(tmp_path / "b", [(rgb, gt)])
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    cv2.imwrite(str(gt_dir / f"{START_NS}.png"), gt[:, :-4])
    assert _eval(bag, tmp_path / "r.json", "--image-topic", "/camera/image_raw", "--gt-dir", str(gt_dir),
                 "--model", str(tiny_onnx)) == 2
    assert "is 140x72 but the image is 144x72" in capsys.readouterr().err


def test_write_drive_bag_round_trip(tmp_path):
    frames = _frames(2)
    bag = write_drive_bag(tmp_path / "b", frames, storage="mcap", rate_hz=20.0)
    with BagReader(bag) as reader:
        assert reader.count("/camera/image_raw") == 2 and reader.count("/camera/camera_info") == 2
        images = [m for _, _, m in reader.messages(["/camera/image_raw"])]
        gts = [mono8_array(m) for _, _, m in reader.messages(["/camera/semantic_gt"])]
        info = reader.first("/camera/camera_info")
    assert images[0].encoding == "rgb8" and stamp_ns(images[1].header) - stamp_ns(images[0].header) == 50_000_000
    assert np.array_equal(np.frombuffer(images[1].data, np.uint8).reshape(H, W, 3), frames[1][0])
    assert all(np.array_equal(g, f[1]) for g, f in zip(gts, frames))
    assert info.width == W and info.k[0] == pytest.approx(0.5 * W / np.tan(np.radians(30)))
    with pytest.raises(Exception, match="already exists"):
        write_drive_bag(bag, frames)


def test_costmaps_scored_against_the_true_top_down_map_in_both_modes(tiny_onnx, tmp_path):
    """A synthetic drive with depth and the true map: report.json and report.md carry flat-ground and depth
    costmap IoU per published layer, over every frame."""
    from seg_perception.core.costmap import GridSpec
    from seg_perception.data.synthetic import CAMERA_HEIGHT_M, Camera, render_drive

    grid = GridSpec()
    frames = render_drive(np.random.default_rng(3), 3, H, W, topdown=grid)
    bag = write_drive_bag(tmp_path / "b", frames, camera_info=Camera.for_image(H, W).pinhole(), topdown_grid=grid)
    params = tmp_path / "seg.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    camera_height: {CAMERA_HEIGHT_M}\n")
    out = tmp_path / "r.json"
    assert _eval(bag, out, "--image-topic", "/camera/image_raw", "--gt-topic", "/camera/semantic_gt", "--model",
                 str(tiny_onnx), "--params-file", str(params)) == 0
    costmap = json.loads(out.read_text())["costmap_iou"]
    assert costmap["frames"] == {"flat_ground": 3, "depth": 3}
    for mode in ("flat_ground", "depth"):
        assert set(costmap[mode]) == {"lethal", "road", "person", "car"}
        assert all(v is None or 0.0 <= v <= 1.0 for v in costmap[mode].values())
    assert "| costmap layer | flat_ground IoU (%) | depth IoU (%) |" in out.with_suffix(".md").read_text()


def test_costmaps_are_scored_and_written_without_ros(no_ros, tiny_onnx, tmp_path):
    """Bag evaluation is a ROS-free driver: with rclpy and the message packages missing it still projects costmaps
    with seg_node's parameters, scores them and writes them under seg_node's topic names (it skipped scoring, and
    --write-bag failed, while the parameters and topic names lived in the ROS driver)."""
    from seg_perception.core.costmap import GridSpec
    from seg_perception.data.synthetic import CAMERA_HEIGHT_M, Camera, render_drive

    env = no_ros()
    blocked = subprocess.run([sys.executable, "-c", "import rclpy"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "rclpy is blocked" in blocked.stderr
    grid = GridSpec()
    frames = render_drive(np.random.default_rng(3), 2, H, W, topdown=grid)
    bag = write_drive_bag(tmp_path / "b", frames, camera_info=Camera.for_image(H, W).pinhole(), topdown_grid=grid)
    params = tmp_path / "seg.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    camera_height: {CAMERA_HEIGHT_M}\n"
                      "    costmap_classes: [road, traffic light]\n")
    out, written = tmp_path / "r.json", tmp_path / "pred_bag"
    proc = subprocess.run([sys.executable, "-m", "seg_perception.cli", "eval", "bag", str(bag), "--image-topic",
                           "/camera/image_raw", "--gt-topic", "/camera/semantic_gt", "--model", str(tiny_onnx),
                           "--params-file", str(params), "--write-bag", str(written), "--threads", "1",
                           "--out", str(out), "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["costmap_iou"]["frames"] == {"flat_ground": 2, "depth": 2}
    layers = ["/semantic_costmap", "/semantic_costmap/road", "/semantic_costmap/traffic_light"]
    with BagReader(written) as reader:
        assert [reader.count(topic) for topic in layers] == [2, 2, 2]


def test_frames_without_a_top_down_map_are_not_kept():
    """A bag with a true map for some frames only: the others' costmaps wait for a map at most a second, so a long
    drive does not pile up every frame's layers in memory (it kept all of them)."""
    from seg_perception.eval.bag_eval import SLICE_MARGIN_NS, _CostmapScoring, node_projector
    from seg_perception.labels import CITYSCAPES_CLASSES

    projector, lut = node_projector({}, CITYSCAPES_CLASSES)
    k = np.array([[100.0, 0, 71.5], [0, 100.0, 35.5], [0, 0, 1]])
    projector.set_intrinsics(k, (H, W))
    scoring = _CostmapScoring(projector, lut, CITYSCAPES_CLASSES, None)
    scoring.intrinsics = (k, (H, W))
    period = int(1e9 / RATE)
    for i in range(40):  # 4 s of frames, none with a map
        scoring.on_frame(START_NS + i * period, np.zeros((H // 2, W // 2), np.uint8), (H, W))
        assert len(scoring.waiting) <= SLICE_MARGIN_NS // period + 1


def test_write_bag_costmaps_are_built_from_depth_when_the_node_uses_depth(tiny_onnx, tmp_path, capsys):
    """With `depth_topic` in the parameters, seg_node builds its costmaps from depth: so does --write-bag, from the
    bag's depth topic (it wrote flat-ground costmaps, which that node never publishes)."""
    from seg_perception.core.depth_costmap import DepthDecoder
    from seg_perception.core.pipeline import OutputRequest
    from seg_perception.data.synthetic import CAMERA_HEIGHT_M, Camera, render_drive
    from seg_perception.eval.bag_eval import node_projector
    from seg_perception.labels import CITYSCAPES_CLASSES

    frames = list(render_drive(np.random.default_rng(5), 2, H, W))
    camera = Camera.for_image(H, W).pinhole()
    bag = write_drive_bag(tmp_path / "b", frames, camera_info=camera)
    overrides = {"camera_height": CAMERA_HEIGHT_M, "depth_topic": "depth/image_raw"}
    params = tmp_path / "seg.yaml"
    params.write_text("/**:\n  ros__parameters:\n" + "".join(f"    {k}: {v}\n" for k, v in overrides.items()))
    written = tmp_path / "pred_bag"
    args = ["--image-topic", "/camera/image_raw", "--gt-topic", "/camera/semantic_gt", "--model", str(tiny_onnx),
            "--params-file", str(params), "--write-bag", str(written)]
    assert _eval(bag, tmp_path / "r.json", *args) == 0
    with BagReader(written) as reader:
        grids = [np.asarray(m.data, np.int8) for _, _, m in reader.messages(["/semantic_costmap"])]
    with BagReader(bag) as reader:
        depths = [m for _, _, m in reader.messages(["/camera/depth/image_raw"])]
    projector, _ = node_projector(overrides, CITYSCAPES_CLASSES)
    projector.set_intrinsics(np.array([[camera.fx, 0, camera.cx], [0, camera.fy, camera.cy], [0, 0, 1]]), (H, W))
    decoder = DepthDecoder()
    with OnnxRuntimeBackend(str(tiny_onnx), threads=1) as backend:
        pipeline = SegPipeline(backend, "camera", projector)
        for frame, msg, grid in zip(frames, depths, grids, strict=True):
            depth = decoder.decode(msg.data, msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian)
            result = pipeline.process(frame.rgb, OutputRequest(costmaps=True), depth_source=lambda: depth)
            assert np.array_equal(grid, result.costmaps[""].ravel())
            assert not np.array_equal(grid, projector.project(result.model_labels, (H, W))[""].ravel())
    assert _eval(write_drive_bag(tmp_path / "no_depth", _frames(1)), tmp_path / "r2.json", *args[:-1],
                 str(tmp_path / "pred2")) == 2
    assert "has no depth topic '/camera/depth/image_raw'" in capsys.readouterr().err


def test_a_damaged_mcap_bag_is_an_error_not_a_score(tiny_onnx, tmp_path, capsys):
    bag = write_drive_bag(tmp_path / "b", _frames(30, seed=1), storage="mcap")
    mcap = next(bag.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()
    mcap.write_bytes(bytes(data))
    out = tmp_path / "r.json"
    assert _eval(bag, out, "--image-topic", "/camera/image_raw", "--gt-topic", "/camera/semantic_gt",
                 "--model", str(tiny_onnx)) == 2
    assert "is damaged: Chunk checksum mismatch" in capsys.readouterr().err and not out.exists()


def test_all_ignore_ground_truth_is_an_error(tiny_onnx, tmp_path, capsys):
    bag = write_drive_bag(tmp_path / "b", [(rgb, np.full_like(gt, 255)) for rgb, gt in _frames(2)])
    assert _eval(bag, tmp_path / "r.json", "--image-topic", "/camera/image_raw", "--gt-topic", "/camera/semantic_gt",
                 "--model", str(tiny_onnx)) == 2
    assert "has no evaluated pixel" in capsys.readouterr().err


def test_depth_pairs_with_the_nearest_image_within_the_nodes_depth_tolerance():
    """Evaluation pairs depth as seg_node does: nearest stamp within depth_tolerance (a RealSense's depth and
    colour stamps differ by milliseconds), not the latest image within the image/ground-truth tolerance."""
    from types import SimpleNamespace

    from seg_perception.core.node_params import PARAMETERS
    from seg_perception.eval.bag_eval import _DepthPairing, node_projector
    from seg_perception.labels import CITYSCAPES_CLASSES

    def depth_msg(ns: int, metres: float):
        header = SimpleNamespace(stamp=SimpleNamespace(sec=ns // 10**9, nanosec=ns % 10**9))
        data = np.full((4, 8), metres, np.float32).tobytes()
        return SimpleNamespace(header=header, data=data, encoding="32FC1", height=4, width=8, step=32,
                               is_bigendian=0)

    ms = 1_000_000
    for overrides, at_150ms in (({}, None), ({"depth_tolerance": 0.06}, 2.0)):
        projector, lut = node_projector(overrides, CITYSCAPES_CLASSES)
        pairing = _DepthPairing("/camera/depth/image_raw", projector.depth.pairing_tolerance_s,
                                PARAMETERS["max_input_pixels"].default)
        for ns, metres in ((0, 1.0), (100 * ms, 2.0), (200 * ms, 3.0)):
            pairing.on_depth(depth_msg(ns, metres))
        assert pairing.paired(95 * ms, (8, 16))[0, 0] == 2.0  # 5 ms before its depth image: still its pair
        assert pairing.paired(188 * ms, (8, 16))[0, 0] == 3.0  # the nearest, not the latest before the frame
        paired = pairing.paired(150 * ms, (8, 16))  # 50 ms from both
        assert (paired if paired is None else paired[0, 0]) == at_150ms


def test_bag_evaluation_takes_the_nodes_rectified_rule(tmp_path):
    """The bag's CameraInfo is read as seg_node would read it: by the image topic's name, or as --params-file says."""
    from seg_perception.eval.bag_eval import BagEvalConfig, _node_parameters, _rectified

    params = tmp_path / "seg.yaml"
    params.write_text('/**:\n  ros__parameters:\n    rectified: "true"\n')
    bag = tmp_path / "b"

    def rectified(config: BagEvalConfig) -> bool:
        return _rectified(_node_parameters(config), config.image_topic)

    assert rectified(BagEvalConfig(bag, "/camera/image_rect", gt_topic="/gt"))
    assert not rectified(BagEvalConfig(bag, "/camera/image_raw", gt_topic="/gt"))
    assert rectified(BagEvalConfig(bag, "/camera/image_raw", gt_topic="/gt", params_file=params))
