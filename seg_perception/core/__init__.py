"""The ROS-free pipeline that the node, rosbag replay and dataset evaluation all drive."""
