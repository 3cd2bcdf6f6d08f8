"""Per-frame stage spans in a fixed-size ring buffer, cheap enough to leave on.

All times are `time.perf_counter_ns()` (monotonic). Transport time, which is measured against the
message's header stamp on the ROS clock, is stored as a span that ends at arrival.
Recording allocates no storage: spans go into preallocated numpy arrays and whole-run percentiles come
from fixed log-spaced histograms, so memory stays flat however long the node runs. Per frame, recording is
a few numpy element writes; everything vectorisable is done in batches or when someone reads.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

import numpy as np

# "depth" is getting the frame's depth image (waiting for a late one, decoding it), apart from "costmap", the
# projection, so that a late depth stream shows as itself and not as a slow projection.
STAGES: tuple[str, ...] = (
    "transport", "wait", "decode", "preprocess", "inference", "postprocess", "depth", "costmap", "publish",
)
TRANSPORT, WAIT, DECODE, PREPROCESS, INFERENCE, POSTPROCESS, DEPTH, COSTMAP, PUBLISH = range(len(STAGES))
END_TO_END = "end_to_end"
INFERENCE_DEVICE = "inference_device"  # CUDA-event time of the inference, when the backend measures it
SUMMARY_ROWS: tuple[str, ...] = STAGES + (END_TO_END, INFERENCE_DEVICE)

# Whole-run histograms: log-spaced bins from 1 us to 100 s, ~1.2% apart. Bin b > 0 holds
# (edge[b-1], edge[b]]; bin 0 everything up to 1 us, the last bin everything above 100 s.
_HIST_EDGES_NS = np.geomspace(1e3, 1e11, 1501)
# Commits between whole-run statistics updates when no reader folds them first: ~0.6 ms per update
# (~0.6 us per frame) instead of ~5 us per frame done one commit at a time.
_FOLD_BATCH = 1024
_NOW = time.perf_counter_ns
_NAN = float("nan")
_thread = threading.local()  # caches each thread's native id: threading.get_native_id() is a system call


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

    A frame is `begin()` -> `span()`... -> `commit()`. Slots are reused; only committed frames count, so a
    frame abandoned half-way (a failed inference) never shows up in summaries or exports.
    Thread-safe for one writer per frame (the node's callback writes transport/wait, the worker the rest) and
    one committing thread; readers may run on any thread.
    Whole-run statistics are folded in vectorised batches: by readers (`summary`, which the node calls from its
    diagnostics timer, off the frame path), else every `_FOLD_BATCH` commits, and always before a committed
    slot is reused. That costs far less per frame than updating them on every commit.
    """

    def __init__(self, capacity: int = 4096, enabled: bool = True) -> None:
        if capacity < 1:
            raise ValueError(f"tracer capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.enabled = enabled
        n = len(STAGES)
        self.spans = np.zeros((self.capacity, n, 2), np.int64)  # start, end (end 0 = stage not run)
        self.tids = np.zeros((self.capacity, n), np.int64)  # native thread id that recorded each span
        self.stamps = np.zeros(self.capacity, np.int64)  # header stamp (ns) of each frame, for joins
        self.device_ms = np.full(self.capacity, np.nan)  # CUDA-event inference time when known
        self.frame_ids = np.full(self.capacity, -1, np.int64)  # frame number held by each slot
        self._order = np.zeros(self.capacity, np.int64)  # frame numbers in commit order (ring)
        self._unfolded = np.zeros(self.capacity, bool)  # committed, not yet in the whole-run statistics
        self.committed = 0  # frames committed since start (monotonic)
        self._folded = 0  # commits already in the whole-run statistics
        self._frames = itertools.count()
        self._lock = threading.Lock()
        # Per-frame writes go through memoryviews and take no lock: numpy's element assignment and a lock run far
        # more code, and between frames of real work (inference, resizes) that code is cold in the CPU caches:
        # measured side by side, begin + commit cost ~20 us per frame that way against ~1 us in a tight loop.
        self._spans_view, self._tids_view = memoryview(self.spans), memoryview(self.tids)
        self._row_len = n * 2
        self._spans_flat = memoryview(self.spans).cast("B").cast("q")
        self._zero_row = memoryview(np.zeros(self._row_len, np.int64)).cast("B").cast("q")
        self._frame_ids_view, self._stamps_view = memoryview(self.frame_ids), memoryview(self.stamps)
        self._device_view, self._order_view = memoryview(self.device_ms), memoryview(self._order)
        self._unfolded_view = memoryview(self._unfolded)
        rows = len(SUMMARY_ROWS)
        self._hist = np.zeros((rows, _HIST_EDGES_NS.size + 1), np.int64)
        self._sum_ns = np.zeros(rows, np.int64)
        self._max_ns = np.zeros(rows, np.int64)
        self._count = np.zeros(rows, np.int64)

    # --- recording -------------------------------------------------------------------------
    def begin(self, stamp_ns: int = 0) -> int:
        """Reserve a slot for a new frame; returns its index (or -1 when tracing is off)."""
        if not self.enabled:
            return -1
        frame = next(self._frames)  # atomic under the GIL, so begin() takes no lock
        slot = frame % self.capacity
        if self._unfolded_view[slot] or self.committed - self._folded >= _FOLD_BATCH:
            with self._lock:
                self._fold()
        self._frame_ids_view[slot] = frame  # first, so readers skip the slot while it is being reset
        row = slot * self._row_len
        self._spans_flat[row:row + self._row_len] = self._zero_row
        self._stamps_view[slot] = stamp_ns
        self._device_view[slot] = _NAN
        return slot

    def span(self, slot: int, stage: int, start_ns: int, end_ns: int | None = None) -> None:
        """Record `stage` of the frame in `slot` from start_ns to end_ns (default: now); times are int ns."""
        if slot < 0:
            return
        spans = self._spans_view
        spans[slot, stage, 0] = start_ns
        spans[slot, stage, 1] = _NOW() if end_ns is None else end_ns
        try:
            tid = _thread.native_id
        except AttributeError:  # first span from this thread
            tid = _thread.native_id = threading.get_native_id()
        self._tids_view[slot, stage] = tid

    def commit(self, slot: int) -> None:
        """Close the frame: it becomes visible to summaries and exports. Commit from one thread at a time."""
        if slot < 0:
            return
        # No lock: with a single committer, the order entry and the flag are written before `committed` moves,
        # so a concurrent _fold() either sees the whole frame or leaves it for the next fold.
        self._order_view[self.committed % self.capacity] = self._frame_ids_view[slot]
        self._unfolded_view[slot] = True
        self.committed += 1

    def _fold(self) -> None:
        """Add the commits since the last fold to the whole-run statistics (caller holds the lock)."""
        committed = self.committed  # read once: the worker may commit meanwhile
        frames = self._order[np.arange(self._folded, committed) % self.capacity]
        self._folded = committed
        if frames.size == 0:
            return
        slots = frames % self.capacity
        self._unfolded[slots] = False
        dur, ran = _durations_ns(self.spans[slots])
        device = self.device_ms[slots]
        dur = np.concatenate([dur, np.round(np.nan_to_num(device) * 1e6).astype(np.int64)[:, None]], axis=1)
        ran = np.concatenate([ran, ~np.isnan(device)[:, None]], axis=1)
        for row in np.flatnonzero(ran.any(axis=0)):
            values = dur[ran[:, row], row]
            self._hist[row] += np.bincount(np.searchsorted(_HIST_EDGES_NS, values), minlength=self._hist.shape[1])
            self._sum_ns[row] += values.sum()
            self._count[row] += values.size
            self._max_ns[row] = max(self._max_ns[row], values.max())

    # --- reading ---------------------------------------------------------------------------
    def recent_slots(self, window: int | None = None) -> np.ndarray:
        """Slot indices of the last `window` committed frames still in the ring, oldest first."""
        committed = self.committed  # read once: the worker may commit meanwhile
        n = min(committed, self.capacity, window or self.capacity)
        frames = self._order[np.arange(committed - n, committed) % self.capacity]
        slots = frames % self.capacity
        return slots[self.frame_ids[slots] == frames]  # drops slots a newer frame has since taken

    def durations_ms(self, window: int | None = None) -> np.ndarray:
        """[frames, stages + 1] durations in ms (NaN where a stage did not run); last column end to end."""
        return span_durations_ms(self.spans[self.recent_slots(window)])

    def summary(self, window: int | None = None) -> dict[str, StageSummary]:
        """Per stage, end to end and device inference over the last `window` frames (exact percentiles)."""
        with self._lock:
            self._fold()  # here rather than in a later begin(): readers run off the frame path
        slots = self.recent_slots(window)
        dur = np.concatenate([span_durations_ms(self.spans[slots]), self.device_ms[slots, None]], axis=1)
        out = {}
        for i, name in enumerate(SUMMARY_ROWS):
            col = dur[:, i]
            col = col[~np.isnan(col)]
            if col.size == 0:
                continue
            p50, p90, p99 = np.percentile(col, [50, 90, 99])
            out[name] = StageSummary(int(col.size), float(col.mean()), float(p50), float(p90), float(p99),
                                     float(col.max()))
        return out

    def run_summary(self) -> dict[str, StageSummary]:
        """Per stage, end to end and device inference over the whole run (percentiles from ~1%-wide bins)."""
        with self._lock:
            self._fold()
            hist, sums, maxes, counts = (a.copy() for a in (self._hist, self._sum_ns, self._max_ns, self._count))
        out = {}
        for i, name in enumerate(SUMMARY_ROWS):
            count = int(counts[i])
            if count == 0:
                continue
            max_ms = maxes[i] / 1e6
            cdf = np.cumsum(hist[i])
            pct = []
            for q in (0.5, 0.9, 0.99):
                b = int(np.searchsorted(cdf, q * count))
                lo = _HIST_EDGES_NS[max(b - 1, 0)]
                hi = _HIST_EDGES_NS[min(b, _HIST_EDGES_NS.size - 1)]
                pct.append(min(float(np.sqrt(lo * hi)) / 1e6, max_ms))  # a bin's middle may pass the max
            out[name] = StageSummary(count, sums[i] / count / 1e6, *pct, max_ms)
        return out


def _durations_ns(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """spans [frames, stages, 2] -> (durations ns, ran), both [frames, stages + 1]; the last column is end to end,
    from the earliest start to the latest end of the stages that ran."""
    ran = rows[:, :, 1] > 0
    dur = rows[:, :, 1] - rows[:, :, 0]
    start = np.where(ran, rows[:, :, 0], np.iinfo(np.int64).max).min(axis=1)
    end = np.where(ran, rows[:, :, 1], 0).max(axis=1)
    any_ran = ran.any(axis=1)
    e2e = np.where(any_ran, end - start, 0)
    return np.concatenate([dur, e2e[:, None]], axis=1), np.concatenate([ran, any_ran[:, None]], axis=1)


def span_durations_ms(rows: np.ndarray) -> np.ndarray:
    """spans [frames, stages, 2] -> [frames, stages + 1] ms, NaN where a stage did not run; last = end to end."""
    dur, ran = _durations_ns(rows)
    return np.where(ran, dur / 1e6, np.nan)
