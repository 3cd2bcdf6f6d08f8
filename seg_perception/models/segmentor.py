"""mmsegmentation's EncoderDecoder: encoder features -> decode head -> logits resized to the input."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class EncoderDecoder(nn.Module):
    # The deploy wrapper applies softmax to these outputs (Mask2Former's head emits probabilities instead).
    outputs_probabilities = False
    # Official training checkpoints may carry mmseg's auxiliary head, a second head that only adds a loss.
    training_only_prefixes = ("auxiliary_head.",)

    def __init__(self, backbone: nn.Module, decode_head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head

    def forward(self, x):
        return F.interpolate(self.forward_lowres(x), size=x.shape[2:], mode="bilinear", align_corners=False)

    def forward_lowres(self, x):
        """The decode head's logits before the final bilinear resize to the input size (the ONNX export does
        that resize itself, channels-last; see `backends.deploy_model.deploy_wrapper`)."""
        return self.decode_head(self.backbone(x))
