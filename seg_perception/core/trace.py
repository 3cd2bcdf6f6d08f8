"""Per-frame stage spans in a fixed-size ring buffer, cheap enough to leave on.

All times are `time.perf_counter_ns()` (monotonic). Transport time, which is measured against the
message's header stamp on the ROS clock, is stored as a span that ends at arrival.
Recording allocates nothing: spans go into preallocated numpy arrays; whole-run percentiles come
from fixed log-spaced histograms.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

STAGES: tuple[str, ...] = (
    "transport", "wait", "decode", "preprocess", "inference", "postprocess", "costmap", "publish",
)
TRANSPORT, WAIT, DECODE, PREPROCESS, INFERENCE, POSTPROCESS, COSTMAP, PUBLISH = range(len(STAGES))
END_TO_END = "end_to_end"

# Whole-run histograms: log-spaced bins from 1 us to 100 s, ~1.2% apart.
_HIST_EDGES_NS = np.geomspace(1e3, 1e11, 1501)
_NOW = time.perf_counter_ns


@dataclass
class StageSummary:
    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


class Tracer:
    """Ring buffer of frames x stages x (start_ns, end_ns), plus whole-run statistics.

    A frame is `begin()` -> `span()`... -> `commit()`. Slots are reused; only committed frames count.
    Thread-safe for one writer per frame (the node's callback writes transport/wait, the worker the rest).
    """

    def __init__(self, capacity: int = 4096, enabled: bool = True) -> None:
        self.capacity = int(capacity)
        self.enabled = enabled
        n = len(STAGES)
        self.spans = np.zeros((self.capacity, n, 2), np.int64)  # start, end (0 = stage not run)
        self.tids = np.zeros((self.capacity, n), np.int64)
        self.stamps = np.zeros(self.capacity, np.int64)  # header stamp (ns) of each frame, for joins
        self.device_ms = np.full(self.capacity, np.nan)  # CUDA-event inference time when known
        self.committed = 0  # frames committed since start (monotonic; slot = index % capacity)
        self._next = 0
        self._lock = threading.Lock()
        # Whole-run stats per stage + end to end (last row).
        self._hist = np.zeros((n + 1, _HIST_EDGES_NS.size + 1), np.int64)
        self._sum_ns = np.zeros(n + 1, np.float64)
        self._max_ns = np.zeros(n + 1, np.int64)
        self._count = np.zeros(n + 1, np.int64)

    # --- recording -------------------------------------------------------------------------
    def begin(self, stamp_ns: int = 0) -> int:
        """Reserve a slot for a new frame; returns its index (or -1 when tracing is off)."""
        if not self.enabled:
            return -1
        with self._lock:
            slot = self._next % self.capacity
            self._next += 1
        self.spans[slot] = 0
        self.stamps[slot] = stamp_ns
        self.device_ms[slot] = np.nan
        return slot

    def span(self, slot: int, stage: int, start_ns: int, end_ns: int | None = None) -> None:
        if slot < 0:
            return
        self.spans[slot, stage, 0] = start_ns
        self.spans[slot, stage, 1] = _NOW() if end_ns is None else end_ns
        self.tids[slot, stage] = threading.get_native_id()

    def commit(self, slot: int) -> None:
        """Close the frame: fold its spans into the whole-run statistics."""
        if slot < 0:
            return
        row = self.spans[slot]
        ran = row[:, 1] > 0
        dur = row[:, 1] - row[:, 0]
        for stage in np.flatnonzero(ran):
            self._add(stage, int(dur[stage]))
        if ran.any():
            self._add(len(STAGES), int(row[ran, 1].max() - row[ran, 0].min()))
        with self._lock:
            self.committed += 1

    def _add(self, row: int, ns: int) -> None:
        self._hist[row, np.searchsorted(_HIST_EDGES_NS, ns)] += 1
        self._sum_ns[row] += ns
        self._count[row] += 1
        if ns > self._max_ns[row]:
            self._max_ns[row] = ns

    # --- reading ---------------------------------------------------------------------------
    def recent_slots(self, window: int | None = None) -> np.ndarray:
        """Slot indices of the last `window` committed frames, oldest first."""
        n = min(self.committed, self.capacity, window or self.capacity)
        end = self.committed
        return np.arange(end - n, end) % self.capacity

    def durations_ms(self, window: int | None = None) -> np.ndarray:
        """[frames, stages + 1] durations in ms (NaN where a stage did not run); last column end to end."""
        rows = self.spans[self.recent_slots(window)]
        ran = rows[:, :, 1] > 0
        dur = np.where(ran, (rows[:, :, 1] - rows[:, :, 0]) / 1e6, np.nan)
        start = np.where(ran, rows[:, :, 0], np.iinfo(np.int64).max).min(axis=1)
        end = np.where(ran, rows[:, :, 1], 0).max(axis=1)
        e2e = np.where(ran.any(axis=1), (end - start) / 1e6, np.nan)
        return np.concatenate([dur, e2e[:, None]], axis=1)

    def summary(self, window: int | None = None) -> dict[str, StageSummary]:
        """Per stage and end to end over the last `window` frames (exact percentiles)."""
        dur = self.durations_ms(window)
        out = {}
        for i, name in enumerate(STAGES + (END_TO_END,)):
            col = dur[:, i]
            col = col[~np.isnan(col)]
            if col.size == 0:
                continue
            p50, p90, p99 = np.percentile(col, [50, 90, 99])
            out[name] = StageSummary(int(col.size), float(col.mean()), float(p50), float(p90), float(p99),
                                     float(col.max()))
        return out

    def run_summary(self) -> dict[str, StageSummary]:
        """Per stage and end to end over the whole run (percentiles from ~1%-wide histogram bins)."""
        out = {}
        for i, name in enumerate(STAGES + (END_TO_END,)):
            count = int(self._count[i])
            if count == 0:
                continue
            cdf = np.cumsum(self._hist[i])
            pct = []
            for q in (0.5, 0.9, 0.99):
                b = int(np.searchsorted(cdf, q * count))
                lo = _HIST_EDGES_NS[max(b - 1, 0)]
                hi = _HIST_EDGES_NS[min(b, _HIST_EDGES_NS.size - 1)]
                pct.append(float(np.sqrt(lo * hi)) / 1e6)
            out[name] = StageSummary(count, self._sum_ns[i] / count / 1e6, *pct, self._max_ns[i] / 1e6)
        return out
