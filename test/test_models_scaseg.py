"""SCASeg (built from the paper's description): key fixture, cross-layer wiring, odd sizes, export, learning."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from model_checks import export_and_compare, overfit_steps, synthetic_batch  # noqa: E402

from seg_perception.models.checkpoint import key_fixture, read_fixture  # noqa: E402
from seg_perception.models.flops import count_flops  # noqa: E402
from seg_perception.models.registry import VARIANTS, build_model, get_variant  # noqa: E402
from seg_perception.models.scaseg_head import pool_to_grid  # noqa: E402
from seg_perception.models.zoo import COUNTS_FILE  # noqa: E402

torch.set_num_threads(1)
SCASEG = sorted(n for n, v in VARIANTS.items() if v.family == "scaseg")


def test_variants_registered_and_marked_unchecked():
    assert {"scaseg-t", "scaseg-b"} <= set(SCASEG)
    for name in SCASEG:
        refs = get_variant(name).references
        assert refs and all(not r.checked for r in refs), name


@pytest.mark.parametrize("name", SCASEG)
def test_state_dict_matches_fixture(name):
    ours = key_fixture(build_model(name))
    assert ours == read_fixture(COUNTS_FILE.parent / f"{name}.json")
    # all four stages feed the decoder: one lateral (query) projection and one Cross-Layer Block each
    for i in range(1, 5):
        assert f"decode_head.lateral{i}.weight" in ours and f"decode_head.clb{i}.attn.q.weight" in ours
    # strip queries/keys: one channel per head
    heads = ours["decode_head.clb4.attn.q.weight"][0]
    assert ours["decode_head.clb4.attn.k.weight"][0] == heads < ours["decode_head.clb4.attn.v.weight"][0]


def test_keys_blend_encoder_and_decoder_stages():
    # stage i's keys: encoder stages 1..i plus decoder outputs i+1..4 (E channels each)
    head = build_model("scaseg-t").decode_head
    enc, e = (32, 64, 160, 256), 64
    for i in range(1, 5):
        assert getattr(head, f"clb{i}").blend.in_channels == sum(enc[:i]) + e * (4 - i)


def test_finest_block_sees_the_deepest_stage():
    # D_1 = CLB(F_1, M_1) with D_2..D_4 in M_1: a change confined to F_4 must reach clb1's output itself
    torch.manual_seed(0)
    head = build_model("scaseg-t").decode_head.eval()
    d1 = []
    head.clb1.register_forward_hook(lambda mod, args, out: d1.append(out))
    feats = [torch.randn(1, c, 32 // s, 64 // s) for c, s in zip((32, 64, 160, 256), (1, 2, 4, 8))]
    with torch.no_grad():
        head(feats)
        feats[3] = feats[3] + torch.randn_like(feats[3])
        head(feats)
    assert (d1[0] - d1[1]).abs().max() > 1e-4


def test_pool_to_grid_averages_windows_and_crops():
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)
    got = pool_to_grid(x, (2, 3))
    assert got.shape == (1, 2, 2, 3)
    torch.testing.assert_close(got[0, 0, 0, 0], x[0, 0, :2, :2].mean())
    torch.testing.assert_close(got[0, 1, 1, 2], x[0, 1, 2:4, 4:6].mean())


@pytest.mark.parametrize("hw", [(32, 32), (64, 128), (100, 75)])
def test_runs_at_small_and_odd_sizes(hw):
    with torch.no_grad():
        out = build_model("scaseg-t").eval()(torch.randn(1, 3, *hw))
    assert out.shape == (1, 19, *hw) and torch.isfinite(out).all()


def test_gflops_counted_without_unknown_ops():
    flops = count_flops(build_model("scaseg-t", num_classes=150), (256, 256))
    assert flops.gflops > 0 and not flops.uncounted
    assert set(flops.by_module) == {"backbone", "decode_head"}


@pytest.mark.parametrize("name", SCASEG)
def test_onnx_export_agrees_with_pytorch(name, tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    export_and_compare(build_model(name).eval(), name, (64, 128), tmp_path, seed=1)


def test_scaseg_learns_a_few_synthetic_frames():
    torch.manual_seed(0)
    model = build_model("scaseg-t", num_classes=4)
    images, labels = synthetic_batch(2, 64, 64, 4)
    first, last = overfit_steps(model, images, labels, steps=30, lr=3e-3)
    assert last < 0.2 * first and last < 0.5, (first, last)


def test_export_refuses_dynamic_because_the_key_grid_is_fixed(tmp_path):
    from seg_perception.deploy.export import export_zoo

    with pytest.raises(ValueError, match="--dynamic is not supported for scaseg-t"):
        export_zoo("scaseg-t", (64, 128), tmp_path / "d.onnx", dynamic=True)
    assert not (tmp_path / "d.onnx").exists()
