"""Offline evaluation through the node's own pipeline: Cityscapes folders and rosbags, metrics equal to
cityscapesscripts', reports as JSON, Markdown and a confusion-matrix PNG."""

from seg_perception.errors import EvalError
from seg_perception.labels import CITYSCAPES_CLASSES


def require_cityscapes_classes(info) -> None:
    """Ground truth and scores here are Cityscapes train ids: a model card with other classes cannot be scored."""
    if tuple(info.class_names) != CITYSCAPES_CLASSES:
        raise EvalError(f"model '{info.name}' predicts its own {info.num_classes} classes "
                        f"({', '.join(info.class_names[:4])}, ...); evaluation scores Cityscapes' 19 train ids")
