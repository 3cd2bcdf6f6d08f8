"""Fleet evaluation: many bags scored by the node's own pipeline (`evaluate_bag`), one task per bag or per time
slice of a long bag. A task returns sums (confusion statistics, latency samples, counts), never images, so the
merge is exact and any split of the work gives the same numbers. Tasks run in this process or on Ray
(fleet_ray.py, the only module that imports ray). Reports are written only once every task has finished.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg_perception.backends import Backend, open_backend
from seg_perception.bags import IMAGE, IMAGE_TYPES, BagReader, gt_dir_index
from seg_perception.core.trace import STAGES
from seg_perception.eval import EvalError
from seg_perception.eval.bag_eval import BagEvalConfig, evaluate_bag, no_match_error, report_source
from seg_perception.eval.class_metrics import stats_for
from seg_perception.eval.costmap_metrics import CostmapIoU
from seg_perception.eval.metrics import Scores
from seg_perception.eval.report import build_report, model_identity, write_report

BAG_FILE_SUFFIXES = (".mcap", ".db3")  # a storage file outside a rosbag2 folder is a bag of its own
_NO_DURATIONS = np.zeros((0, len(STAGES) + 1))  # Tracer.durations_ms layout


def find_bags(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """rosbag2 folders (holding metadata.yaml) and bare .mcap / .db3 files at or under `paths`, sorted."""
    paths = [Path(p) for p in paths]
    found: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise EvalError(f"'{path}' does not exist")
        if path.is_file():
            if path.suffix not in BAG_FILE_SUFFIXES:
                raise EvalError(f"'{path}' is not a bag (a rosbag2 folder, or a .mcap / .db3 file)")
            found.add(Path(os.path.abspath(path)))
            continue
        for folder, dirs, files in os.walk(path):
            if "metadata.yaml" in files:
                found.add(Path(os.path.abspath(folder)))
                dirs.clear()  # its storage files belong to it
            else:
                found.update(Path(os.path.abspath(folder)) / f for f in files if f.endswith(BAG_FILE_SUFFIXES))
    if not found:
        raise EvalError(f"no bags (rosbag2 folders, .mcap or .db3 files) in {', '.join(map(str, paths))}")
    return sorted(found)


@dataclass(frozen=True)
class FleetTask:
    bag: int  # index of the bag in the fleet
    path: Path
    window_ns: tuple[int | None, int | None] | None = None  # log-time slice [start, stop); None: the whole bag


@dataclass
class BagPlan:
    path: Path
    frames: int = 0  # messages on the image topic
    gt_count: int = 0  # ground-truth stamps its frames can match (what `eval bag` counts unmatched_gt against)
    tasks: list[FleetTask] = field(default_factory=list)
    error: str | None = None  # the bag could not be opened or lacks a topic: it gets no task


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, EvalError) else f"{type(exc).__name__}: {exc}"


def slice_windows(log_span_ns: tuple[int, int], slice_ns: int) -> list[tuple[int | None, int | None] | None]:
    """Consecutive log-time windows of slice_ns covering the span; the first and last are open-ended, so every
    message falls in exactly one. [None] (the whole bag) when slice_ns is 0 or the span fits in one."""
    start, end = log_span_ns
    n = math.ceil((end - start) / slice_ns) if slice_ns > 0 else 1
    if n <= 1:
        return [None]
    bounds: list[int | None] = [None, *(start + k * slice_ns for k in range(1, n)), None]
    return list(zip(bounds[:-1], bounds[1:]))


def plan_fleet(bags: list[Path], config: BagEvalConfig, slice_seconds: float = 0.0) -> list[BagPlan]:
    """One plan per bag from its metadata (no message is read): frame and ground-truth counts, and its tasks."""
    gt_files = len(gt_dir_index(config.gt_dir)) if config.gt_dir is not None else 0
    plans = []
    for i, path in enumerate(bags):
        plan = BagPlan(path, gt_count=gt_files)
        try:
            with BagReader(path) as reader:
                reader.topic(config.image_topic, IMAGE_TYPES)
                plan.frames = reader.count(config.image_topic)
                if config.gt_topic:
                    reader.topic(config.gt_topic, (IMAGE,))
                    plan.gt_count = reader.count(config.gt_topic)
                span = reader.log_span_ns
        except Exception as exc:  # unreadable metadata or storage: a row of the report, not the end of the run
            plan.error = _describe(exc)
        else:
            plan.tasks = [FleetTask(i, path, w) for w in slice_windows(span, int(slice_seconds * 1e9))]
        plans.append(plan)
    return plans


@dataclass
class TaskResult:
    """What one task sends back: sums and samples, no images."""

    task: FleetTask
    stats: object = None  # eval.metrics.EvalStats or eval.class_metrics.ClassStats
    durations_ms: np.ndarray = field(default_factory=lambda: _NO_DURATIONS)  # [frames, stages + 1]
    frames: int = 0
    unmatched_frames: int = 0
    matched_gt: frozenset[int] = frozenset()
    costmap_iou: CostmapIoU | None = None  # counts, when the bag has a true top-down map
    seconds: float = 0.0
    error: str | None = None


def run_task(config: BagEvalConfig, task: FleetTask, backend: Backend) -> TaskResult:
    """`evaluate_bag` on the task's bag or slice with an open backend; any failure becomes the result's error."""
    t0 = time.perf_counter()
    try:
        r = evaluate_bag(dataclasses.replace(config, bag=task.path, window_ns=task.window_ns), backend=backend)
    except Exception as exc:  # a corrupt bag fails in many ways (rosbags, mcap, decoding): each is reported
        return TaskResult(task, seconds=time.perf_counter() - t0, error=_describe(exc))
    return TaskResult(task, r.stats, r.tracer.durations_ms(), r.num_frames, r.unmatched_frames, r.matched_gt,
                      r.costmap_iou, time.perf_counter() - t0)


def _merged(total, more):
    """total plus more (statistics with `merge`), where either may be None; total is a copy, never one of the
    results it adds."""
    if more is None:
        return total
    return copy.deepcopy(more) if total is None else total.merge(more)


@dataclass
class BagSummary:
    """A bag's task results added up."""

    plan: BagPlan
    stats: object = None  # the task results' statistics added up
    durations: list[np.ndarray] = field(default_factory=list)
    frames: int = 0
    unmatched_frames: int = 0
    matched_gt: set[int] = field(default_factory=set)
    costmap_iou: CostmapIoU | None = None
    seconds: float = 0.0
    tasks_left: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        self.tasks_left = len(self.plan.tasks)
        self.error = self.plan.error

    def add(self, result: TaskResult) -> None:
        self.tasks_left -= 1
        self.seconds += result.seconds
        if result.error is not None:
            self.error = self.error or result.error  # one failed slice fails the bag: no partial numbers
            return
        self.stats = _merged(self.stats, result.stats)
        self.durations.append(result.durations_ms)
        self.frames += result.frames
        self.unmatched_frames += result.unmatched_frames
        self.matched_gt |= result.matched_gt
        self.costmap_iou = _merged(self.costmap_iou, result.costmap_iou)

    def finish(self, config: BagEvalConfig) -> None:
        """After the last task: a bag whose slices scored nothing fails as `eval bag` fails it."""
        if self.error is None and (self.stats is None or self.stats.num_images == 0):
            self.error = str(no_match_error(config, self.frames, self.plan.gt_count))


