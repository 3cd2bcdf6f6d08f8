"""MSCAN (SegNeXt encoder) and MetaSeg: sizes and compute against the references, official key names,
small-input robustness, ONNX export agreement, and learning."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fvcore")

from model_checks import assert_onnx_matches_torch, export_and_compare, overfit_steps, synthetic_batch  # noqa: E402

from seg_perception.backends.deploy_model import model_info_for  # noqa: E402
from seg_perception.deploy.export import export_onnx  # noqa: E402
from seg_perception.deploy.trt_compat import check_onnx  # noqa: E402
from seg_perception.models import registry  # noqa: E402
from seg_perception.models.checkpoint import key_fixture, read_fixture  # noqa: E402
from seg_perception.models.flops import count_flops, count_params_m  # noqa: E402
from seg_perception.models.layers import ConvModule, resize_concat_fuse  # noqa: E402
from seg_perception.models.metaseg_head import ChannelReductionAttention  # noqa: E402
from seg_perception.models.mscan import MSCAN  # noqa: E402
from seg_perception.models.registry import build_model, get_variant  # noqa: E402
from seg_perception.models.zoo import COUNTS_FILE  # noqa: E402

FIXTURES = COUNTS_FILE.parent
torch.set_num_threads(1)

# research/models.md §2.1: MSCAN backbone params (incl. the 4 stage LayerNorms), computed from the official code.
MSCAN_PARAMS_M = {"T": (registry.MSCAN_T, 3.904), "S": (registry.MSCAN_S, 13.450),
                  "B": (registry.MSCAN_B, 26.278), "L": (registry.MSCAN_L, 44.637)}
METASEG = ("metaseg-t", "metaseg-b", "metaseg-b-ade20k")


@pytest.mark.parametrize("variant", sorted(MSCAN_PARAMS_M))
def test_mscan_params_match_reference(variant):
    cfg, ref = MSCAN_PARAMS_M[variant]
    got = count_params_m(MSCAN(**cfg))
    assert abs(got - ref) / ref < 0.03, (variant, got, ref)


def test_mscan_returns_four_stages_at_strides_4_to_32():
    feats = MSCAN(**registry.MSCAN_T).eval()(torch.zeros(1, 3, 64, 128))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 16, 32), (1, 64, 8, 16), (1, 160, 4, 8), (1, 256, 2, 4)]


@pytest.mark.parametrize("name", ["metaseg-t", "metaseg-b-ade20k"])
def test_metaseg_params_and_gflops_at_ade20k_512(name):
    ref = next(r for r in get_variant(name).references if r.input_size == registry.ADE)
    model = build_model(name, num_classes=ref.num_classes)
    params, flops = count_params_m(model), count_flops(model, ref.input_size)
    assert abs(params - ref.params_m) / ref.params_m < 0.03, params
    assert abs(flops.gflops - ref.gflops) / ref.gflops < 0.05, flops
    assert not flops.uncounted, flops.uncounted


def test_metaseg_b_cityscapes_head_is_narrower():
    # the Base decoder width differs per dataset: 512 (Cityscapes) vs 768 (ADE20K)
    city, ade = build_model("metaseg-b"), build_model("metaseg-b-ade20k")
    ref = get_variant("metaseg-b").references[0]
    assert abs(count_params_m(city) - ref.params_m) / ref.params_m < 0.03
    assert city.decode_head.linear_fuse.conv.out_channels == 512
    assert ade.decode_head.linear_fuse.conv.out_channels == 768


def test_metaseg_t_cityscapes_gflops_at_1024x2048():
    ref = next(r for r in get_variant("metaseg-t").references if r.input_size == registry.CITY)
    flops = count_flops(build_model("metaseg-t"), ref.input_size).gflops
    assert abs(flops - ref.gflops) / ref.gflops < 0.05, flops


def official_metaseg_keys(embed_dims, depths, embed_dim, num_classes) -> dict[str, tuple]:
    """Key -> shape from the official naming rules (research/models.md §2.3, §3.4), independent of our modules."""
    bn = lambda p, c: {f"{p}.{s}": ((c,) if s != "num_batches_tracked" else ())  # noqa: E731
                       for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    keys: dict[str, tuple] = {}
    c1 = embed_dims[0]
    stem = "backbone.patch_embed1.proj"
    keys.update({f"{stem}.0.weight": (c1 // 2, 3, 3, 3), f"{stem}.0.bias": (c1 // 2,),
                 f"{stem}.3.weight": (c1, c1 // 2, 3, 3), f"{stem}.3.bias": (c1,)})
    keys.update(bn(f"{stem}.1", c1 // 2) | bn(f"{stem}.4", c1))
    ratios = (8, 8, 4, 4)
    for i, (c, d) in enumerate(zip(embed_dims, depths), start=1):
        if i > 1:
            keys[f"backbone.patch_embed{i}.proj.weight"] = (c, embed_dims[i - 2], 3, 3)
            keys[f"backbone.patch_embed{i}.proj.bias"] = (c,)
            keys.update(bn(f"backbone.patch_embed{i}.norm", c))
        for j in range(d):
            p = f"backbone.block{i}.{j}"
            keys.update(bn(f"{p}.norm1", c) | bn(f"{p}.norm2", c))
            keys[f"{p}.layer_scale_1"] = keys[f"{p}.layer_scale_2"] = (c,)
            for proj in ("proj_1", "proj_2"):
                keys[f"{p}.attn.{proj}.weight"], keys[f"{p}.attn.{proj}.bias"] = (c, c, 1, 1), (c,)
            sgu = {"conv0": (5, 5), "conv0_1": (1, 7), "conv0_2": (7, 1), "conv1_1": (1, 11), "conv1_2": (11, 1),
                   "conv2_1": (1, 21), "conv2_2": (21, 1)}
            for n, k in sgu.items():
                keys[f"{p}.attn.spatial_gating_unit.{n}.weight"] = (c, 1, *k)
                keys[f"{p}.attn.spatial_gating_unit.{n}.bias"] = (c,)
            keys[f"{p}.attn.spatial_gating_unit.conv3.weight"] = (c, c, 1, 1)
            keys[f"{p}.attn.spatial_gating_unit.conv3.bias"] = (c,)
            h = c * ratios[i - 1]
            keys |= {f"{p}.mlp.fc1.weight": (h, c, 1, 1), f"{p}.mlp.fc1.bias": (h,),
                     f"{p}.mlp.dwconv.dwconv.weight": (h, 1, 3, 3), f"{p}.mlp.dwconv.dwconv.bias": (h,),
                     f"{p}.mlp.fc2.weight": (c, h, 1, 1), f"{p}.mlp.fc2.bias": (c,)}
        keys[f"backbone.norm{i}.weight"] = keys[f"backbone.norm{i}.bias"] = (c,)
    heads = {2: 2, 3: 4, 4: 8}
    for i in (2, 3, 4):
        c, n, p = embed_dims[i - 1], heads[i], f"decode_head.attn{i}"
        for norm in ("norm1", "norm3", "attn.norm"):
            keys[f"{p}.{norm}.weight"] = keys[f"{p}.{norm}.bias"] = (c,)
        keys |= {f"{p}.attn.q.weight": (n, c), f"{p}.attn.k.weight": (n, c), f"{p}.attn.v.weight": (c, c),
                 f"{p}.attn.proj.weight": (c, c), f"{p}.attn.proj.bias": (c,),
                 f"{p}.attn.sr.weight": (c, c, 1, 1), f"{p}.attn.sr.bias": (c,),
                 f"{p}.mlp.fc1.weight": (2 * c, c, 1, 1), f"{p}.mlp.fc1.bias": (2 * c,),
                 f"{p}.mlp.fc2.weight": (c, 2 * c, 1, 1), f"{p}.mlp.fc2.bias": (c,)}
    keys["decode_head.linear_fuse.conv.weight"] = (embed_dim, sum(embed_dims[1:]), 1, 1)
    keys.update(bn("decode_head.linear_fuse.bn", embed_dim))
    keys |= {"decode_head.linear_pred.weight": (num_classes, embed_dim, 1, 1),
             "decode_head.linear_pred.bias": (num_classes,),
             "decode_head.conv_seg.weight": (num_classes, 128, 1, 1), "decode_head.conv_seg.bias": (num_classes,)}
    return keys


@pytest.mark.parametrize("name", METASEG)
def test_state_dict_matches_fixture_and_official_naming(name):
    v = get_variant(name)
    model = build_model(name)
    ours = {k: tuple(s) for k, s in key_fixture(model).items()}
    fixture = {k: tuple(s) for k, s in read_fixture(FIXTURES / f"{name}.json").items()}
    assert ours == fixture
    official = official_metaseg_keys(v.encoder_cfg["embed_dims"], v.encoder_cfg["depths"],
                                     v.head_cfg["embed_dim"], v.num_classes)
    assert sorted(set(official) ^ set(ours)) == []
    assert {k: ours[k] for k in official} == official


def test_cra_matches_the_written_out_equations():
    torch.manual_seed(0)
    cra = ChannelReductionAttention(dim=16, num_heads=2, pool_ratio=2).eval()
    h, w = 4, 6
    x = torch.randn(1, h * w, 16)
    with torch.no_grad():
        got = cra(x, h, w)
        pooled = torch.nn.functional.avg_pool2d(x.transpose(1, 2).reshape(1, 16, h, w), 2)
        kv = cra.act(cra.norm(cra.sr(pooled).flatten(2).transpose(1, 2)))[0]  # M x C
        q, k, v = x[0] @ cra.q.weight.T, kv @ cra.k.weight.T, kv @ cra.v.weight.T
        outs = []
        for head in range(2):
            logits = torch.outer(q[:, head], k[:, head]) * (8 ** -0.5)  # rank-1: one channel per head
            outs.append(logits.softmax(-1) @ v[:, head * 8:(head + 1) * 8])
        want = cra.proj(torch.cat(outs, dim=1))
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sizes", [[(4, 8), (8, 16), (16, 32)], [(1, 1), (3, 5), (13, 10)]])
def test_fuse_before_resize_equals_the_official_order(sizes):
    # the export runs the 1x1 fuse (BN folded) on each map before its resize: same numbers, fewer MACs
    torch.manual_seed(0)
    fuse = ConvModule(6 + 5 + 4, 7).eval()
    fuse.bn.running_mean.normal_()
    fuse.bn.running_var.uniform_(0.5, 2.0)
    torch.nn.init.normal_(fuse.bn.weight)
    torch.nn.init.normal_(fuse.bn.bias)
    maps = [torch.randn(1, c, *hw) for c, hw in zip((6, 5, 4), sizes)]
    with torch.no_grad():
        official = resize_concat_fuse(fuse, maps, maps[-1], before_resize=False)
        fused = resize_concat_fuse(fuse, maps, maps[-1], before_resize=True)
    assert official.shape == (1, 7, *sizes[-1]) and (official > 0).any() and (official == 0).any()
    torch.testing.assert_close(fused, official, rtol=1e-5, atol=1e-5)


def test_metaseg_export_fuses_each_stage_before_the_resize(tmp_path):
    onnx = pytest.importorskip("onnx")

    path = export_onnx(build_model("metaseg-b").eval(), model_info_for("metaseg-b", (64, 128)), tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    fan_in = {weights[n.input[1]][1] for n in graph.node if n.op_type == "Conv" and n.input[1] in weights}
    assert 320 + 128 + 512 not in fan_in and {128, 320, 512} <= fan_in  # no 960-channel conv at stride 8


@pytest.mark.parametrize("hw", [(32, 32), (64, 128), (100, 75)])
def test_metaseg_t_runs_at_small_and_odd_sizes(hw):
    # pool windows shrink to the map (>= 1x1 keys) so inputs below 512 px still run
    with torch.no_grad():
        out = build_model("metaseg-t").eval()(torch.randn(1, 3, *hw))
    assert out.shape == (1, 19, *hw) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["metaseg-t", "metaseg-b"])
def test_onnx_export_agrees_with_pytorch(name, tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    export_and_compare(build_model(name).eval(), name, (64, 128), tmp_path, seed=0)


def test_dynamic_export_agrees_with_pytorch_at_other_sizes(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model("metaseg-t").eval()
    info = model_info_for("metaseg-t", (128, 256), with_logits=True)
    path = export_onnx(model, info, tmp_path / "dyn.onnx", with_logits=True, dynamic=True)
    for size in [(128, 256), (256, 512), (160, 96)]:  # the export size, larger, and another aspect ratio
        assert_onnx_matches_torch(model, path, dataclasses.replace(info, input_size=size))
    for trt_version in ("8.6", "latest"):  # the graph reads its size from the cast input, not the UINT8 one
        report = check_onnx(path, trt_version)
        assert report.ok, report.describe()


def test_metaseg_learns_a_few_synthetic_frames():
    torch.manual_seed(0)
    model = build_model("metaseg-t", num_classes=4)
    images, labels = synthetic_batch(2, 64, 64, 4)
    first, last = overfit_steps(model, images, labels, steps=30, lr=3e-3)
    assert last < 0.2 * first and last < 0.5, (first, last)
