"""TensorRT engines built from exported ONNX (fp32 / fp16 / int8), each with its sidecar, into the engine cache.

The tensorrt backend asks `engine_for` for the engine of an ONNX file; `seg-perception build-engine` builds ahead of
deployment through the same functions. A timing cache (per TensorRT version) makes rebuilds fast; INT8 uses an entropy
calibrator (IInt8EntropyCalibrator2) over a folder of images and keeps its calibration cache for the next build.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from seg_perception.backends.base import BackendError, ModelInfo
from seg_perception.backends.engine_cache import (
    PRECISIONS, EngineKey, Platform, Sidecar, detect_platform, engine_path_for, ensure_engine, import_cudart,
    import_tensorrt, missing_engine_error, sha256_file, write_engine,
)

log = logging.getLogger(__name__)

INPUT = "image"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
HW = tuple[int, int]


class BuildError(BackendError):
    """The build cannot start or failed; the message names the input and the problem."""


@dataclass
class BuildConfig:
    precision: str = "fp16"
    workspace_mb: int = 1024
    shapes: tuple[HW, HW, HW] | None = None  # min/opt/max HxW; only for ONNX exported with --dynamic
    calib_images: str | None = None  # folder of images for INT8
    calib_cache: str | None = None  # default: beside the engine
    calib_max_images: int = 256
    timing_cache: str | None = None  # default: beside the engine, one per TensorRT version


def onnx_input(onnx_path: Path) -> tuple[ModelInfo, list]:
    """Model metadata and the declared `image` input dims (ints, or names for dynamic axes)."""
    import onnx

    from seg_perception.backends.onnxruntime_backend import read_model_info

    info = read_model_info(onnx_path)
    proto = onnx.load(str(onnx_path), load_external_data=False)
    for i in proto.graph.input:
        if i.name == INPUT:
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                    for d in i.type.tensor_type.shape.dim]
            return info, dims
    raise BuildError(f"{onnx_path} has no '{INPUT}' input: was it made by seg-perception export?")


def input_shapes(onnx_path: str | Path, config: BuildConfig) -> tuple[ModelInfo, dict]:
    """Validate the request against the ONNX and return (info, {'image': [min, opt, max]}), opt as info.input_size.

    Everything that can be wrong with the arguments is found here, before TensorRT is imported."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise BuildError(f"ONNX file not found: {onnx_path}")
    if config.precision not in PRECISIONS:
        raise BuildError(f"precision must be one of {PRECISIONS}, got '{config.precision}'")
    if config.workspace_mb <= 0:
        raise BuildError(f"workspace must be a positive number of MiB, got {config.workspace_mb}")
    if config.precision == "int8":
        have_cache = config.calib_cache and Path(config.calib_cache).is_file()
        if config.calib_images:
            if not calibration_files(config.calib_images):
                raise BuildError(f"--calib-images {config.calib_images}: no {'/'.join(IMAGE_SUFFIXES)} images there")
        elif not have_cache:
            raise BuildError("int8 needs --calib-images DIR (representative camera images) or an existing "
                             "--calib-cache file; TensorRT would otherwise calibrate on nothing")
    info, dims = onnx_input(onnx_path)
    dynamic = any(not isinstance(d, int) or d <= 0 for d in dims[1:3])
    if dynamic:
        mins = opts = maxs = tuple(info.input_size)
        if config.shapes:
            mins, opts, maxs = config.shapes
        info.input_size = tuple(opts)
        shapes = [[1, h, w, 3] for h, w in (mins, opts, maxs)]
    else:
        size = (dims[1], dims[2])
        if config.shapes and any(tuple(s) != size for s in config.shapes):
            raise BuildError(f"{onnx_path} has a fixed {size[0]}x{size[1]} input; --shapes needs an ONNX exported "
                             "with --dynamic")
        shapes = [[1, size[0], size[1], 3]] * 3
    return info, {INPUT: shapes}


