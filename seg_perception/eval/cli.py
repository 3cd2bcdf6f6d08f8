"""`seg-perception eval cityscapes|folder|bag|bags`: score a model (or prediction PNGs) and write report.json, report.md
and report_confusion.png. Bad input exits non-zero with the problem on stderr and writes no report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seg_perception.backends import BACKENDS
from seg_perception.eval import EvalError
from seg_perception.eval.inference import MODES, InferenceConfig
from seg_perception.eval.metrics import ID_FORMATS, pred_format_mismatch
from seg_perception.eval.report import report_paths
from seg_perception.output_files import claim
from seg_perception.progress import progress_bar
from seg_perception.sizes import parse_hw


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated scales such as 0.75,1.0,1.25, got '{text}'")
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"scales must be positive, got '{text}'")
    return values


def _model_arguments(p: argparse.ArgumentParser, threads_help: str,
                     out_help: str = "report.json path; .md and _confusion.png go beside it",
                     overwrite: bool = True) -> None:
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--threads", type=int, default=0, help=threads_help)
    p.add_argument("--out", required=True, type=Path, help=out_help)
    if overwrite:
        p.add_argument("--overwrite", action="store_true",
                       help="replace output files that already exist (never through a symbolic link)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    cs = sub.add_parser("cityscapes", help="a folder in the official Cityscapes layout",
                        description="Evaluate on <root>/leftImg8bit/<split> against gtFine/<split>, like "
                                    "cityscapesscripts' evalPixelLevelSemanticLabeling.")
    cs.add_argument("--root", required=True, type=Path, help="folder holding leftImg8bit/ and gtFine/")
    cs.add_argument("--split", default="val")
    source = cs.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="ONNX file, TensorRT engine, or zoo name[:checkpoint]")
    source.add_argument("--predictions", type=Path, help="folder of label PNGs <city>_<seq>_<frame>*.png")
    cs.add_argument("--pred-format", default="labelIds", choices=ID_FORMATS,
                    help="ids in the --predictions PNGs (the official format is labelIds)")
    _inference_arguments(cs)
    cs.add_argument("--no-instances", action="store_true", help="skip iIoU even where instanceIds exist")
    _model_arguments(cs, "inference threads per process (0 = backend default; 1 when --workers > 1)")

    folder = sub.add_parser("folder", help="a folder of images and one of label PNGs in the model's own classes",
                            description="Score a model on <labels>/<key><label suffix> against <images>/<key><image "
                                        "suffix> (keys: paths below each folder), label values being the model "
                                        "card's class ids (255 = ignore), as mmsegmentation's custom datasets. "
                                        "Reports per-class IoU under the card's class names.")
    folder.add_argument("--images", required=True, type=Path, help="folder of camera images")
    folder.add_argument("--labels", required=True, type=Path, help="folder of single-channel label PNGs")
    folder.add_argument("--model", required=True, help="ONNX file, TensorRT engine, or zoo name[:checkpoint]")
    folder.add_argument("--image-suffix", default="",
                        help="what follows the key in an image's name (default: .png, .jpg or .jpeg)")
    folder.add_argument("--label-suffix", default=".png", help="what follows the key in a label's name")
    folder.add_argument("--reduce-zero-label", action="store_true",
                        help="label 0 is 'ignore' and the others are one above the class id (ADE20K's annotations)")
    _inference_arguments(folder)
    _model_arguments(folder, "inference threads per process (0 = backend default; 1 when --workers > 1)")

    bag = sub.add_parser("bag", help="a rosbag2 (sqlite3 or mcap) with images and ground truth",
                         description="Run seg_node's pipeline on every frame of a bag and score the frames whose "
                                     "stamp matches ground truth.")
    bag.add_argument("bag", type=Path, help="bag folder (metadata.yaml + .db3/.mcap)")
    _bag_arguments(bag)
    bag.add_argument("--write-bag", type=Path, help="new bag with masks, colour masks and costmaps")
    bag.add_argument("--write-storage", default="mcap", choices=("sqlite3", "mcap"))
    bag.add_argument("--trace", type=Path, help="write the stage trace: .json (Chrome/Perfetto), .csv or .png")
    _model_arguments(bag, "inference threads (0 = backend default)")

    bags = sub.add_parser("bags", help="many bags, in one process or on Ray (local or a cluster)",
                          description="Score every bag under PATH... as `eval bag` does, one task per bag (or per "
                                      "--slice-seconds of a long bag). DIR gets report.json, report.md (totals, "
                                      "a row per bag, worst first, failed bags listed) and bags/<name>.json per bag.")
    bags.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                      help="bag folders, .mcap / .db3 files, or folders searched for them recursively")
    _bag_arguments(bags)
    where = bags.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=0, metavar="N",
                       help="run on a local Ray started in this process with N CPUs (the [fleet] extra); "
                            "0: in one process, without Ray")
    where.add_argument("--ray", default="", metavar="ADDRESS",
                       help="join the Ray cluster at ADDRESS, as `ray start` prints it on the head machine")
    bags.add_argument("--slice-seconds", type=float, default=0.0,
                      help="split bags longer than this into tasks of this much log time (0 = one task per bag)")
    _model_arguments(bags, "inference threads per task (0 = backend default; on Ray 0 means 1), and the CPUs Ray "
                           "reserves for a task", out_help="new or empty folder for the reports (DIR)", overwrite=False)


def _inference_arguments(p: argparse.ArgumentParser) -> None:
    """How images are run through the model, and by how many processes (cityscapes and folder)."""
    p.add_argument("--mode", default="whole", choices=MODES,
                   help="whole: image resized to the model input, as seg_node runs; slide: model-size windows "
                        "over the full-resolution image")
    p.add_argument("--scales", type=_scales, default=(1.0,), help="multi-scale TTA, e.g. 0.75,1.0,1.25")
    p.add_argument("--flip", action="store_true", help="horizontal-flip TTA")
    p.add_argument("--stride", type=parse_hw, help="slide step HxW (default 2/3 of the model input)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")


def _bag_arguments(p: argparse.ArgumentParser) -> None:
    """What `eval bag` and `eval bags` share: topics, ground truth, model, stamp matching, costmaps."""
    p.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    gt = p.add_mutually_exclusive_group(required=True)
    gt.add_argument("--gt-topic", help="mono8 Image topic of the model's class ids (255 = ignore)")
    gt.add_argument("--gt-dir", type=Path, help="folder of <stamp_ns>.png images of the model's class ids")
    p.add_argument("--model", default="", help="ONNX file, TensorRT engine or zoo name (default: embedded model)")
    p.add_argument("--stamp-tolerance-ms", type=float, default=1.0,
                   help="largest image/ground-truth header stamp difference that still matches")
    p.add_argument("--camera-info-topic", default="/camera/camera_info", help="intrinsics for costmaps")
    p.add_argument("--params-file", type=Path,
                   help="seg_node parameters YAML (camera pose, grid, cost table) for costmaps")
    p.add_argument("--depth-topic", default="/camera/depth/image_raw",
                   help="registered depth (16UC1/32FC1): scores depth-built costmaps beside flat-ground ones")
    p.add_argument("--topdown-topic", default="/camera/semantic_gt_topdown",
                   help="true top-down map (OccupancyGrid of train ids): scores the costmaps when in the bag")


def run(args: argparse.Namespace) -> int:
    from seg_perception.backends import BackendError
    from seg_perception.core.image_codec import ImageDecodeError

    try:  # before any work: outputs that exist, links and unwritable folders
        if args.dataset == "bags":
            return _bags(args)  # --out is a folder, new or empty: _bags checks it
        claim(report_paths(args.out) + ([args.trace] if getattr(args, "trace", None) else []), args.overwrite)
        return {"cityscapes": _cityscapes, "folder": _folder, "bag": _bag}[args.dataset](args)
    except (EvalError, BackendError, ImageDecodeError, ValueError, OSError) as exc:
        print(f"seg-perception eval {args.dataset}: error: {exc}", file=sys.stderr)
        return 2


def _progress(args: argparse.Namespace, total: int, unit: str):
    return progress_bar(total, unit, quiet=args.quiet)


def _job_options(args: argparse.Namespace) -> dict:
    """The ImageJob fields the cityscapes and folder commands share."""
    if args.workers < 1:
        raise EvalError("--workers must be >= 1")
    threads = args.threads or (1 if args.workers > 1 else 0)
    return {"model": args.model or "", "backend": args.backend, "threads": threads,
            "inference": InferenceConfig(args.mode, args.scales, args.flip, args.stride)}


def _run_images(args: argparse.Namespace, job, source: dict):
    """Check the job's model (opened once here, so a bad one fails before workers start), run the job with a
    progress bar; returns build_report's first four arguments: stats, durations, `source` and `model` blocks."""
    from seg_perception.eval.image_eval import evaluate
    from seg_perception.eval.report import model_identity

    model = None
    if job.predictions is None:
        from seg_perception.backends import open_backend

        with open_backend(job.model, job.backend, **({"threads": job.threads} if job.threads else {})) as backend:
            model = model_identity(job.model, backend.info)
            job.check_model(backend.info)
    bar = _progress(args, len(job.samples), "img")

    def progress(results, _total):
        for result in results:
            bar.update()
            yield result

    with bar:
        stats, durations = evaluate(job, args.workers, progress)
    source.update(mode=args.mode, scales=list(args.scales), flip=args.flip, workers=args.workers)
    return stats, durations, source, model


