"""ROS 2 shell around the ROS-free pipeline: `seg_node` (node.py), its parameters and message conversions."""
