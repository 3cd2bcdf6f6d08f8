"""Fleet tasks on Ray: a local Ray started in this process (`--workers N`), a cluster (`--ray ADDRESS`), or the Ray
this process has already joined. Each task runs `fleet.run_task` in a Ray worker, which keeps one open backend
for all the tasks it runs. The model file goes once into Ray's object store; each node writes it to a local
cache file named by its sha256. A worker that dies has its task run again (Ray's retries): a task only reads,
so its result is the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import RayError

from seg_perception.backends import Backend, is_file_artifact, open_backend, resolve_model
from seg_perception.eval import EvalError
from seg_perception.eval.bag_eval import BagEvalConfig
from seg_perception.eval.fleet import FleetTask, TaskResult, run_task

TASK_RETRIES = 3  # runs of a task whose worker died, after the first
_MODEL_CACHE = Path(tempfile.gettempdir()) / "seg_perception_models"


@dataclass(frozen=True)
class _ShippedModel:
    key: str  # sha256 of the model file, or a zoo name
    suffix: str
    blob: list  # [ObjectRef of the file's bytes]; inside a list Ray passes the reference, not the bytes


_worker_backend: tuple[tuple, Backend] | None = None  # (key, backend) of this worker process


def _backend(config: BagEvalConfig, model: _ShippedModel) -> Backend:
    global _worker_backend
    key = (model.key, config.backend, config.threads)
    if _worker_backend is not None:
        if _worker_backend[0] == key:
            return _worker_backend[1]
        _worker_backend[1].close()
        _worker_backend = None
    artifact = model.key
    if model.blob:
        path = _MODEL_CACHE / f"{model.key}{model.suffix}"
        if not path.is_file():  # the first task on this node fetches it; a rename makes it appear whole
            _MODEL_CACHE.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            partial.write_bytes(ray.get(model.blob[0]))
            partial.replace(path)
        artifact = str(path)
    backend = open_backend(artifact, config.backend, **({"threads": config.threads} if config.threads else {}))
    _worker_backend = (key, backend)
    return backend


@ray.remote(max_retries=TASK_RETRIES)
def _evaluate_task(config: BagEvalConfig, task: FleetTask, model: _ShippedModel) -> TaskResult:
    return run_task(config, task, _backend(config, model))


def _ship(model: str) -> _ShippedModel:
    artifact = resolve_model(model)
    if not is_file_artifact(artifact):  # a zoo name: its checkpoint path must be readable on every node
        return _ShippedModel(artifact, "", [])
    data = Path(artifact).read_bytes()
    return _ShippedModel(hashlib.sha256(data).hexdigest(), Path(artifact).suffix, [ray.put(data)])


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT that nothing answers on fails here: ray.init would retry it for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # 'auto', 'ray://...': Ray resolves those itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise EvalError(f"no Ray cluster answers at '{address}' ({exc}); start one with `ray start --head`")


def run_tasks(config: BagEvalConfig, tasks: list[FleetTask], workers: int = 0,
              address: str = "") -> Iterator[TaskResult]:
    """Results in the order tasks finish. Each task takes `config.threads` CPUs and inference threads (0: 1).
    Closing the generator early (Ctrl-C) cancels the tasks still queued or running, and stops a Ray this call
    started."""
    config = dataclasses.replace(config, threads=config.threads or 1)  # a task runs on the CPUs Ray gave it
    if address:
        _check_reachable(address)
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a Ray started here reports nothing home
            ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
    pending: dict = {}
    try:
        model = _ship(config.model)
        remote = _evaluate_task.options(num_cpus=config.threads)
        pending = {remote.remote(config, task, model): task for task in tasks}
        while pending:
            # Whatever finished within a second: one wait per second, however many tasks are pending.
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
            for ref in done:
                task = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except RayError as exc:  # its worker died more than TASK_RETRIES times (out of memory, ...)
                    yield TaskResult(task, error=f"{type(exc).__name__}: {exc}")
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
