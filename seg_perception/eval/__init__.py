"""Offline evaluation through the node's own pipeline: Cityscapes folders and rosbags, metrics equal to
cityscapesscripts', reports as JSON, Markdown and a confusion-matrix PNG."""

from seg_perception.errors import UsageError


class EvalError(UsageError, RuntimeError):
    """Input that cannot be evaluated (missing folder, unmatched files, a bag without the topic); names it."""
