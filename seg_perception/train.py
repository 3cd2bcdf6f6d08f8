"""`seg-perception train`: train or fine-tune a zoo model on labelled images in the Cityscapes layout.

AdamW with a linear warm-up and a poly learning rate, random scale / crop / flip, cross-entropy that ignores
255, a checkpoint every epoch (resumable), validation mIoU every epoch with the project's Cityscapes metrics,
and an ONNX export of the best weights at the end (`--export`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from seg_perception.deploy.export import add_classes_argument, add_trust_argument
from seg_perception.eval.cityscapes import find_samples
from seg_perception.eval.image_eval import Sample, read_ids, read_rgb
from seg_perception.eval.class_metrics import stats_for
from seg_perception.eval.metrics import LABEL_TO_TRAIN
from seg_perception.labels import IGNORE_ID, IMAGENET_MEAN, IMAGENET_STD
from seg_perception.sizes import parse_hw

TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"


@dataclass
class TrainConfig:
    model: str
    data: str
    out: str = "runs/train"
    epochs: int = 20
    batch_size: int = 8
    crop: tuple[int, int] = (256, 512)
    scale: tuple[float, float] = (0.5, 1.5)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_iters: int = 100
    train_split: str = "train"
    val_split: str = "val"
    input_size: tuple[int, int] = (512, 1024)  # validation and export resolution
    checkpoint: str = ""  # initial weights (official or ours) for fine-tuning
    resume: str = ""  # a last.pth to continue from
    trust_checkpoint: bool = False  # unpickle checkpoint/resume files in full (runs code they hold)
    classes: str = ""  # cityscapes, ade20k or a YAML file; '' = the builtin set of the model's size
    export: str = ""
    logits: bool = False
    threads: int = 0
    seed: int = 0
    max_iters: int = 0  # stop after this many iterations in total (0: run all epochs); for quick checks


@dataclass
class EpochResult:
    epoch: int
    iteration: int
    loss: float
    miou: float | None
    seconds: float


def train_ids_of(sample: Sample) -> np.ndarray:
    """Train ids of a sample: its labelTrainIds PNG when present, else labelIds mapped by cityscapesscripts' table."""
    direct = sample.gt.with_name(sample.key + TRAIN_IDS_SUFFIX)
    return read_ids(direct) if direct.is_file() else LABEL_TO_TRAIN[read_ids(sample.gt)]


def augment(rgb: np.ndarray, train_ids: np.ndarray, crop: tuple[int, int], scale: tuple[float, float],
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random rescale, random crop (padding with ignore when the image is smaller), random horizontal flip."""
    s = rng.uniform(*scale)
    h, w = train_ids.shape
    size = (max(1, round(w * s)), max(1, round(h * s)))
    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
    train_ids = cv2.resize(train_ids, size, interpolation=cv2.INTER_NEAREST)
    ch, cw = crop
    pad_h, pad_w = max(ch - size[1], 0), max(cw - size[0], 0)
    if pad_h or pad_w:
        rgb = cv2.copyMakeBorder(rgb, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
        train_ids = cv2.copyMakeBorder(train_ids, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE_ID)
    y = int(rng.integers(0, train_ids.shape[0] - ch + 1))
    x = int(rng.integers(0, train_ids.shape[1] - cw + 1))
    rgb, train_ids = rgb[y:y + ch, x:x + cw], train_ids[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        rgb, train_ids = rgb[:, ::-1], train_ids[:, ::-1]
    return np.ascontiguousarray(rgb), np.ascontiguousarray(train_ids)


def _to_tensor(rgb: np.ndarray):
    import torch
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (torch.from_numpy(rgb).permute(2, 0, 1).float() - mean) / std


def _dataset_cls():
    from torch.utils.data import Dataset

    class CityscapesCrops(Dataset):
        """Augmented crops of a split; images are read from disk on every access."""

        def __init__(self, samples: list[Sample], crop: tuple[int, int], scale: tuple[float, float], seed: int):
            self.samples, self.crop, self.scale, self.seed = samples, crop, scale, seed
            self.epoch = 0

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, i: int):
            import torch
            rng = np.random.default_rng((self.seed, self.epoch, i))
            s = self.samples[i]
            rgb, ids = augment(read_rgb(s.image), train_ids_of(s), self.crop, self.scale, rng)
            return _to_tensor(rgb), torch.from_numpy(ids.astype(np.int64))

    return CityscapesCrops


def evaluate(model, samples: list[Sample], input_size: tuple[int, int], class_names) -> float | None:
    """mIoU of `model` on `samples`: images resized to input_size, logits resized back to the label size, scored
    as `eval` scores a model of these classes (eval.class_metrics.stats_for)."""
    import torch
    import torch.nn.functional as F
    stats = stats_for(class_names)
    model.eval()
    with torch.inference_mode():
        for s in samples:
            gt = train_ids_of(s)
            rgb = cv2.resize(read_rgb(s.image), input_size[::-1], interpolation=cv2.INTER_LINEAR)
            logits = model(_to_tensor(rgb)[None])
            logits = F.interpolate(logits, size=gt.shape, mode="bilinear", align_corners=False)
            pred = logits.argmax(1)[0].to(torch.uint8).numpy()
            stats.add(gt, pred)
    model.train()
    return stats.scores().miou


def poly_lr(base: float, it: int, total: int, warmup: int, power: float = 1.0) -> float:
    if it < warmup:
        return base * (it + 1) / warmup
    return base * (1.0 - min(it, total) / max(total, 1)) ** power


def train(cfg: TrainConfig) -> list[EpochResult]:
    """Run the training described by cfg; returns one result per epoch run (resumed epochs excluded)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from seg_perception.backends.deploy_model import build_for_classes
    from seg_perception.classes import ClassesError
    from seg_perception.models.checkpoint import load_checkpoint, read_file

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_samples = find_samples(cfg.data, cfg.train_split)
    val_samples = find_samples(cfg.data, cfg.val_split) if cfg.val_split else []

    model, classes, _ = build_for_classes(cfg.model, _classes(cfg))
    if classes.source != "cityscapes":  # labelIds map to Cityscapes train ids only
        without = [x.key for x in train_samples + val_samples
                   if not x.gt.with_name(x.key + TRAIN_IDS_SUFFIX).is_file()]
        if without:
            raise ClassesError(f"with --classes {classes.source}, labels are read as class ids from "
                               f"*{TRAIN_IDS_SUFFIX}; {len(without)} samples have none (first: {without[0]})")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.checkpoint:
        print(load_checkpoint(model, cfg.checkpoint, strict=False, trusted=cfg.trust_checkpoint).describe())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    dataset = _dataset_cls()(train_samples, cfg.crop, cfg.scale, cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=len(dataset) >= cfg.batch_size)
    per_epoch = len(loader)
    total = cfg.epochs * per_epoch if not cfg.max_iters else min(cfg.max_iters, cfg.epochs * per_epoch)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_ID)

    start_epoch, iteration, best = 0, 0, -1.0
    if cfg.resume:
        state = read_file(Path(cfg.resume), cfg.trust_checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, iteration, best = state["epoch"], state["iteration"], state["best_miou"]
        print(f"resumed from {cfg.resume}: epoch {start_epoch}, iteration {iteration}, best mIoU {best:.4f}")

    results = []
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        if iteration >= total:
            break
        dataset.epoch = epoch
        t0, losses = time.perf_counter(), []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True, mininterval=2.0)
        for images, targets in bar:
            lr = poly_lr(cfg.lr, iteration, total, cfg.warmup_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            iteration += 1
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}")
            if iteration >= total:
                break
        bar.close()
        miou = evaluate(model, val_samples, cfg.input_size, classes.names) if val_samples else None
        result = EpochResult(epoch + 1, iteration, float(np.mean(losses)), miou, time.perf_counter() - t0)
        results.append(result)
        if miou is not None and miou > best:
            best = miou
            torch.save({"state_dict": model.state_dict(), "miou": miou, "epoch": epoch + 1}, out / "best.pth")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                    "iteration": iteration, "best_miou": best, "config": asdict(cfg)}, out / "last.pth")
        with open(out / "log.jsonl", "a") as log:
            log.write(json.dumps(asdict(result)) + "\n")
        shown = "n/a" if miou is None else f"{miou:.4f}"
        print(f"epoch {epoch + 1}/{cfg.epochs}  iter {iteration}/{total}  loss {result.loss:.4f}  "
              f"val mIoU {shown}  ({result.seconds:.0f} s)", flush=True)

    if cfg.export:
        export_best(cfg, model, classes)
    return results


