"""load_checkpoint against official-format files written from the JSON key fixtures (random values)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seg_perception.models.checkpoint import (CheckpointError, key_fixture, load_checkpoint,  # noqa: E402
                                              read_fixture, write_fixture)
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