@dataclass
class FleetResult:
    config: BagEvalConfig
    bags: list[BagSummary]
    model: dict  # report.model_identity
    runner: str
    class_names: tuple[str, ...]  # the model's


def evaluate_fleet(config: BagEvalConfig, plans: list[BagPlan], workers: int = 0, ray_address: str = "",
                   on_result: Callable[[TaskResult, int], None] | None = None) -> FleetResult:
    """The planned tasks in this process (workers 0, no address), on a local Ray with `workers` CPUs, or on the
    Ray cluster at `ray_address`. on_result(result, bags_done) follows each finished task."""
    tasks = [t for p in plans for t in p.tasks]
    summaries = [BagSummary(p) for p in plans]
    # A model that does not load stops the run here, before any task starts.
    backend = open_backend(config.model, config.backend, **({"threads": config.threads} if config.threads else {}))
    try:
        model, class_names = model_identity(config.model, backend.info), backend.info.class_names
        if workers or ray_address:
            try:
                from seg_perception.eval import fleet_ray
            except ImportError as exc:
                raise EvalError(f"--workers and --ray need Ray: pip install 'seg_perception[fleet]' ({exc})")
            backend.close()  # the workers open their own
            runner = f"ray {ray_address}" if ray_address else f"ray local, {workers} workers"
            results: Iterator[TaskResult] = fleet_ray.run_tasks(config, tasks, workers, ray_address)
        else:
            runner = "in process"
            results = (run_task(config, task, backend) for task in tasks)
        done = sum(s.tasks_left == 0 for s in summaries)
        with closing(results):  # closing early (Ctrl-C) stops the tasks still queued or running
            for result in results:
                summary = summaries[result.task.bag]
                summary.add(result)
                done += summary.tasks_left == 0
                if on_result is not None:
                    on_result(result, done)
    finally:
        backend.close()
    for summary in summaries:
        summary.finish(config)
    return FleetResult(config, summaries, model, runner, class_names)