def _classes(cfg: TrainConfig):
    from seg_perception.classes import load_classes
    return load_classes(cfg.classes) if cfg.classes else None


def export_best(cfg: TrainConfig, model, classes) -> Path:
    """Export the best weights (or the last ones when nothing was validated) to cfg.export."""
    from seg_perception.backends.deploy_model import model_info_for
    from seg_perception.deploy.export import export_onnx
    from seg_perception.models.checkpoint import read_file
    best = Path(cfg.out) / "best.pth"
    if best.is_file():
        model.load_state_dict(read_file(best)["state_dict"])
    info = model_info_for(cfg.model, cfg.input_size, classes, with_logits=cfg.logits)
    path = export_onnx(model, info, cfg.export, with_logits=cfg.logits)
    print(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB, input {cfg.input_size[0]}x{cfg.input_size[1]})")
    return path


def _range(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    return float(lo), float(hi or lo)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig("", "")
    p.add_argument("model", help="zoo name (see `seg-perception zoo`)")
    p.add_argument("--data", required=True, help="root of leftImg8bit/ and gtFine/ (Cityscapes layout)")
    p.add_argument("--out", default=d.out, help="folder for last.pth, best.pth and log.jsonl")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--crop", type=parse_hw, default=d.crop, help="HxW of the training crops")
    p.add_argument("--scale", type=_range, default=d.scale, help="random rescale range LO,HI")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate (poly decay to 0)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-iters", type=int, default=d.warmup_iters)
    p.add_argument("--train-split", default=d.train_split)
    p.add_argument("--val-split", default=d.val_split, help="'' to skip validation")
    p.add_argument("--input-size", type=parse_hw, default=d.input_size, help="HxW for validation and export")
    p.add_argument("--checkpoint", default="", help="initial weights, e.g. an official checkpoint to fine-tune")
    p.add_argument("--resume", default="", help="continue from a last.pth")
    add_classes_argument(p)
    add_trust_argument(p)
    p.add_argument("--export", default="", help="write the best weights as ONNX to this path at the end")
    p.add_argument("--logits", action="store_true", help="exported graph also outputs logits")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-iters", type=int, default=d.max_iters, help="stop after this many iterations (0: all)")


def run(args) -> int:
    fields = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    results = train(cfg)
    scored = [r.miou for r in results if r.miou is not None]
    if scored:
        print(f"best val mIoU {max(scored):.4f}")
    return 0 if all(math.isfinite(r.loss) for r in results) else 1
