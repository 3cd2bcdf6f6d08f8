"""Load official checkpoints (mmseg .pth, detectron2 .pkl) into zoo models, and write/read key fixtures.

Module names mirror the official ones, so loading is a key-for-key copy after unwrapping the container:
mmseg `{'state_dict': ...}`, detectron2 `{'model': ...}` (numpy arrays in a pickle), plain state dicts, and
DataParallel `module.` prefixes. Every difference is reported by name; `strict` turns any into an error.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seg_perception.errors import UsageError

log = logging.getLogger(__name__)

# Containers official training code nests the weights in, tried in order.
NESTING_KEYS = ("state_dict", "model", "state_dict_ema")
# Model keys a checkpoint may lack without harm: mmseg's unused `conv_seg` (absent from re-saved or converted
# files) and BN step counters (absent from pre-1.0 PyTorch files; unused in eval).
OPTIONAL_KEY_SUFFIXES = ("conv_seg.weight", "conv_seg.bias", "num_batches_tracked")


class CheckpointError(UsageError, RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the model; the message says which."""


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)  # matching keys (copied unless strict failed)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, model shape, file shape)
    optional_missing: list[str] = field(default_factory=list)  # missing but harmless (OPTIONAL_KEY_SUFFIXES)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        def part(title: str, items: list) -> str:
            more = f" ... (+{len(items) - limit})" if len(items) > limit else ""
            return f"{title} ({len(items)}): " + ", ".join(map(str, items[:limit])) + more
        lines = [f"{len(self.loaded)} tensors match"]
        if self.missing:
            lines.append(part("missing", self.missing))
        if self.unexpected:
            lines.append(part("unexpected", self.unexpected))
        if self.mismatched:
            lines.append(part("shape mismatch (key, model, file)", self.mismatched))
        if self.optional_missing:
            lines.append(part("absent but optional", self.optional_missing))
        return "\n".join(lines)


def read_state_dict(source: str | Path | Mapping) -> dict[str, torch.Tensor]:
    """The flat tensor dict inside an official checkpoint file or container dict."""
    obj = _read_file(Path(source)) if isinstance(source, (str, Path)) else source
    for key in NESTING_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"no state dict found in checkpoint (got {type(obj).__name__})")
    out = {}
    for name, value in obj.items():
        if isinstance(value, np.ndarray):
            value = torch.as_tensor(value)  # keeps 0-d arrays 0-d (BN step counters)
        elif isinstance(value, (int, float)) and name.endswith("num_batches_tracked"):
            value = torch.tensor(value)
        if isinstance(value, torch.Tensor):
            out[name.removeprefix("module.")] = value
    if not out:
        raise CheckpointError("checkpoint holds no tensors")
    return out


def _read_file(path: Path):
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".pkl":
        # detectron2 model zoo: a pickle of numpy arrays (written by Python 2 for the oldest files)
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # mmcv puts non-tensor objects in `meta`; opening those needs full unpickling, so only trusted files.
        log.warning("%s needs full unpickling (mmcv metadata); loading it as a trusted file", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def load_checkpoint(model: nn.Module, source: str | Path | Mapping, strict: bool = True) -> LoadReport:
    """Copy matching tensors from `source` into `model`; with `strict`, raise listing every difference."""
    ckpt = read_state_dict(source)
    own = model.state_dict()
    report = LoadReport()
    to_load = {}
    for name, target in own.items():
        if name not in ckpt:
            (report.optional_missing if name.endswith(OPTIONAL_KEY_SUFFIXES) else report.missing).append(name)
        elif tuple(ckpt[name].shape) != tuple(target.shape):
            report.mismatched.append((name, tuple(target.shape), tuple(ckpt[name].shape)))
        else:
            to_load[name] = ckpt[name]
    report.unexpected = [k for k in ckpt if k not in own]
    report.loaded = list(to_load)
    if strict and not report.ok:
        raise CheckpointError("checkpoint does not match the model (nothing loaded):\n" + report.describe())
    model.load_state_dict(to_load, strict=False)
    return report


def key_fixture(model: nn.Module) -> dict[str, list[int]]:
    """state_dict key -> shape, in module order: the JSON form every family's fixture file uses."""
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def write_fixture(model: nn.Module, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (f"  {json.dumps(name)}: {json.dumps(shape)}" for name, shape in key_fixture(model).items())
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one key per line: diffs stay readable
    return path


def read_fixture(path: str | Path) -> dict[str, list[int]]:
    return json.loads(Path(path).read_text())
