"""Offline evaluation through the node's own pipeline: Cityscapes folders (metrics equal to cityscapesscripts'),
image/label folders and rosbags in the model's own classes, reports as JSON, Markdown and a confusion-matrix PNG."""

from seg_perception.errors import EvalError
from seg_perception.labels import CITYSCAPES_CLASSES


def require_cityscapes_classes(info) -> None:
    """Cityscapes ground truth scores Cityscapes' classes: a model card with other classes needs data labelled in
    its own classes."""
    if tuple(info.class_names) != CITYSCAPES_CLASSES:
        raise EvalError(f"model '{info.name}' predicts its own {info.num_classes} classes "
                        f"({', '.join(info.class_names[:4])}, ...) and Cityscapes ground truth holds Cityscapes' 19: "
                        f"score it on data labelled in its classes with `eval folder` or `eval bag`")