# --- reports -----------------------------------------------------------------------------------------------
def report_names(paths: list[Path]) -> list[str]:
    """A unique file name per bag: its path below the bags' common folder, '/' -> '__'."""
    root = os.path.commonpath([p.parent for p in paths])
    return [str(p.relative_to(root)).replace(os.sep, "__") for p in paths]


def _bag_report(result: FleetResult, s: BagSummary) -> tuple[dict, Scores]:
    """The report `eval bag` writes for this bag."""
    config = dataclasses.replace(result.config, bag=s.plan.path)
    durations = np.concatenate(s.durations) if s.durations else _NO_DURATIONS
    source = report_source(config, s.frames, s.unmatched_frames, s.plan.gt_count - len(s.matched_gt))
    return build_report(s.stats, durations, source, result.model, _costmap_extra(s.costmap_iou))


def _costmap_extra(costmap_iou: CostmapIoU | None) -> dict | None:
    return {"costmap_iou": costmap_iou.report()} if costmap_iou is not None else None


def fleet_reports(result: FleetResult) -> tuple[tuple[dict, Scores], dict[str, tuple[dict, Scores]]]:
    """The fleet report (totals over the bags that were scored, a row per bag, worst first) and, by file name,
    each scored bag's own report."""
    names = report_names([s.plan.path for s in result.bags])
    per_bag, rows, total, costmap_iou = {}, [], None, None
    for name, s in zip(names, result.bags):
        row = {"bag": str(s.plan.path), "error": s.error, "frames": s.frames, "tasks": len(s.plan.tasks),
               "task_seconds": s.seconds}
        if s.error is None:
            per_bag[name] = _bag_report(result, s)
            report = per_bag[name][0]
            total = _merged(total, s.stats)
            costmap_iou = _merged(costmap_iou, s.costmap_iou)
            row.update(report=f"bags/{name}.json", miou=report["miou"], pixel_accuracy=report["pixel_accuracy"],
                       num_images=report["num_images"], **{k: report["source"][k]
                                                           for k in ("unmatched_frames", "unmatched_gt")})
        rows.append(row)
    rows.sort(key=lambda r: (r["error"] is None, r.get("miou") or 0.0))  # failed, then the lowest mIoU first
    ok = [s for s in result.bags if s.error is None]
    durations = np.concatenate([d for s in ok for d in s.durations] or [_NO_DURATIONS])
    c = result.config
    source = {"dataset": "bags", "image_topic": c.image_topic, "gt": c.gt_topic or str(c.gt_dir),
              "num_bags": len(result.bags), "failed_bags": len(result.bags) - len(ok),
              "num_frames": sum(s.frames for s in ok), "tasks": sum(len(s.plan.tasks) for s in result.bags),
              "runner": result.runner}
    extra = {"bags": rows, **(_costmap_extra(costmap_iou) or {})}
    total = total if total is not None else stats_for(result.class_names)
    return build_report(total, durations, source, result.model, extra), per_bag


def _bag_table(rows: list[dict]) -> str:
    def pct(v):
        return "—" if v is None else f"{100 * v:.2f}"

    lines = ["", "## Bags, worst first", "", "| bag | mIoU (%) | pixel acc (%) | scored | frames | unmatched frames "
             "| unmatched gt |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["error"] is not None:
            lines.append(f"| `{r['bag']}` | failed: {r['error'].replace('|', '/')} ||||||")
        else:
            lines.append(f"| `{r['bag']}` | {pct(r['miou'])} | {pct(r['pixel_accuracy'])} | {r['num_images']} | "
                         f"{r['frames']} | {r['unmatched_frames']} | {r['unmatched_gt']} |")
    return "\n".join(lines) + "\n"


def check_out_dir(out: Path) -> None:
    """Reports go into a new or empty folder, so a run never overwrites one before it."""
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise EvalError(f"'{out}' already exists and is not an empty folder; give a new --out")


def write_fleet_reports(result: FleetResult, out: Path) -> tuple[dict, list[Path]]:
    """DIR/report.json, .md, _confusion.png and DIR/bags/<name>.json, .md; built beside DIR and moved into place
    whole, so an interrupted write leaves nothing."""
    check_out_dir(out)
    (report, scored), per_bag = fleet_reports(result)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        for name, (bag_report, bag_scored) in per_bag.items():
            write_report(bag_report, bag_scored, tmp / "bags" / f"{name}.json", confusion_png=False)
        write_report(report, scored, tmp / "report.json", more_markdown=_bag_table(report["bags"]))
        if out.exists():
            out.rmdir()  # empty, as checked
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # only the folder this call made
        raise
    return report, [out / "report.json", out / "report.md", out / "report_confusion.png", out / "bags"]

