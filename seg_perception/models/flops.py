"""Parameter and FLOP counting with the convention the papers' tables use (docs/models.md, "Counting").

fvcore `FlopCountAnalysis` on a traced eval-mode model: 1 multiply-add = 1 FLOP for conv/linear/matmul/einsum
(bias not counted); BatchNorm in eval 2/element; LayerNorm/GroupNorm 5/element; bilinear upsample 4/output
element; adaptive average pool 1/input element; softmax, activations and element-wise adds/multiplies 0.
The final resize to the input size is part of the model, so it is counted; parameters include unused ones
(mmseg's `conv_seg`), as mmcv/fvcore do.

Families with custom operators add their cost rule with `register_flop_handle` from their own module (at import
time); `count_flops` consults that table on every call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Handle = Callable[[list[Any], list[Any]], float]



def _attention_flops(inputs, outputs) -> float:
    """aten::scaled_dot_product_attention (fvcore has no rule): Q K^T and A V as two batched matmuls, which is
    what the bmm-based attention of the papers' era counted."""
    q, k, v = (i.type().sizes() for i in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


# Extra/overriding fvcore handles by aten op name; families add theirs with `register_flop_handle`.
FLOP_HANDLES: dict[str, Handle | None] = {"aten::scaled_dot_product_attention": _attention_flops}

# Ops that cost 0 by the convention; listed so that `FlopCount.uncounted` only shows ops nobody has decided on.
ZERO_COST_OPS = (
    "aten::add", "aten::add_", "aten::sub", "aten::mul", "aten::mul_", "aten::div", "aten::rsub", "aten::neg",
    "aten::softmax", "aten::gelu", "aten::relu", "aten::relu_", "aten::silu", "aten::sigmoid", "aten::exp",
    "aten::tanh", "aten::softplus", "aten::dropout", "aten::feature_dropout", "aten::avg_pool2d",
    "aten::max_pool2d", "aten::pixel_unshuffle", "aten::pixel_shuffle", "aten::clone", "aten::sum",
    "aten::mean", "aten::max", "aten::argmax", "aten::gather", "aten::index", "aten::pad", "aten::constant_pad_nd",
    "aten::cumsum", "aten::masked_fill", "aten::where", "aten::sqrt", "aten::pow", "aten::norm",
    "aten::linalg_vector_norm", "aten::clamp", "aten::clamp_min", "aten::reciprocal", "aten::scatter",
    "aten::fill_", "aten::zero_", "aten::copy_", "aten::log", "aten::lt", "aten::gt", "aten::ge", "aten::le",
    "aten::eq", "aten::ne", "aten::bitwise_not", "aten::__and__", "aten::__or__", "aten::abs", "aten::cos",
    "aten::sin", "aten::floor_divide", "aten::remainder", "aten::all", "aten::any",
)


def register_flop_handle(op_name: str, fn: Handle | None) -> None:
    """Count `op_name` (e.g. "aten::upsample_bicubic2d") with `fn(inputs, outputs) -> flops`; None = 0.

    `fn` receives fvcore's JIT values; `fvcore.nn.jit_handles.get_shape(v)` gives a shape.
    """
    FLOP_HANDLES[op_name] = fn


@dataclass
class FlopCount:
    gflops: float
    by_operator: dict[str, float] = field(default_factory=dict)  # GFLOPs per fvcore operator class
    by_module: dict[str, float] = field(default_factory=dict)  # GFLOPs per top-level child (backbone, head)
    uncounted: dict[str, int] = field(default_factory=dict)  # ops without a rule -> occurrences (counted as 0)


def count_params_m(model: nn.Module) -> float:
    """All parameters (trainable or not, used or not) in millions; buffers excluded."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def count_flops(model: nn.Module, input_hw: tuple[int, int], in_channels: int = 3) -> FlopCount:
    """Count one forward of `model` on a 1 x in_channels x H x W input in eval mode (the model is left in eval)."""
    from fvcore.nn import FlopCountAnalysis

    model.eval()
    x = torch.zeros(1, in_channels, *input_hw)
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        analysis.set_op_handle(**{op: None for op in ZERO_COST_OPS})
        analysis.set_op_handle(**FLOP_HANDLES)
        total = analysis.total()
        by_op = {k: v / 1e9 for k, v in analysis.by_operator().items()}
        by_module = {k: v / 1e9 for k, v in analysis.by_module().items() if k and "." not in k}
        uncounted = dict(analysis.unsupported_ops())
    return FlopCount(total / 1e9, by_op, by_module, uncounted)


def count_gflops(model: nn.Module, input_hw: tuple[int, int], in_channels: int = 3) -> float:
    """GFLOPs (1 MAC = 1 FLOP) of one forward at `input_hw`; see `count_flops` for the breakdown."""
    return count_flops(model, input_hw, in_channels).gflops
