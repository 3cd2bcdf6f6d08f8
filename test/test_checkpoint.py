"""load_checkpoint against official-format files written from the JSON key fixtures (random values), and
checkpoints that carry code: refused unless trusted, and the code never runs."""

from __future__ import annotations

import builtins
import pickle
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seg_perception.models.checkpoint import (CheckpointError, key_fixture, load_checkpoint,  # noqa: E402
                                              read_file, read_fixture, write_fixture)
from seg_perception.models.registry import build_model  # noqa: E402
from seg_perception.models.zoo import COUNTS_FILE  # noqa: E402

FIXTURES = COUNTS_FILE.parent


def random_state_dict(fixture: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(*s, generator=g))
            for k, s in fixture.items()}


@pytest.fixture(scope="module")
def official():
    return random_state_dict(read_fixture(FIXTURES / "metaseg-t.json"))


def assert_loaded(model, state):
    own = model.state_dict()
    for k, v in state.items():
        assert torch.equal(own[k.removeprefix("module.")], v), k


def test_mmseg_pth_with_meta_loads_with_no_differences(tmp_path, official):
    path = tmp_path / "metaseg_t_city.pth"
    # mmcv checkpoints carry non-tensor metadata (here a numpy array) beside the weights
    torch.save({"meta": {"mmcv_version": "1.7.0", "CLASSES": ("road",), "hist": np.arange(3)},
                "state_dict": official, "optimizer": {"state": {}}}, path)
    model = build_model("metaseg-t")
    report = load_checkpoint(model, path)
    assert report.ok and not report.optional_missing and len(report.loaded) == len(official)
    assert_loaded(model, official)


def test_dataparallel_prefix_and_plain_state_dict(official):
    model = build_model("metaseg-t")
    report = load_checkpoint(model, {f"module.{k}": v for k, v in official.items()})
    assert report.ok
    assert_loaded(model, official)


def test_detectron2_pickle_of_numpy_arrays(tmp_path, official):
    path = tmp_path / "model_final.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in official.items()}, "__author__": "test"}, f)
    model = build_model("metaseg-t")
    assert load_checkpoint(model, path).ok
    assert_loaded(model, official)


def test_unused_conv_seg_may_be_absent(official):
    trimmed = {k: v for k, v in official.items() if "conv_seg" not in k}
    report = load_checkpoint(build_model("metaseg-t"), trimmed)
    assert report.ok and report.optional_missing == ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]


def test_strict_lists_missing_unexpected_and_mismatched_keys(official):
    bad = dict(official)
    del bad["decode_head.attn4.attn.q.weight"]
    bad["decode_head.auxiliary.weight"] = torch.zeros(1)
    bad["decode_head.linear_pred.weight"] = torch.zeros(150, 128, 1, 1)  # ADE20K classes into a 19-class model
    model = build_model("metaseg-t")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, bad)
    text = str(err.value)
    for name in ("decode_head.attn4.attn.q.weight", "decode_head.auxiliary.weight", "decode_head.linear_pred.weight",
                 "(19, 128, 1, 1)", "(150, 128, 1, 1)"):
        assert name in text
    report = load_checkpoint(model, bad, strict=False)
    assert report.missing == ["decode_head.attn4.attn.q.weight"]
    assert report.unexpected == ["decode_head.auxiliary.weight"]
    assert report.mismatched == [("decode_head.linear_pred.weight", (19, 128, 1, 1), (150, 128, 1, 1))]
    key = "decode_head.attn3.attn.q.weight"
    assert torch.equal(model.state_dict()[key], official[key])  # non-strict still loads what matches


def test_backbone_only_imagenet_checkpoint_loads_into_the_encoder(official):
    imagenet = {k.removeprefix("backbone."): v for k, v in official.items() if k.startswith("backbone.")}
    model = build_model("metaseg-t")
    assert load_checkpoint(model.backbone, {"state_dict": imagenet}).ok


def test_missing_file_and_empty_container_raise_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(build_model("metaseg-t"), tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="no tensors"):
        load_checkpoint(build_model("metaseg-t"), {"state_dict": {"meta": "x"}})


