"""A one-frame mailbox between a producer (the subscription callback) and the inference worker.

A new frame replaces the one still waiting, so the worker always starts on the newest frame: under overload
latency stays near one inference time and memory holds at most two frames (waiting + in flight).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class SlotCounts:
    put: int = 0  # frames offered
    taken: int = 0  # frames handed to the worker
    dropped: int = 0  # frames replaced before the worker took them


class LatestFrameSlot(Generic[T]):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.counts = SlotCounts()

    def put(self, item: T) -> bool:
        """Offer a frame; returns True when it replaced one that was still waiting (counted as dropped)."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self.counts.put += 1
            if replaced:
                self.counts.dropped += 1
            self._cond.notify()
        return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The waiting frame, blocking until one arrives; None on timeout or once closed."""
        with self._cond:
            while self._item is None and not self._closed:
                if not self._cond.wait(timeout):
                    return None
            if self._closed:
                return None
            item, self._item = self._item, None
            self.counts.taken += 1
            return item

    def close(self) -> None:
        """Wake the worker for good; a frame still waiting is discarded."""
        with self._cond:
            self._closed = True
            self._item = None
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
