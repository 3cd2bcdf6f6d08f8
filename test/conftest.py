"""Shared fixtures: an isolated ROS 2 domain per test, and small real models exported once per worker."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_domain_counter = itertools.count()


@pytest.fixture
def ros_env(worker_id):
    """Environment for a test that talks DDS: its own ROS_DOMAIN_ID, localhost-only discovery, SHM profile."""
    worker = 0 if worker_id == "master" else int(worker_id.removeprefix("gw"))
    # Domains 1..200 split across workers; 232 is the highest valid id. SEG_TEST_DOMAIN_BASE pins a run
    # to 25 domains from that base, so that suites running side by side on one machine never meet.
    base = os.environ.get("SEG_TEST_DOMAIN_BASE")
    if base:
        domain = int(base) + (worker * 12 + next(_domain_counter)) % 25
    else:
        domain = 1 + worker * 100 + next(_domain_counter) % 100
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               FASTRTPS_DEFAULT_PROFILES_FILE=str(REPO / "config" / "fastdds_shm.xml"),
               PYTHONUNBUFFERED="1")
    return env


# ROS 2 Python packages a ROS-free install lacks: the client library and the message packages seg_perception uses.
ROS_PACKAGES = ("rclpy", "rcl_interfaces", "builtin_interfaces", "std_msgs", "sensor_msgs", "nav_msgs",
                "geometry_msgs", "diagnostic_msgs", "vision_msgs")


def _blocker(folder: Path, modules: tuple[str, ...], why: str):
    """`env(base=None)`: a copy of `base` (default os.environ) in which importing any of `modules` fails, in the
    process and in every process it starts."""
    for name in modules:
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(f'raise ModuleNotFoundError("{name} is blocked: {why}", '
                                                   f'name="{name}")\n')

    def env(base: dict | None = None) -> dict:
        out = dict(os.environ if base is None else base)
        out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), out.get("PYTHONPATH", "")]))
        return out

    return env


@pytest.fixture(scope="session")
def no_torch(tmp_path_factory):
    """`no_torch(env=None)`: an environment without torch, as in the runtime install (`make demo`)."""
    return _blocker(tmp_path_factory.mktemp("torch_blocker"), ("torch",), "runtime commands must run without it")


@pytest.fixture(scope="session")
def no_ros(tmp_path_factory):
    """`no_ros(env=None)`: an environment without rclpy and the ROS message packages, as in an install without
    the [ros] extra."""
    return _blocker(tmp_path_factory.mktemp("ros_blocker"), ROS_PACKAGES, "this command must run without ROS 2")


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """metaseg-t exported at 64x128 with logits: a real model, small enough for CI."""
    pytest.importorskip("torch")
    import torch

    from seg_perception.backends.deploy_model import model_info_for
    from seg_perception.deploy.export import export_onnx
    from seg_perception.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("metaseg-t").eval()
    info = model_info_for("metaseg-t", (64, 128), with_logits=True)
    return export_onnx(model, info, tmp_path_factory.mktemp("models") / "metaseg-t_64x128.onnx", with_logits=True)
