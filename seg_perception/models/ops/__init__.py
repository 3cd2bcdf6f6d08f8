"""Exportable replacements for the custom CUDA/Triton operators of the zoo's families.

Each op is plain tensor arithmetic that exports to ONNX opset 17, and is tested against a slow loop written
from the original kernel's definition. Ops whose FLOPs the papers count with a custom fvcore handle run
through a named `torch.autograd.Function` while fvcore traces the model (`counting_trace`), so the handle
registered in `flops.FLOP_HANDLES` sees one node by name instead of the arithmetic inside it.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from seg_perception.models.flops import register_flop_handle


def counting_trace() -> bool:
    """True while a model is traced for FLOP counting (fvcore), false in eager runs and in ONNX export."""
    return torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()


def static_shape(x: torch.Tensor) -> tuple[int, ...]:
    """`x.shape` as Python ints, also while traced: tables derived from it become constants of a fixed-size
    exported graph (SegMAN's index tables and scan lengths depend on the input size)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return tuple(int(s) for s in x.shape)


def static_hw(x: torch.Tensor) -> tuple[int, int]:
    """Spatial size (last two dims) as Python ints; see `static_shape`."""
    return static_shape(x)[-2:]


# A table constant in a traced graph is an `aten::lift_fresh` node: no arithmetic, 0 by the convention.
register_flop_handle("aten::lift_fresh", None)


def table_constant(table: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A cached numpy table as a fresh tensor: traced, it is recorded as a constant of this call's graph
    (a tensor object reused across traced autograd Functions would not be)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.from_numpy(table).to(device, dtype)
