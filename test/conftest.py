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


@pytest.fixture(scope="session")
def no_torch(tmp_path_factory):
    """`no_torch(env=None)`: a copy of `env` (default os.environ) in which `import torch` fails, in the process
    and in every process it starts, as in the runtime install (`make demo`) that has no torch."""
    blocker = tmp_path_factory.mktemp("torch_blocker")
    (blocker / "torch").mkdir()
    (blocker / "torch" / "__init__.py").write_text(
        'raise ModuleNotFoundError("torch is blocked: runtime commands must run without it", name="torch")\n')

    def env(base: dict | None = None) -> dict:
        out = dict(os.environ if base is None else base)
        out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker), out.get("PYTHONPATH", "")]))
        return out

    return env


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
