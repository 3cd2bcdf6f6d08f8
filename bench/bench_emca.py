"""Masked cross-attention vs EMCA inside Mask2Former R50, one input size, one run.

Times three scopes for both variants, interleaved rep by rep so a busy machine slows both alike:
the 9 cross-attention layers alone (inputs captured from a real forward), the transformer decoder
(`sem_seg_head.predictor`, pixel-decoder outputs precomputed), and the whole model. Prints medians and the
masked/EMCA ratio of each.

    python bench/bench_emca.py [--size 512x512] [--reps 5] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from seg_perception.models.registry import build_model
from seg_perception.sizes import parse_hw

VARIANTS = {"masked": "mask2former-r50", "emca": "mask2former-emca-r50"}


def _captured_cross_attention_inputs(model, levels, mask_features) -> list[tuple]:
    calls = []
    hooks = [layer.register_forward_pre_hook(lambda _m, args: calls.append(args))
             for layer in model.sem_seg_head.predictor.transformer_cross_attention_layers]
    model.sem_seg_head.predictor(levels, mask_features)
    for h in hooks:
        h.remove()
    return calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=parse_hw, default=(512, 512), help="HxW input (ADE20K eval size by default)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    x = torch.randn(1, 3, *args.size, device=device)
    scopes: dict[str, dict] = {}
    with torch.inference_mode():
        for kind, name in VARIANTS.items():
            torch.manual_seed(0)
            model = build_model(name).eval().to(device)
            mask_features, levels = model.sem_seg_head.pixel_decoder(model.backbone(x))
            layers = model.sem_seg_head.predictor.transformer_cross_attention_layers
            calls = _captured_cross_attention_inputs(model, levels, mask_features)
            scopes[kind] = {
                "cross-attention x9": lambda layers=layers, calls=calls: [l(*a) for l, a in zip(layers, calls)],
                "decoder": lambda m=model, lv=levels, mf=mask_features: m.sem_seg_head.predictor(lv, mf),
                "whole model": lambda m=model: m(x),
            }
        times = {kind: {scope: [] for scope in fns} for kind, fns in scopes.items()}
        for rep in range(args.reps + 1):  # rep 0 warms up
            for scope in scopes["masked"]:
                for kind in VARIANTS:
                    sync()
                    t0 = time.perf_counter()
                    scopes[kind][scope]()
                    sync()
                    if rep:
                        times[kind][scope].append((time.perf_counter() - t0) * 1e3)

    h, w = args.size
    print(f"Mask2Former R50, input {h}x{w}, {args.device}, {args.threads} thread(s), median of {args.reps} reps")
    print(f"{'scope':<20}{'masked ms':>12}{'EMCA ms':>12}{'masked/EMCA':>14}")
    for scope in scopes["masked"]:
        m, e = (statistics.median(times[k][scope]) for k in VARIANTS)
        print(f"{scope:<20}{m:>12.2f}{e:>12.2f}{m / e:>13.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