def calibration_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise BuildError(f"calibration folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load_calibration_image(path: Path, size: HW) -> np.ndarray:
    """uint8 RGB at the network input size, as the camera path delivers it."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BuildError(f"cannot read calibration image {path}")
    return np.ascontiguousarray(cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)[:, :, ::-1])


def _entropy_calibrator(trt, cudart, files: list[Path], shape: list[int], cache: Path):
    """IInt8EntropyCalibrator2 feeding one uint8 image per batch through one device buffer."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.files, self.index = files, 0
            self.nbytes = int(np.prod(shape))
            err, self.device = cudart.cudaMalloc(self.nbytes)
            if err != cudart.cudaError_t.cudaSuccess:
                raise BuildError(f"cudaMalloc for calibration failed: {err}")

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            if self.index >= len(self.files):
                return None
            image = load_calibration_image(self.files[self.index], (shape[1], shape[2]))
            self.index += 1
            (err,) = cudart.cudaMemcpy(self.device, image.ctypes.data, self.nbytes,
                                       cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
            if err != cudart.cudaError_t.cudaSuccess:
                raise BuildError(f"calibration upload failed: {err}")
            return [int(self.device)]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data) -> None:
            cache.write_bytes(bytes(data))

        def free(self) -> None:
            cudart.cudaFree(self.device)

    return EntropyCalibrator()


def build_engine(onnx_path: str | Path, engine_path: str | Path, config: BuildConfig,
                 platform: Platform | None = None) -> Sidecar:
    """Build `engine_path` (and its sidecar) from `onnx_path`; returns the sidecar written."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    info, shapes = input_shapes(onnx_path, config)
    trt = import_tensorrt()
    platform = platform or detect_platform()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"TensorRT {trt.__version__} cannot parse {onnx_path}:\n  " + "\n  ".join(errors)
                         + f"\n(`seg-perception check-trt {onnx_path}` lists per-op problems)")
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    timing_path = Path(config.timing_cache or engine_path.parent / f"timing.trt-{trt.__version__}.cache")
    timing = cfg.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    cfg.set_timing_cache(timing, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (mins, opts, maxs) in shapes.items():
        profile.set_shape(name, mins, opts, maxs)
    cfg.add_optimization_profile(profile)
    if config.precision != "fp32" and not hasattr(trt.BuilderFlag, "FP16"):
        raise BuildError(f"TensorRT {trt.__version__} has no weakly-typed fp16/int8 build flags; export the "
                         "model in fp16 (or with Q/DQ nodes) and build with --precision fp32")
    if config.precision in ("fp16", "int8"):
        cfg.set_flag(trt.BuilderFlag.FP16)  # int8 keeps fp16 for the layers it does not quantize
    calibrator = None
    if config.precision == "int8":
        if not hasattr(trt, "IInt8EntropyCalibrator2"):
            raise BuildError(f"TensorRT {trt.__version__} has no implicit INT8 calibration; quantize the ONNX "
                             "explicitly (Q/DQ nodes, e.g. with NVIDIA ModelOpt) instead")
        cfg.set_flag(trt.BuilderFlag.INT8)
        files = calibration_files(config.calib_images)[: config.calib_max_images] if config.calib_images else []
        cache = Path(config.calib_cache or engine_path.with_suffix(".calib"))
        calibrator = _entropy_calibrator(trt, import_cudart(), files, shapes[INPUT][1], cache)
        cfg.int8_calibrator = calibrator
        cfg.set_calibration_profile(profile)
    start = time.perf_counter()
    try:
        plan = builder.build_serialized_network(network, cfg)
    finally:
        if calibrator is not None:
            calibrator.free()
    if plan is None:
        raise BuildError(f"TensorRT {trt.__version__} failed to build {onnx_path} ({config.precision}); "
                         "see the TensorRT log above")
    timing_path.write_bytes(bytes(cfg.get_timing_cache().serialize()))
    key = EngineKey.for_build(platform, config.precision, shapes, sha256_file(onnx_path))
    sidecar = Sidecar(key=key, engine_sha256="", engine_bytes=0, model_metadata=info.to_metadata(),
                      onnx_path=str(onnx_path.resolve()),
                      build={**asdict(config), "seconds": round(time.perf_counter() - start, 1)})
    write_engine(engine_path, bytes(plan), sidecar)
    return sidecar


def engine_for(onnx_path: str | Path, config: BuildConfig, rebuild: bool = True, cache_dir: str | Path | None = None,
               platform: Platform | None = None) -> tuple[Path, Sidecar]:
    """The cached engine for `onnx_path` under `config`, built when missing or stale (the backend's entry)."""
    _, shapes = input_shapes(onnx_path, config)
    engine = engine_path_for(onnx_path, config.precision, cache_dir)
    if not rebuild and not engine.is_file():
        # Said before TensorRT is even imported: the usual mistake on a robot is a skipped build-ahead step.
        raise missing_engine_error(onnx_path, config.precision, engine)
    platform = platform or detect_platform()
    wanted = EngineKey.for_build(platform, config.precision, shapes, sha256_file(onnx_path))
    return ensure_engine(onnx_path, wanted, lambda path: build_engine(onnx_path, path, config, platform),
                         rebuild=rebuild, cache_dir=cache_dir)
