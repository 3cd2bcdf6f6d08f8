"""Image sizes written as HxW on command lines, shared by every command that takes one."""

from __future__ import annotations

import argparse


def parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 512x1024, got '{text}'") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected a positive HxW such as 512x1024, got '{text}'")
    return h, w
