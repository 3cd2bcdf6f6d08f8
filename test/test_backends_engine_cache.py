"""Engine cache: sidecars keyed by TensorRT version, GPU, precision, shapes and ONNX sha256; a stale or corrupt
engine is rebuilt or refused with a message naming the difference. Real files; the build step is a stand-in
that writes bytes (TensorRT itself is exercised in test_backends_tensorrt.py on GPU machines)."""

from __future__ import annotations

import json

import pytest

from deploy_graphs import contract_onnx
from seg_perception.backends import BackendError, open_backend
from seg_perception.backends.engine_cache import (
    EngineCacheError, EngineKey, Platform, Sidecar, engine_path_for, ensure_engine, read_sidecar, sha256_file,
    sidecar_path, verify_engine, write_engine,
)

ORIN = Platform("10.3.0", "Orin", "8.7")
SHAPES = {"image": [[1, 8, 16, 3]] * 3}


@pytest.fixture
def onnx_file(tmp_path):
    return contract_onnx(tmp_path / "model.onnx")


class Builder:
    """Writes a stand-in plan and its sidecar the way build_engine does; counts calls."""

    def __init__(self, key: EngineKey) -> None:
        self.key, self.calls = key, 0

    def __call__(self, path):
        self.calls += 1
        sidecar = Sidecar(key=self.key, engine_sha256="", engine_bytes=0, model_metadata={"m": "1"})
        write_engine(path, f"plan #{self.calls}".encode(), sidecar)
        return sidecar


def key_for(onnx_file, platform=ORIN, precision="fp16"):
    return EngineKey.for_build(platform, precision, SHAPES, sha256_file(onnx_file))


def test_builds_once_then_reuses(onnx_file):
    key = key_for(onnx_file)
    build = Builder(key)
    engine, sidecar = ensure_engine(onnx_file, key, build)
    assert engine == onnx_file.with_name("model.fp16.engine") and build.calls == 1
    assert sidecar_path(engine).is_file() and sidecar.engine_sha256 == sha256_file(engine)
    again, _ = ensure_engine(onnx_file, key, build)
    assert again == engine and build.calls == 1
    assert read_sidecar(engine).key == key  # JSON round trip


@pytest.mark.parametrize("change, named", [
    (dict(platform=Platform("10.7.0", "Orin", "8.7")), "TensorRT version: engine has 10.3.0, here 10.7.0"),
    (dict(platform=Platform("10.3.0", "NVIDIA GeForce RTX 4090", "8.9")), "GPU: engine has Orin, here NVIDIA"),
    (dict(precision="int8"), None),  # another precision is another file, not a mismatch
])
def test_mismatch_is_named_and_rebuilt_only_when_allowed(onnx_file, change, named):
    old = key_for(onnx_file)
    ensure_engine(onnx_file, old, Builder(old))
    new = key_for(onnx_file, **change)
    if named is None:
        assert engine_path_for(onnx_file, "int8") != engine_path_for(onnx_file, "fp16")
        with pytest.raises(EngineCacheError, match="no TensorRT engine at .*model.int8.engine.*build-engine"):
            ensure_engine(onnx_file, new, Builder(new), rebuild=False)
        return
    with pytest.raises(EngineCacheError, match=named) as err:
        ensure_engine(onnx_file, new, Builder(new), rebuild=False)
    assert "compute capability" in str(err.value) or "TensorRT version" in str(err.value)
    rebuild = Builder(new)
    engine, sidecar = ensure_engine(onnx_file, new, rebuild)
    assert rebuild.calls == 1 and sidecar.key == new and read_sidecar(engine).key == new


def test_changed_onnx_invalidates_the_engine(onnx_file):
    key = key_for(onnx_file)
    ensure_engine(onnx_file, key, Builder(key))
    contract_onnx(onnx_file, size=(8, 32))  # re-exported at another size
    with pytest.raises(EngineCacheError, match=r"ONNX file \(sha256\)"):
        ensure_engine(onnx_file, key_for(onnx_file), Builder(key), rebuild=False)


