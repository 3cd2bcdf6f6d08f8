"""Plain helpers shared by the model-family tests (not a test module)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ImageNet statistics, 0..255 in RGB order, as in the official configs (mmseg data_preprocessor, detectron2
# PIXEL_MEAN/STD): written out here rather than read from the code under test, so a wrong value or channel
# order in what the export bakes in fails the comparison.
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] RGB -> float32 [N, 3, H, W] normalised with the ImageNet statistics."""
    mean = torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() - mean) / std


def overfit_steps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int,
                  lr: float = 1e-3) -> tuple[float, float]:
    """Train `model` (logits at input size) on one fixed batch with AdamW; return (first_loss, last_loss).

    A family that learns drives the loss on a few synthetic frames down by far more than chance; one that
    is wired wrongly (detached head, broken gradient path) does not.
    """
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels, ignore_index=255)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses[0], losses[-1]


def synthetic_batch(n: int, h: int, w: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` normalised images whose labels are a function of the pixels (blocks of constant class and colour)."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, num_classes, (n, h // 8 + 1, w // 8 + 1), generator=g)
    labels = cells.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :h, :w]
    palette = torch.randn(num_classes, 3, generator=g)
    images = palette[labels].permute(0, 3, 1, 2).contiguous()
    return images, labels


def export_and_compare(model: nn.Module, name: str, size: tuple[int, int], out_dir, seed: int = 0):
    """Export `model` (registry entry `name`) through the deploy path at `size` with logits, then check it
    against torch (`assert_onnx_matches_torch`); returns the ONNX path."""
    from seg_perception.backends.deploy_model import model_info_for
    from seg_perception.deploy.export import export_onnx

    info = model_info_for(name, size, with_logits=True)
    path = export_onnx(model, info, out_dir / f"{name}.onnx", with_logits=True)
    assert_onnx_matches_torch(model, path, info, seed)
    return path


def assert_onnx_matches_torch(model: nn.Module, onnx_path, info, seed: int = 0) -> None:
    """Run the exported graph (uint8 NHWC in) in ONNX Runtime and `model` in torch on the same random image:
    logits within 1e-3 relative, labels equal on >= 99.9% of pixels."""
    import onnxruntime as ort

    image = np.random.default_rng(seed).integers(0, 256, (1, *info.input_size, 3), dtype=np.uint8)
    labels, _, logits = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"image": image})
    x = normalise(image)
    with torch.no_grad():
        want = model(x)[0].numpy()
    np.testing.assert_allclose(logits[0], want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    assert labels.dtype == np.uint8 and (labels[0] == want.argmax(0)).mean() > 0.999
