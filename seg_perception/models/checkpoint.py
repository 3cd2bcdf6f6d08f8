"""Load official checkpoints (mmseg .pth, detectron2 .pkl) into zoo models, and write/read key fixtures.

Module names mirror the official ones, so loading is a key-for-key copy after unwrapping the container:
mmseg `{'state_dict': ...}`, detectron2 `{'model': ...}` (numpy arrays in a pickle), plain state dicts, and
DataParallel `module.` prefixes. Keys that only training uses (a segmentor's `training_only_prefixes`, e.g.
detectron2's `criterion.*`) are skipped and listed; every other difference is reported by name, and `strict`
turns any into an error.

Files are read without running code: `.pth` through `torch.load(weights_only=True)`, `.pkl` through an
unpickler that admits only numpy arrays, plain containers and numbers. Anything else is refused unless the
caller passes `trusted=True` (the CLI's `--trust-checkpoint`, seg_node's `trust_checkpoint`).
"""

from __future__ import annotations

import importlib
import json
import logging
import pickle
import re
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
TRUST_HINT = ("if you trust the file, pass --trust-checkpoint (export, train; seg_node: trust_checkpoint:=true) to "
              "unpickle it in full, which runs any code it holds; eval and bench take the exported ONNX file")
# The only globals a weights pickle needs: numpy's array, scalar and dtype constructors (module, name).
_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                  ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}


class CheckpointError(UsageError, RuntimeError):
    """A checkpoint that is missing, unreadable, refused or does not fit the model; the message says which."""

    def __init__(self, message: str, report: "LoadReport | None" = None) -> None:
        super().__init__(message)
        self.report = report  # what did not match, when the file was read but does not fit the model


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)  # matching keys (copied unless strict failed)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, model shape, file shape)
    optional_missing: list[str] = field(default_factory=list)  # missing but harmless (OPTIONAL_KEY_SUFFIXES)
    skipped: list[str] = field(default_factory=list)  # training-only keys in the file (criterion.*, ...)

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
        if self.skipped:
            lines.append(part("skipped, used only in training", self.skipped))
        return "\n".join(lines)


def read_state_dict(source: str | Path | Mapping, trusted: bool = False) -> dict[str, torch.Tensor]:
    """The flat tensor dict inside an official checkpoint file or container dict."""
    obj = read_file(Path(source), trusted) if isinstance(source, (str, Path)) else source
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


def _admitted_global(module: str, name: str):
    """The numpy constructor a weights pickle may name, or None for anything else."""
    if module in ("numpy.dtypes", "numpy") and name.endswith("DType"):  # numpy 2's dtype classes
        module = "numpy.dtypes"
    elif (module, name) not in _NUMPY_GLOBALS:
        return None
    # numpy 2 moved numpy.core to numpy._core; files written by either name the one their numpy had.
    for candidate in (module.replace("numpy.core", "numpy._core"), module):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    return None


class _WeightsUnpickler(pickle.Unpickler):
    """Admits numpy arrays, plain containers and numbers; any other global (a class, a function such as
    os.system) is refused before it is looked up, so nothing in the file runs."""

    def find_class(self, module: str, name: str):
        found = _admitted_global(module, name)
        if found is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not an array or plain data")
        return found


def _safe_globals() -> list:
    """What torch's weights_only loader must also admit for numpy arrays (mmcv puts them in `meta`)."""
    dtypes = importlib.import_module("numpy.dtypes")
    found = [_admitted_global(m, n) for m, n in _NUMPY_GLOBALS]
    return [g for g in found if g is not None] + [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]


def read_file(path: Path, trusted: bool = False):
    """The object in a checkpoint file, unpickled without running code unless `trusted`."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".pkl":
            # detectron2 model zoo: a pickle of numpy arrays (written by Python 2 for the oldest files)
            with path.open("rb") as f:
                if trusted:
                    return pickle.load(f, encoding="latin1")
                return _WeightsUnpickler(f, encoding="latin1").load()
        if trusted:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if trusted:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
        # torch's message is a page of advice; the offending global is the part worth one line
        found = re.search(r"(?:GLOBAL |global ')([\w.]+)", str(exc))
        if not found:  # no object refused: the bytes are not a pickle we can read
            raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch or pickle file") from None
        raise CheckpointError(f"refused to load {path}: it holds more than arrays and plain data (global "
                              f"'{found.group(1)}'); {TRUST_HINT}") from None
    except (EOFError, RuntimeError, ValueError) as exc:  # truncated or not a checkpoint at all
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def load_checkpoint(model: nn.Module, source: str | Path | Mapping, strict: bool = True,
                    trusted: bool = False) -> LoadReport:
    """Copy matching tensors from `source` into `model`; with `strict`, raise listing every difference.
    `trusted` allows full unpickling of a file holding more than arrays and plain data."""
    ckpt = read_state_dict(source, trusted)
    own = model.state_dict()
    report = LoadReport()
    training_only = tuple(getattr(model, "training_only_prefixes", ()))
    report.skipped = [k for k in ckpt if k not in own and k.startswith(training_only)]
    to_load = {}
    for name, target in own.items():
        if name not in ckpt:
            (report.optional_missing if name.endswith(OPTIONAL_KEY_SUFFIXES) else report.missing).append(name)
        elif tuple(ckpt[name].shape) != tuple(target.shape):
            report.mismatched.append((name, tuple(target.shape), tuple(ckpt[name].shape)))
        else:
            to_load[name] = ckpt[name]
    report.unexpected = [k for k in ckpt if k not in own and not k.startswith(training_only)]
    report.loaded = list(to_load)
    if strict and not report.ok:
        raise CheckpointError("checkpoint does not match the model (nothing loaded):\n" + report.describe(), report)
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
