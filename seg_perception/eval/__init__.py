"""Offline evaluation through the node's own pipeline: Cityscapes folders and rosbags, metrics equal to
cityscapesscripts', reports as JSON, Markdown and a confusion-matrix PNG."""


class EvalError(RuntimeError):
    """Input that cannot be evaluated (missing folder, unmatched files, a bag without the topic); names it."""