def test_corrupt_or_unexplained_engines_are_refused(onnx_file):
    key = key_for(onnx_file)
    engine, _ = ensure_engine(onnx_file, key, Builder(key))
    engine.write_bytes(b"plan #1 but truncated")
    with pytest.raises(EngineCacheError, match="corrupt or was replaced"):
        verify_engine(engine)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(EngineCacheError, match="unreadable"):
        verify_engine(engine)
    sidecar_path(engine).unlink()
    with pytest.raises(EngineCacheError, match="has no sidecar"):
        verify_engine(engine)
    rebuilt = Builder(key)
    ensure_engine(onnx_file, key, rebuilt)  # a broken cache entry is rebuilt when allowed
    assert rebuilt.calls == 1 and verify_engine(engine, platform=ORIN).key == key


def test_sidecar_from_a_newer_format_is_refused(onnx_file):
    key = key_for(onnx_file)
    engine, _ = ensure_engine(onnx_file, key, Builder(key))
    raw = json.loads(sidecar_path(engine).read_text())
    raw["format"] = 99
    sidecar_path(engine).write_text(json.dumps(raw))
    with pytest.raises(EngineCacheError, match="format 99"):
        read_sidecar(engine)


def test_tensorrt_backend_checks_files_before_tensorrt(onnx_file, tmp_path):
    from seg_perception.backends.tensorrt_backend import TensorRTBackend

    with pytest.raises(BackendError, match="model file not found"):
        open_backend(str(tmp_path / "missing.engine"))
    key = key_for(onnx_file)
    engine, _ = ensure_engine(onnx_file, key, Builder(key))
    engine.write_bytes(b"flipped bits")
    with pytest.raises(EngineCacheError, match="corrupt"):
        TensorRTBackend.from_engine(engine)
    with pytest.raises(EngineCacheError, match="rebuilding is disabled"):
        TensorRTBackend.from_onnx(onnx_file, precision="fp32", rebuild=False)
    with pytest.raises(ValueError, match="backend 'onnxruntime' cannot run it"):
        open_backend(str(engine), "onnxruntime")


def test_without_tensorrt_the_message_says_so(onnx_file):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        open_backend(str(onnx_file), "tensorrt", precision="fp32")


@pytest.mark.parametrize("text", ["[]", "null", '"a string"', '{"format": 1, "key": []}'])
def test_a_sidecar_that_is_not_an_object_is_named_not_a_traceback(onnx_file, text):
    key = key_for(onnx_file)
    engine, _ = ensure_engine(onnx_file, key, Builder(key))
    sidecar_path(engine).write_text(text)
    with pytest.raises(EngineCacheError, match="unreadable .*not a JSON object"):
        read_sidecar(engine)
    with pytest.raises(EngineCacheError, match="unreadable"):
        ensure_engine(onnx_file, key, Builder(key), rebuild=False)


def test_an_engine_that_is_not_an_intact_build_of_ours_is_kept_before_a_rebuild(onnx_file):
    key = key_for(onnx_file)
    engine = engine_path_for(onnx_file, "fp16")
    engine.write_bytes(b"someone's own plan")
    sidecar_path(engine).write_text("[]")
    rebuilt = Builder(key)
    ensure_engine(onnx_file, key, rebuilt)
    assert rebuilt.calls == 1 and engine.read_bytes() == b"plan #1"
    backup = engine.with_name(engine.name + ".bak")
    assert backup.read_bytes() == b"someone's own plan" and sidecar_path(backup).read_text() == "[]"
    engine.write_bytes(b"replaced by hand")  # the sidecar no longer matches: kept as .bak1
    ensure_engine(onnx_file, key, Builder(key))
    assert engine.with_name(engine.name + ".bak1").read_bytes() == b"replaced by hand"
    assert backup.read_bytes() == b"someone's own plan"
    stale = key_for(onnx_file, platform=Platform("10.7.0", "Orin", "8.7"))
    ensure_engine(onnx_file, stale, Builder(stale))  # an intact engine of ours, merely stale: replaced
    assert not engine.with_name(engine.name + ".bak2").exists()


def test_an_unwritable_cache_folder_is_found_before_the_build(onnx_file, tmp_path):
    key = key_for(onnx_file)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    build = Builder(key)
    with pytest.raises(EngineCacheError, match="not a writable folder.*engine_cache_dir"):
        ensure_engine(onnx_file, key, build, cache_dir=not_a_folder / "engines")
    assert build.calls == 0