def _write(report_args, args: argparse.Namespace) -> int:
    from seg_perception.eval.report import build_report, write_report

    report, scored = build_report(*report_args)
    paths = write_report(report, scored, args.out)
    _print_summary(report, paths)
    return 0


def _cityscapes(args: argparse.Namespace) -> int:
    from seg_perception.eval.cityscapes import CityscapesJob, find_samples, match_predictions

    options = _job_options(args)
    samples = find_samples(args.root, args.split, need_images=args.predictions is None)
    preds = match_predictions(args.predictions, samples) if args.predictions is not None else None
    job = CityscapesJob(samples, preds, args.pred_format, instances=not args.no_instances, **options)
    source = {"dataset": "cityscapes", "root": str(args.root), "split": args.split,
              "predictions": str(args.predictions) if preds is not None else None,
              "pred_format": args.pred_format if preds is not None else "trainIds"}
    stats, durations, source, model = _run_images(args, job, source)
    if preds is not None and (mismatch := pred_format_mismatch(stats, args.pred_format)):
        raise EvalError(f"predictions in '{args.predictions}' scored as --pred-format {args.pred_format}: {mismatch}")
    return _write((stats, durations, source, model), args)


def _folder(args: argparse.Namespace) -> int:
    from seg_perception.eval.folder import FolderJob, find_samples

    options = _job_options(args)
    samples = find_samples(args.images, args.labels, args.image_suffix, args.label_suffix)
    job = FolderJob(samples, reduce_zero_label=args.reduce_zero_label, **options)
    source = {"dataset": "folder", "images": str(args.images), "labels": str(args.labels),
              "image_suffix": args.image_suffix, "label_suffix": args.label_suffix,
              "reduce_zero_label": args.reduce_zero_label}
    return _write(_run_images(args, job, source), args)


