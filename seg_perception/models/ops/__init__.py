"""Exportable replacements for the custom CUDA/Triton operators of the zoo's families.

Each op is plain tensor arithmetic that exports to ONNX opset 17, and is tested against a slow loop written
from the original kernel's definition. Ops whose FLOPs the papers count with a custom fvcore handle run
through a named `torch.autograd.Function` while fvcore traces the model (`counting_trace`), so the handle
registered in `flops.FLOP_HANDLES` sees one node by name instead of the arithmetic inside it.
"""

from __future__ import annotations

import torch


def counting_trace() -> bool:
    """True while a model is traced for FLOP counting (fvcore), false in eager runs and in ONNX export."""
    return torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()
