"""TensorRT engine files and their sidecars: the one place that decides whether an engine may be loaded.

A serialized engine only runs on the TensorRT version and GPU (compute capability) that built it, and only means
what it meant for the ONNX file, precision and input shapes it was built from. Each engine `X.engine` therefore
has a sidecar `X.engine.json` recording those facts plus the engine's own sha256 and the model metadata. Before
TensorRT ever sees the bytes, the cache compares the sidecar with what is wanted and with this machine; on a
mismatch it rebuilds from the ONNX (when allowed) or stops with a message naming each difference, never a
plan-deserialisation crash (Autoware's tensorrt_common does the same for the TensorRT version and I/O shapes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from seg_perception.backends.base import BackendError
from seg_perception.output_files import check_writable

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = 1
PRECISIONS = ("fp32", "fp16", "int8")


class EngineCacheError(BackendError):
    """An engine exists but must not be loaded here (mismatch, corruption); the message says why."""


@dataclass(frozen=True)
class Platform:
    """What a serialized engine is bound to on the machine that loads it."""

    trt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"


@dataclass(frozen=True)
class EngineKey:
    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    input_shapes: dict  # tensor name -> [min, opt, max] shapes, each a list of ints
    onnx_sha256: str

    @classmethod
    def for_build(cls, platform: Platform, precision: str, input_shapes: dict, onnx_sha256: str) -> "EngineKey":
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got '{precision}'")
        shapes = {k: [list(map(int, s)) for s in v] for k, v in input_shapes.items()}
        return cls(platform.trt_version, platform.gpu_name, platform.compute_capability, precision, shapes,
                   onnx_sha256)

    def differences(self, found: "EngineKey", platform_only: bool = False) -> list[str]:
        """Human-readable differences, 'what the engine has' vs 'what is wanted here'."""
        labels = {"trt_version": "TensorRT version", "gpu_name": "GPU", "compute_capability": "compute capability",
                  "precision": "precision", "input_shapes": "input shapes (min/opt/max)",
                  "onnx_sha256": "ONNX file (sha256)"}
        names = ("trt_version", "gpu_name", "compute_capability") if platform_only else labels
        out = []
        for name in names:
            have, want = getattr(found, name), getattr(self, name)
            if have != want:
                if name == "onnx_sha256":
                    have, want = have[:12], want[:12]
                out.append(f"{labels[name]}: engine has {have}, here {want}")
        return out


@dataclass
class Sidecar:
    key: EngineKey
    engine_sha256: str
    engine_bytes: int
    model_metadata: dict[str, str]  # ModelInfo.to_metadata() of the ONNX it came from
    onnx_path: str = ""
    build: dict = field(default_factory=dict)  # workspace, calibration, build time: informative only
    created: str = ""
    format: int = SIDECAR_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Sidecar":
        raw = json.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("key"), dict):
            raise ValueError(f"not a JSON object with a 'key' object: {text[:40]!r}")
        if raw.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"sidecar format {raw.get('format')} (this version reads {SIDECAR_FORMAT})")
        key = EngineKey(**{f.name: raw["key"][f.name] for f in fields(EngineKey)})
        return cls(**{**{f.name: raw[f.name] for f in fields(cls) if f.name in raw}, "key": key})


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_path(engine: str | Path) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + SIDECAR_SUFFIX)


def engine_path_for(onnx: str | Path, precision: str, cache_dir: str | Path | None = None) -> Path:
    """Where the engine for `onnx` at `precision` lives: beside the ONNX unless a cache dir is given."""
    onnx = Path(onnx)
    return Path(cache_dir or onnx.parent) / f"{onnx.stem}.{precision}.engine"


def read_sidecar(engine: str | Path) -> Sidecar:
    path = sidecar_path(engine)
    if not path.is_file():
        raise EngineCacheError(f"{engine} has no sidecar {path.name}: cannot tell which TensorRT/GPU built it")
    try:
        return Sidecar.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineCacheError(f"sidecar {path} is unreadable ({exc})") from None


def write_engine(engine: str | Path, data: bytes, sidecar: Sidecar) -> None:
    """Write engine and sidecar; a crash in between leaves a sha mismatch, never a half engine that looks valid."""
    engine = Path(engine)
    engine.parent.mkdir(parents=True, exist_ok=True)
    sidecar.engine_sha256 = hashlib.sha256(data).hexdigest()
    sidecar.engine_bytes = len(data)
    sidecar.created = sidecar.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for path, payload in ((engine, data), (sidecar_path(engine), sidecar.to_json().encode())):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, path)


def verify_engine(engine: str | Path, platform: Platform | None = None, wanted: EngineKey | None = None) -> Sidecar:
    """The sidecar of an intact engine that may run here; EngineCacheError naming every problem otherwise.

    `platform`: this machine (TensorRT version, GPU); `wanted`: the full key (ONNX, precision, shapes) when
    the caller knows which ONNX it wants the engine for."""
    engine = Path(engine)
    if not engine.is_file():
        raise BackendError(f"TensorRT engine not found: {engine}")
    sidecar = read_sidecar(engine)
    size = engine.stat().st_size
    if size != sidecar.engine_bytes or sha256_file(engine) != sidecar.engine_sha256:
        raise EngineCacheError(f"{engine} is corrupt or was replaced: its sha256/size ({size} bytes) differ from "
                               f"those in {sidecar_path(engine).name} ({sidecar.engine_bytes} bytes)")
    problems = []
    if wanted is not None:
        problems = wanted.differences(sidecar.key)
    elif platform is not None:
        here = EngineKey(platform.trt_version, platform.gpu_name, platform.compute_capability, "", {}, "")
        problems = here.differences(sidecar.key, platform_only=True)
    if problems:
        raise EngineCacheError(f"{engine} was built for something else: " + "; ".join(problems))
    return sidecar


def ensure_engine(onnx: str | Path, wanted: EngineKey, build: Callable[[Path], Sidecar], rebuild: bool = True,
                  cache_dir: str | Path | None = None) -> tuple[Path, Sidecar]:
    """A verified engine for `onnx` matching `wanted`, building it with `build(path)` when missing or stale.

    With `rebuild=False` a missing or stale engine is an EngineCacheError that names the differences and the
    command that builds it ahead of time."""
    engine = engine_path_for(onnx, wanted.precision, cache_dir)
    if engine.is_file():
        try:
            return engine, verify_engine(engine, wanted=wanted)
        except EngineCacheError as exc:
            if not rebuild:
                raise EngineCacheError(f"{exc}. Rebuild it with `seg-perception build-engine {onnx} --precision "
                                       f"{wanted.precision}` or allow rebuilding") from None
            log.warning("rebuilding TensorRT engine: %s", exc)
            _set_aside_unless_ours(engine)
    elif not rebuild:
        raise missing_engine_error(onnx, wanted.precision, engine)
    else:
        log.warning("building TensorRT engine %s from %s (this can take minutes)", engine, onnx)
    try:  # before a build that can take minutes
        check_writable(engine)
        check_writable(sidecar_path(engine))
    except OSError as exc:
        raise EngineCacheError(f"cannot cache the TensorRT engine for {onnx}: {exc}; set engine_cache_dir "
                               f"(--cache-dir) to a writable folder") from None
    sidecar = build(engine)
    if sidecar.key != wanted:
        raise EngineCacheError("the engine just built does not match what was asked: "
                               + "; ".join(wanted.differences(sidecar.key)))
    return engine, sidecar


def _set_aside_unless_ours(engine: Path) -> None:
    """Before a rebuild replaces it: an engine that is not an intact build of ours (no sidecar, an unreadable one,
    or bytes that differ from it) may be someone's own, so it is renamed to `<name>.bak[N]`, never overwritten."""
    try:
        verify_engine(engine)
        return  # ours, intact, merely built for something else
    except EngineCacheError:
        pass
    n = 0
    while (backup := engine.with_name(f"{engine.name}.bak{n or ''}")).exists() or backup.is_symlink():
        n += 1
    os.rename(engine, backup)
    side = sidecar_path(engine)
    if side.exists() and not side.is_symlink():
        os.rename(side, sidecar_path(backup))
    log.warning("kept the engine that was at %s as %s", engine, backup)


def missing_engine_error(onnx: str | Path, precision: str, engine: Path) -> EngineCacheError:
    return EngineCacheError(f"no TensorRT engine at {engine} and rebuilding is disabled; build it ahead with "
                            f"`seg-perception build-engine {onnx} --precision {precision}`")


def detect_platform(device: int = 0) -> Platform:
    """TensorRT version and GPU of this machine; BackendError when TensorRT or CUDA is missing."""
    trt = import_tensorrt()
    cudart = import_cudart()
    err, prop = cudart.cudaGetDeviceProperties(device)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"cannot query CUDA device {device}: {err}")
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return Platform(trt.__version__, name, f"{prop.major}.{prop.minor}")


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(f"TensorRT is not installed here ({exc}); install the tensorrt wheel for your CUDA "
                           "(pip install tensorrt-cu12) or use the onnxruntime backend") from None
    return tensorrt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise BackendError(f"cuda-python is not installed here ({exc}); pip install cuda-python") from None
    return cudart
