"""Progress bars for long command-line runs: on stderr and only on a terminal, so logs and pipes stay clean."""

from __future__ import annotations

import sys


def progress_bar(total: int, unit: str, desc: str = "", quiet: bool = False, iterable=None):
    """A bar to `update()`, or, given `iterable`, an iterator over it that counts itself."""
    from tqdm import tqdm  # here, so that `--help` of the commands using it stays fast

    return tqdm(iterable, total=total, unit=unit, desc=desc or None, disable=True if quiet else None, file=sys.stderr,
                dynamic_ncols=True)
