"""seg_node's health for /diagnostics: a level and a message that describe the window since the previous report.

OK while frames flow; WARN at start-up until the first frame, when none has arrived for `stale_timeout` seconds, or
when a frame was rejected or went without usable depth in the window; ERROR when the backend failed on a frame in
the window. A problem that is
over no longer colours the level: the lifetime totals stay in the status values.
"""

from __future__ import annotations

from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticStatus

STATUS_SUFFIX = ": semantic segmentation"


def status_name(fully_qualified_node_name: str) -> str:
    """Unique per node, so two cameras' statuses never collide in a diagnostic aggregator."""
    return fully_qualified_node_name + STATUS_SUFFIX


@dataclass(frozen=True)
class Counts:
    """Lifetime totals, as the node keeps them."""

    frames_in: int = 0
    frames_out: int = 0
    rejected: int = 0
    failed: int = 0
    depth_dropped: int = 0  # frames whose depth-built outputs stayed unknown


@dataclass(frozen=True)
class Health:
    level: bytes
    message: str
    input_hz: float
    output_hz: float


class HealthWindow:
    """Turns lifetime totals into the health of the last window (`report` is called once per diagnostics period)."""

    def __init__(self, input_topic: str, stale_timeout_s: float, now_ns: int) -> None:
        self.input_topic = input_topic
        self.stale_timeout_s = stale_timeout_s
        self._since_ns = now_ns
        self._previous = Counts()

    def report(self, now_ns: int, counts: Counts, last_arrival_ns: int | None, last_problem: str) -> Health:
        """`last_arrival_ns`: when the newest frame arrived (same clock as now_ns), None before the first."""
        seconds = max((now_ns - self._since_ns) / 1e9, 1e-9)
        prev = self._previous
        in_hz, out_hz = (counts.frames_in - prev.frames_in) / seconds, (counts.frames_out - prev.frames_out) / seconds
        failed, rejected = counts.failed - prev.failed, counts.rejected - prev.rejected
        no_depth = counts.depth_dropped - prev.depth_dropped
        self._since_ns, self._previous = now_ns, counts

        rates = f"{in_hz:.1f} Hz in, {out_hz:.1f} Hz out"
        if failed:
            return Health(DiagnosticStatus.ERROR, f"{failed} frames failed in the last {seconds:.1f} s "
                                                  f"({last_problem}); {rates}", in_hz, out_hz)
        if last_arrival_ns is None:
            return Health(DiagnosticStatus.WARN, f"waiting for the first frame on {self.input_topic}", in_hz, out_hz)
        idle_s = (now_ns - last_arrival_ns) / 1e9
        if idle_s > self.stale_timeout_s:
            return Health(DiagnosticStatus.WARN, f"no frame on {self.input_topic} for {idle_s:.1f} s", in_hz, out_hz)
        if rejected:
            return Health(DiagnosticStatus.WARN, f"{rejected} frames rejected in the last {seconds:.1f} s "
                                                 f"({last_problem}); {rates}", in_hz, out_hz)
        if no_depth:
            return Health(DiagnosticStatus.WARN, f"{no_depth} frames without usable depth in the last {seconds:.1f} "
                                                 f"s ({last_problem}); {rates}", in_hz, out_hz)
        return Health(DiagnosticStatus.OK, rates, in_hz, out_hz)
