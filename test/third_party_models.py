"""Models whose code nobody here wrote, exported the library's usual way (not a test module).

Hugging Face SegFormer with a tiny random config, exported as its ONNX exporters do it: `pixel_values`
(float NCHW, ImageNet-normalised, every axis dynamic) in, `logits` (1 x K x H/4 x W/4) out.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# Our own five classes, for the tests that check that names and colours reach the node.
OWN_CLASSES = [{"id": 0, "name": "floor", "color": [128, 64, 128]},
               {"id": 1, "name": "wall", "color": [70, 70, 70]},
               {"id": 2, "name": "person", "color": [220, 20, 60]},
               {"id": 3, "name": "obstacle", "color": [0, 0, 142]},
               {"id": 4, "name": "sky", "color": [70, 130, 180]}]


def write_classes(path: Path) -> Path:
    path.write_text(yaml.safe_dump(OWN_CLASSES))
    return path


def segformer_onnx(path: Path, num_labels: int = len(OWN_CLASSES), opset: int = 14) -> Path:
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
                             hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 2, 2],
                             mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=32, num_labels=num_labels)
    model = SegformerForSemanticSegmentation(config).eval()
    dynamic = {"pixel_values": {0: "batch_size", 1: "num_channels", 2: "height", 3: "width"},
               "logits": {0: "batch_size", 1: "num_labels", 2: "height", 3: "width"}}
    with torch.inference_mode():
        torch.onnx.export(model, (torch.randn(1, 3, 64, 96),), str(path), input_names=["pixel_values"],
                          output_names=["logits"], dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    return path
