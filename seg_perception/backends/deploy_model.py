"""A zoo model made ready to run: built with a head for its classes (checkpoint loaded), wrapped to take uint8 NHWC
RGB and return labels and confidence, and described by its model card. The torch backend runs it as is; `seg-perception
export` and training write it to ONNX."""

from __future__ import annotations

from seg_perception.backends.base import ModelInfo


def _resize_nhwc_function():
    """`ResizeNHWC.apply(low, image)`: bilinear resize (align_corners=False) of channels-last scores
    (1, h, w, K) to the image's (H, W), exported as one ONNX Resize whose sizes scale axes 1 and 2.

    Eager it is `F.interpolate` on the NCHW view, so both compute the same numbers. The point is the layout
    of the exported tail: the per-pixel class reductions (ArgMax, ReduceMax, ReduceSum) then run over the
    contiguous last axis, which ONNX Runtime's CPU kernels do 3-10x faster than over axis 1 of NCHW (the
    whole tail, 512x1024: 27 vs 81 ms for 19 classes, 155 vs 1525 ms for 150).
    """
    import torch
    import torch.nn.functional as F

    class ResizeNHWC(torch.autograd.Function):
        @staticmethod
        def forward(ctx, low, image, sizes, dynamic):
            size = tuple(image.shape[1:3])
            return F.interpolate(low.permute(0, 3, 1, 2), size=size, mode="bilinear",
                                 align_corners=False).permute(0, 2, 3, 1)

        @staticmethod
        def symbolic(g, low, image, sizes, dynamic):
            n, big_h, big_w, k = sizes  # Python ints: the traced values do not always carry shapes here
            if dynamic:  # sizes = [1, H, W, K] from the image's shape (Shape/Slice/Concat, as F.interpolate)
                shape = g.op("Shape", image)
                hw = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([1])),
                          g.op("Constant", value_t=torch.tensor([3])), g.op("Constant", value_t=torch.tensor([0])))
                sizes = g.op("Concat", g.op("Constant", value_t=torch.tensor([n])), hw,
                             g.op("Constant", value_t=torch.tensor([k])), axis_i=0)
            else:
                sizes = g.op("Constant", value_t=torch.tensor([n, big_h, big_w, k], dtype=torch.int64))
            empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
            return g.op("Resize", low, empty, empty, sizes, mode_s="linear",
                        coordinate_transformation_mode_s="half_pixel", cubic_coeff_a_f=-0.75,
                        nearest_mode_s="floor")

    return ResizeNHWC


def deploy_wrapper(model, info: ModelInfo, with_logits: bool, dynamic: bool = False):
    """`model` wrapped to take uint8 NHWC RGB and return (labels uint8, confidence uint8[, logits]).

    The ONNX export and the torch backend run this same module, so both follow one output contract. In the
    ONNX export, a model with `forward_lowres` (its scores before the final bilinear resize to the input) has
    that resize and the per-pixel class reductions done channels-last (see `_resize_nhwc_function`): the same
    arithmetic, laid out for ONNX Runtime's CPU kernels. Torch eager keeps the model's own NCHW forward.
    """
    import torch
    from torch import nn

    from seg_perception.models.ops import static_shape

    resize_nhwc = _resize_nhwc_function()

    class DeployWrapper(nn.Module):
        """uint8 NHWC RGB -> (labels uint8, confidence uint8[, logits]) around a segmentor."""

        def __init__(self, model: nn.Module, mean, std, with_logits: bool, dynamic: bool) -> None:
            super().__init__()
            self.model = model
            self.with_logits = with_logits
            self.dynamic = dynamic
            self.probabilities = bool(getattr(model, "outputs_probabilities", False))
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, image):
            # Cast first: TensorRT lets UINT8 tensors feed only a Cast (no Transpose, no Shape).
            pixels = image.float()
            x = (pixels.permute(0, 3, 1, 2) - self.mean) * self.inv_std
            low = None
            if torch.onnx.is_in_onnx_export() and hasattr(self.model, "forward_lowres"):
                low = self.model.forward_lowres(x)
            if low is None:
                return self.outputs(self.model(x), dim=1)
            (n, k, _, _), (_, h, w, _) = static_shape(low), static_shape(image)
            sizes = (n, h, w, k)
            scores = resize_nhwc.apply(low.permute(0, 2, 3, 1), pixels, sizes, self.dynamic)  # 1, H, W, K
            return self.outputs(scores, dim=3)

        def outputs(self, logits, dim: int):
            """Labels, confidence (and NCHW logits) from per-class scores along `dim`."""
            top, labels = logits.max(dim=dim)
            if self.probabilities:
                conf = top
            else:
                # max softmax probability = 1 / sum(exp(l - max)): no full softmax tensor is materialised
                conf = torch.reciprocal(torch.exp(logits - top.unsqueeze(dim)).sum(dim=dim))
            outs = (labels.to(torch.uint8), (conf * 255.0).round().clamp(0, 255).to(torch.uint8))
            if not self.with_logits:
                return outs
            return outs + ((logits if dim == 1 else logits.permute(0, 3, 1, 2)),)

    return DeployWrapper(model.eval(), info.mean, info.std, with_logits, dynamic).eval()


def model_info_for(name: str, input_size: tuple[int, int], classes=None, with_logits: bool = False) -> ModelInfo:
    """The model card of zoo model `name` predicting `classes` (a ClassSet; default: the builtin set of the
    variant's size, Cityscapes for 19 and ADE20K for 150)."""
    from seg_perception.classes import default_for
    from seg_perception.models.registry import get_variant
    v = get_variant(name)
    classes = classes or default_for(v.num_classes)
    return ModelInfo(name=name, variant=v.family, input_size=tuple(input_size), class_names=classes.names,
                     palette=classes.palette, has_logits=with_logits)


def build_for_classes(name: str, classes=None, checkpoint: str | None = None, trusted: bool = False):
    """Zoo model `name` with a head for `classes` (default: the variant's builtin set), loaded from `checkpoint`
    when given. Returns (model, classes, load report or None); a checkpoint whose head predicts another number
    of classes is an error that says so."""
    from seg_perception.classes import default_for
    from seg_perception.models.registry import build_model, get_variant

    classes = classes or default_for(get_variant(name).num_classes)
    model = build_model(name, num_classes=len(classes))
    if not checkpoint:
        return model, classes, None
    from seg_perception.models.checkpoint import CheckpointError, load_checkpoint
    try:
        return model, classes, load_checkpoint(model, checkpoint, trusted=trusted)
    except CheckpointError as exc:
        # A head sized for other classes shows as mismatches whose first dimension is the class count
        # (Mask2Former's class_embed has one more: "no object").
        k = len(classes)
        mismatched = exc.report.mismatched if exc.report is not None else []
        found = {file[0] - (own[0] - k) for _, own, file in mismatched
                 if own and own[0] in (k, k + 1) and own[1:] == file[1:]}
        if found:
            raise CheckpointError(f"{checkpoint} predicts {sorted(found)[0]} classes but --classes "
                                  f"{classes.source} has {k}: pass the checkpoint's own classes "
                                  f"(--classes ade20k, cityscapes or a YAML file)") from None
        raise