def test_fixture_round_trip(tmp_path):
    model = build_model("scaseg-t")
    path = write_fixture(model, tmp_path / "f.json")
    assert read_fixture(path) == key_fixture(model)
    assert all(isinstance(s, list) for s in read_fixture(path).values())


def test_mmseg_training_checkpoint_skips_and_lists_the_auxiliary_head(tmp_path, official):
    path = tmp_path / "iter_160000.pth"
    aux = {"auxiliary_head.conv_seg.weight": torch.zeros(19, 64, 1, 1), "auxiliary_head.convs.0.conv.weight":
           torch.zeros(64, 160, 3, 3)}
    torch.save({"meta": {"iter": 160000}, "state_dict": {**official, **aux}}, path)
    model = build_model("metaseg-t")
    report = load_checkpoint(model, path)
    assert report.ok and report.skipped == list(aux)
    assert "skipped, used only in training (2): auxiliary_head.conv_seg.weight" in report.describe()
    assert_loaded(model, official)


def test_detectron2_mask2former_pickle_with_criterion_loads(tmp_path):
    """The official Mask2Former model-zoo layout: numpy arrays under 'model', FrozenBN (no step counters) and
    the loss's `criterion.empty_weight`, which strict loading used to report as unexpected."""
    fixture = {k: s for k, s in read_fixture(FIXTURES / "mask2former-r50.json").items()
               if not k.endswith("num_batches_tracked")}
    state = random_state_dict(fixture, seed=1)
    path = tmp_path / "model_final_f0c5f4.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": {**{k: v.numpy() for k, v in state.items()},
                               "criterion.empty_weight": np.ones(20, np.float32)},
                     "__author__": "Detectron2 Model Zoo"}, f)
    model = build_model("mask2former-r50")
    report = load_checkpoint(model, path)
    assert report.ok and report.skipped == ["criterion.empty_weight"]
    assert report.optional_missing and all(k.endswith("num_batches_tracked") for k in report.optional_missing)
    assert_loaded(model, state)


class _Payload:
    """Unpickling this calls open(marker, 'w'): a real payload that creates a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _payload_files(tmp_path, official):
    marker = tmp_path / "payload_ran"
    pkl = tmp_path / "model_final.pkl"
    with pkl.open("wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in official.items()}, "extra": _Payload(marker)}, f)
    pth = tmp_path / "metaseg.pth"
    torch.save({"meta": {"hook": _Payload(marker)}, "state_dict": official}, pth)
    return marker, pkl, pth


def test_checkpoints_carrying_code_are_refused_and_the_code_never_runs(tmp_path, official):
    marker, pkl, pth = _payload_files(tmp_path, official)
    for path in (pkl, pth):
        with pytest.raises(CheckpointError, match="--trust-checkpoint") as err:
            load_checkpoint(build_model("metaseg-t"), path)
        assert ".open'" in str(err.value) and not marker.exists(), path  # names the global it refused
    # the same files through the CLI: one line on stderr, exit 2, nothing run
    code = "import sys; from seg_perception.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "export", "metaseg-t", "--checkpoint", str(pkl),
                           "--out", str(tmp_path / "m.onnx"), "--input-size", "64x64"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--trust-checkpoint" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()
    # the payload is live: the opt-in unpickles in full and runs it
    load_checkpoint(build_model("metaseg-t"), pkl, trusted=True)
    assert marker.exists()


def test_zoo_name_with_checkpoint_in_the_node_refuses_code_unless_trusted(tmp_path, official):
    """seg_node's `model:=metaseg-t:file` opens the torch backend; its error is what the node prints on exit."""
    from seg_perception.backends import BackendError
    from seg_perception.backends.torch_backend import TorchBackend

    marker, pkl, _ = _payload_files(tmp_path, official)
    with pytest.raises(BackendError, match="trust_checkpoint:=true"):
        TorchBackend.from_zoo(f"metaseg-t:{pkl}", input_size=(64, 64))
    assert not marker.exists()
    TorchBackend.from_zoo(f"metaseg-t:{pkl}", input_size=(64, 64), trusted=True).close()
    assert marker.exists()


def test_plain_checkpoints_need_no_trust_and_garbage_is_a_clear_error(tmp_path, official):
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": official, "epoch": 3, "config": {"crop": (64, 64)}}, path)
    assert read_file(path)["epoch"] == 3
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_file(junk)
