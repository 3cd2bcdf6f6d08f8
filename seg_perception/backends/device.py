"""Where inference runs: the device names users type ('auto', 'cpu', 'cuda', 'cuda:N') and their checks.

Parsing needs no torch, so the node can reject a misspelt name before any backend is imported; whether a CUDA
device is really there is each backend's question (torch's CUDA runtime, ONNX Runtime's providers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from seg_perception.errors import OptionError

_PATTERN = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


@dataclass(frozen=True)
class Device:
    kind: str  # auto | cpu | cuda
    index: int | None = None  # the N of cuda:N

    @property
    def gpu_index(self) -> int:
        """The GPU that CUDA work goes to: N of cuda:N, else the first."""
        return self.index or 0

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_device(text: str) -> Device:
    """'auto' (a GPU when the backend has one, else the CPU), 'cpu', 'cuda' or 'cuda:N'; OptionError otherwise."""
    match = _PATTERN.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise OptionError(f"device must be auto, cpu, cuda or cuda:N, got '{text}'")
    return Device(match.group(1), None if match.group(2) is None else int(match.group(2)))
