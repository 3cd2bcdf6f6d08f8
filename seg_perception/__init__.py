"""seg_perception: efficient semantic segmentation for ROS 2 cameras."""

__version__ = "0.1.0"
