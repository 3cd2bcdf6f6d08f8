"""Evaluation reports: report.json (fractions 0..1, null where nothing was scored), a Markdown table beside it and a
confusion-matrix PNG. Files are written only once the evaluation has finished, so a failed run leaves none, and each
through a temporary file renamed into place, so a symbolic link at an output path is replaced, never followed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from seg_perception.core.trace import END_TO_END, STAGES
from seg_perception.eval import EvalError
from seg_perception.eval.metrics import Scores
from seg_perception.output_files import replace_file

_PERCENTILES = (50, 90, 99)


def latency_percentiles(durations_ms: np.ndarray) -> dict[str, dict[str, float]]:
    """[frames, stages + 1] (Tracer.durations_ms layout) -> per stage and end to end: count, mean, p50/p90/p99, max."""
    out = {}
    if durations_ms.size == 0:
        return out
    for i, name in enumerate(STAGES + (END_TO_END,)):
        col = durations_ms[:, i]
        col = col[~np.isnan(col)]
        if col.size == 0:
            continue
        p = np.percentile(col, _PERCENTILES)
        out[name] = {"count": int(col.size), "mean": float(col.mean()),
                     **{f"p{q}": float(v) for q, v in zip(_PERCENTILES, p)}, "max": float(col.max())}
    return out


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_identity(model: str, info) -> dict:
    """ModelInfo name / variant / input size, and the artifact's sha256 when it is a file."""
    from seg_perception.backends import resolve_model

    model = resolve_model(model)  # '' is the embedded default
    path = model.split(":", 1)[1] if ":" in model and not Path(model).is_file() else model  # zoo:checkpoint
    return {"artifact": model, "name": info.name, "variant": info.variant, "input_size": list(info.input_size),
            "has_logits": info.has_logits, "sha256": sha256_file(path) if path and Path(path).is_file() else None}


def build_report(stats, durations_ms: np.ndarray, source: dict, model: dict | None,
                 extra: dict | None = None) -> tuple[dict, Scores]:
    """stats: eval.metrics.EvalStats (Cityscapes) or eval.class_metrics.ClassStats (the model's own classes)."""
    s = stats.scores()
    if s.miou is None:
        raise EvalError(f"the ground truth of the {stats.num_images} scored images has no evaluated pixel (all "
                        f"ignore/void): nothing to score")
    report = {
        "miou": s.miou,
        "per_class_iou": s.per_class_iou,
        "category_iou": s.category_iou,
        "mean_category_iou": s.mean_category_iou,
        "pixel_accuracy": s.pixel_accuracy,
        "iiou": s.iiou,
        "per_class_iiou": s.per_class_iiou,
        "category_iiou": s.category_iiou,
        "mean_category_iiou": s.mean_category_iiou,
        "num_images": stats.num_images,
        "num_instance_images": stats.num_instance_images,
        "classes": list(s.class_names),
        # rows: ground-truth class id, columns: predicted class id
        "confusion_matrix": s.confusion_matrix.tolist(),
        # per ground-truth class: pixels predicted as a label that is not one of the classes
        "ignored_predictions": s.ignored_predictions.tolist(),
        "latency_ms": latency_percentiles(durations_ms),
        "model": model,
        "source": source,
    }
    report.update(extra or {})
    return report, s


def report_paths(out: str | os.PathLike) -> list[Path]:
    """report.json at `out`, <stem>.md and <stem>_confusion.png beside it."""
    out = Path(out)
    return [out, out.with_suffix(".md"), out.with_name(out.stem + "_confusion.png")]


def write_report(report: dict, scored: Scores, out: str | os.PathLike, confusion_png: bool = True,
                 more_markdown: str = "") -> list[Path]:
    """Write the `report_paths(out)` (the PNG only with confusion_png; more_markdown after the Markdown tables),
    report.json last (its presence means the run completed); returns the paths written."""
    paths = report_paths(out)
    replace_file(paths[1], lambda tmp: tmp.write_text(markdown(report) + more_markdown))
    if confusion_png:
        replace_file(paths[2], lambda tmp: write_confusion_png(scored.confusion_matrix, scored.class_names, tmp,
                                                               title=_title(report)))
    else:
        paths.pop(2)
    replace_file(paths[0], lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    return paths


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _title(report: dict) -> str:
    model = report.get("model") or {}
    name = model.get("name") or report["source"].get("predictions", "predictions")
    return f"{name}: mIoU {_pct(report['miou'])} on {report['num_images']} images"


def markdown(report: dict) -> str:
    lines = [f"# {_title(report)}", "", f"Source: `{json.dumps(report['source'])}`", ""]
    cityscapes = bool(report["category_iou"])  # categories and iIoU exist for Cityscapes' classes only
    keys = ("miou", "mean_category_iou", "pixel_accuracy", "iiou", "mean_category_iiou") if cityscapes else \
        ("miou", "pixel_accuracy")
    lines += ["| metric | value (%) |", "|---|---:|"] + [f"| {key} | {_pct(report[key])} |" for key in keys]
    iiou = report["per_class_iiou"]  # instance classes only
    if cityscapes:
        lines += ["", "| class | IoU (%) | iIoU (%) |", "|---|---:|---:|"]
        lines += [f"| {name} | {_pct(iou)} | {_pct(iiou[name]) if name in iiou else ''} |"
                  for name, iou in report["per_class_iou"].items()]
        lines += ["", "| category | IoU (%) |", "|---|---:|"]
        lines += [f"| {name} | {_pct(v)} |" for name, v in report["category_iou"].items()]
    else:
        lines += ["", "| class | IoU (%) |", "|---|---:|"]
        lines += [f"| {name} | {_pct(iou)} |" for name, iou in report["per_class_iou"].items()]
    if report.get("costmap_iou"):
        from seg_perception.eval.costmap_metrics import markdown_rows

        lines += [""] + markdown_rows(report["costmap_iou"])
    if report["latency_ms"]:
        lines += ["", "| stage | count | p50 ms | p90 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {name} | {v['count']} | {v['p50']:.2f} | {v['p90']:.2f} | {v['p99']:.2f} | {v['max']:.2f} |"
                  for name, v in report["latency_ms"].items()]
    return "\n".join(lines) + "\n"


def write_confusion_png(confusion: np.ndarray, class_names, path: str | os.PathLike, title: str = "") -> None:
    """Row-normalised (recall) confusion matrix with class names; the figure grows with the class count (ADE20K's
    150 stay legible), and cells carry their percentage up to 40 classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    n = len(class_names)
    side = max(8.0, 0.16 * n)
    font = 8 if n <= 40 else 5
    fig, ax = plt.subplots(figsize=(side + 1, side), layout="constrained")
    im = ax.imshow(norm, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), class_names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if n <= 40:
        for i, j in zip(*np.nonzero(norm >= 0.01)):
            ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=6,
                    color="black" if norm[i, j] > 0.5 else "white")
    ax.set_title("confusion matrix, rows normalised" + (f": {title}" if title else ""), fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04, label="fraction of ground-truth pixels")
    fig.savefig(path, dpi=100)
    plt.close(fig)
