"""ROS interface packages that have no wheel (vision_msgs), built from their .msg files with colcon and the rosidl
wheels, once: the install is cached under .test_cache/ keyed by the package's files and the toolchain, so later
runs (and parallel workers, which wait on a lock) reuse it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = Path(__file__).resolve().parent / "interfaces"
CACHE = REPO / ".test_cache" / "interfaces"


def _key(package: Path) -> str:
    digest = hashlib.sha256(sys.version.encode())
    for dist in ("ros-rosidl-generator-py", "ros-rosidl-typesupport-fastrtps-c", "ros-std-msgs"):
        digest.update(metadata.version(dist).encode())
    for path in sorted(package.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(package).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def built_interfaces(name: str) -> Path:
    """The merged install prefix holding interface package `name`, building it if the cache lacks it; skips the
    calling test where this machine cannot build (no colcon, CMake or C compiler)."""
    colcon = Path(sys.executable).parent / "colcon"
    missing = [tool for tool, found in (("colcon", colcon.exists()), ("cmake", shutil.which("cmake")),
                                        ("a C compiler", shutil.which("cc") or shutil.which("gcc"))) if not found]
    if missing:
        pytest.skip(f"cannot build {name}: no {', '.join(missing)} (pip install -e '.[test]' brings colcon)")
    package = SOURCES / name
    root = CACHE / f"{name}-{_key(package)}"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another xdist worker may be building it
        if not (root / "complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(package, root / "src" / name)
            prefix = sys.prefix
            env = dict(os.environ, CMAKE_PREFIX_PATH=prefix, AMENT_PREFIX_PATH=prefix,
                       PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
            proc = subprocess.run(
                [str(colcon), "build", "--merge-install", "--event-handlers", "console_direct-",
                 "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
                cwd=root, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"colcon build of {name} failed:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
            (root / "complete").touch()
    return root / "install"


def interfaces_env(env: dict, prefix: Path) -> dict:
    """`env` plus what `source install/setup.bash` would add for a merged install at `prefix`."""
    site = prefix / Path(sysconfig.get_path("purelib")).relative_to(sys.prefix)

    def prepend(key: str, value: Path) -> str:
        return os.pathsep.join([str(value)] + [p for p in env.get(key, "").split(os.pathsep) if p])

    return dict(env, PYTHONPATH=prepend("PYTHONPATH", site), LD_LIBRARY_PATH=prepend("LD_LIBRARY_PATH", prefix / "lib"),
                AMENT_PREFIX_PATH=prepend("AMENT_PREFIX_PATH", prefix))