def _bag(args: argparse.Namespace) -> int:
    from seg_perception.eval.bag_eval import BagEvalConfig, evaluate_bag, report_source
    from seg_perception.eval.report import model_identity

    config = BagEvalConfig(args.bag, args.image_topic, args.gt_topic or "", args.gt_dir, args.model, args.backend,
                           args.threads, args.stamp_tolerance_ms, args.camera_info_topic, args.write_bag,
                           args.write_storage, args.params_file, args.depth_topic, args.topdown_topic)
    bar = None

    def on_frame(total: int) -> None:
        nonlocal bar
        bar = bar or _progress(args, total, "frame")
        bar.update()

    try:
        result = evaluate_bag(config, on_frame)
    finally:
        if bar is not None:
            bar.close()
    if args.trace:
        from seg_perception.core.trace_export import write_trace

        write_trace(result.tracer, args.trace, title=f"eval bag {args.bag}, model {result.model_info.name}")
    source = report_source(config, result.num_frames, result.unmatched_frames, result.unmatched_gt)
    extra = {"costmap_iou": result.costmap_iou.report()} if result.costmap_iou is not None else None
    return _write((result.stats, result.tracer.durations_ms(), source, model_identity(args.model, result.model_info),
                   extra), args)


def _bags(args: argparse.Namespace) -> int:
    from seg_perception.eval.bag_eval import BagEvalConfig
    from seg_perception.eval.fleet import check_out_dir, evaluate_fleet, find_bags, plan_fleet, write_fleet_reports

    if args.workers < 0 or args.slice_seconds < 0:
        raise EvalError("--workers and --slice-seconds must be >= 0")
    check_out_dir(args.out)  # before the run, not after hours of it
    config = BagEvalConfig(Path(), args.image_topic, args.gt_topic or "", args.gt_dir, args.model, args.backend,
                           args.threads, args.stamp_tolerance_ms, args.camera_info_topic,
                           params_file=args.params_file, depth_topic=args.depth_topic,
                           topdown_topic=args.topdown_topic)
    plans = plan_fleet(find_bags(args.paths), config, args.slice_seconds)
    bar = _progress(args, sum(p.frames for p in plans), "frame")

    def on_result(result, bags_done: int) -> None:
        bar.update(result.frames)
        bar.set_postfix_str(f"bags {bags_done}/{len(plans)}", refresh=False)

    try:
        with bar:
            result = evaluate_fleet(config, plans, args.workers, args.ray, on_result)
    except KeyboardInterrupt:
        print("seg-perception eval bags: interrupted; the tasks it started were stopped and no report was written",
              file=sys.stderr)
        return 130
    report, paths = write_fleet_reports(result, args.out)
    failed = [b for b in result.bags if b.error is not None]
    for b in failed:
        print(f"failed: {b.plan.path}: {b.error}", file=sys.stderr)
    _print_summary(report, paths)
    print(f"{len(result.bags) - len(failed)} of {len(result.bags)} bags scored ({result.runner})")
    return 1 if failed else 0


def _print_summary(report: dict, paths: list[Path]) -> None:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}"

    e2e = report["latency_ms"].get("end_to_end")
    print(f"mIoU {pct(report['miou'])}  category IoU {pct(report['mean_category_iou'])}  iIoU {pct(report['iiou'])}"
          f"  pixel acc {pct(report['pixel_accuracy'])}  on {report['num_images']} images"
          + (f"; pipeline p50 {e2e['p50']:.1f} ms p99 {e2e['p99']:.1f} ms" if e2e else ""))
    costmap = report.get("costmap_iou")
    if costmap:
        print("costmap IoU (%): " + "; ".join(
            f"{mode} " + ", ".join(f"{k} {pct(v)}" for k, v in costmap[mode].items())
            for mode in costmap if mode != "frames"))
    print("wrote " + ", ".join(map(str, paths)))
