"""SegMAN: sizes and compute against the references, official key names, checkpoint loading, the stage-4
bias resize, small inputs, ONNX export (TensorRT-parsable, agreeing with PyTorch) and learning."""

from __future__ import annotations

import math
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fvcore")

from model_checks import export_and_compare, overfit_steps, synthetic_batch  # noqa: E402

from seg_perception.models.checkpoint import key_fixture, load_checkpoint, read_fixture  # noqa: E402
from seg_perception.models.flops import count_flops, count_params_m  # noqa: E402
from seg_perception.models.registry import build_model, get_variant  # noqa: E402
from seg_perception.models.segman_encoder import SegMANEncoder, bicubic_matrix  # noqa: E402
from seg_perception.models.segman_head import SegMANHead  # noqa: E402
from seg_perception.models.segmentor import EncoderDecoder  # noqa: E402
from seg_perception.models.zoo import COUNTS_FILE, count_key, load_counts  # noqa: E402

FIXTURES = COUNTS_FILE.parent
SEGMAN = ("segman-t", "segman-s", "segman-s-ade20k", "segman-b", "segman-l")
torch.set_num_threads(1)


def reference_settings():
    return [pytest.param(name, ref, id=f"{name}-{ref.input_size[0]}x{ref.input_size[1]}")
            for name in SEGMAN for ref in get_variant(name).references]


@pytest.mark.parametrize("name,ref", reference_settings())
def test_params_match_reference(name, ref):
    params = count_params_m(build_model(name, num_classes=ref.num_classes))
    assert abs(params - ref.params_m) / ref.params_m < 0.03, (name, params, ref.params_m)


@pytest.mark.parametrize("ref", get_variant("segman-t").references,
                         ids=lambda r: f"{r.input_size[0]}x{r.input_size[1]}")
def test_segman_t_gflops_live(ref):
    # ~18 s at 1024x2048 on one core; B/S/L are checked against the cached counts below
    flops = count_flops(build_model("segman-t", num_classes=ref.num_classes), ref.input_size)
    assert abs(flops.gflops - ref.gflops) / ref.gflops < 0.05, flops
    assert not flops.uncounted, flops.uncounted
    # the custom ops are counted by their own rules, not by the arithmetic that replaces them
    assert flops.by_operator["PythonOp.NeighborhoodAttention2D"] > 0
    assert flops.by_operator["PythonOp.SelectiveScan"] > 0


@pytest.mark.parametrize("name,ref", reference_settings())
def test_cached_gflops_match_reference(name, ref):
    # counting B/L at 1024x2048 takes minutes here: `seg-perception zoo --recount` writes the shipped cache
    got = load_counts().get(count_key(name, ref.input_size, ref.num_classes))
    assert got is not None, f"no cached count for {name}; run seg-perception zoo --recount {name}"
    assert abs(got["gflops"] - ref.gflops) / ref.gflops < 0.05, (name, got, ref.gflops)
    assert abs(got["params_m"] - ref.params_m) / ref.params_m < 0.03
    assert not got["uncounted_ops"]


def official_segman_keys(name: str) -> dict[str, tuple]:
    """Key -> shape from the official module tree (research/models.md §6.4), independent of our modules."""
    v = get_variant(name)
    enc, head = v.encoder_cfg, v.head_cfg
    bn = lambda p, c: {f"{p}.{s}": ((c,) if s != "num_batches_tracked" else ())  # noqa: E731
                       for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    wb = lambda p, *w: {f"{p}.weight": tuple(w), f"{p}.bias": (w[0],)}  # noqa: E731
    ln = lambda p, c: {f"{p}.weight": (c,), f"{p}.bias": (c,)}  # noqa: E731

    def ssm(p, c):
        r = math.ceil(c / 16)
        return {f"{p}.x_proj_weight": (4 * (r + 2), c, 1), f"{p}.dt_projs_weight": (4, c, r),
                f"{p}.dt_projs_bias": (4, c), f"{p}.A_logs": (4 * c, 1), f"{p}.Ds": (4 * c,)}

    def ffn(p, c, f):
        return wb(f"{p}.fc1", f, c, 1, 1) | wb(f"{p}.dwconv", f, 1, 3, 3) | wb(f"{p}.fc2", c, f, 1, 1)

    dims = enc["embed_dims"]
    keys = {"backbone.patch_embed.0.weight": (dims[0] // 2, 3, 3, 3), "backbone.patch_embed.3.weight":
            (dims[0] // 2, dims[0] // 2, 3, 3), "backbone.patch_embed.6.weight": (dims[0], dims[0] // 2, 3, 3),
            "backbone.patch_embed.9.weight": (dims[0], dims[0], 3, 3)}
    keys |= bn("backbone.patch_embed.1", dims[0] // 2) | bn("backbone.patch_embed.4", dims[0] // 2)
    keys |= bn("backbone.patch_embed.7", dims[0]) | bn("backbone.patch_embed.10", dims[0])
    for s, (c, depth, heads, k) in enumerate(zip(dims, enc["depths"], enc["num_heads"], enc["kernel_sizes"])):
        stage = f"backbone.layers.{2 * s}"
        keys[f"{stage}.rope.angle"] = (c // heads // 2,)
        for j in range(depth):
            p = f"{stage}.blocks.{j}"
            keys |= wb(f"{p}.cpe1", c, 1, 3, 3) | wb(f"{p}.cpe2", c, 1, 3, 3)
            keys |= ln(f"{p}.norm1", c) | ln(f"{p}.norm2", c)
            t = f"{p}.token_mixer"
            keys |= wb(f"{t}.qkv", 3 * c, c, 1, 1) | wb(f"{t}.lepe", c, 1, 5, 5) | wb(f"{t}.proj", c, c, 1, 1)
            keys[f"{t}.rpb.0"] = (heads, 2 * k - 1, 2 * k - 1)
            if s == 3:
                keys[f"{t}.rpb.1"] = (heads, 49, 49)
            else:
                keys |= wb(f"{t}.dwconv.0", c, 1, 3, 3) | bn(f"{t}.dwconv.1", c)
                keys |= ssm(f"{t}.ssm", c) | ln(f"{t}.norm", c)
            keys |= ffn(f"{p}.mlp", c, int(enc["mlp_ratios"][s] * c))
            if enc.get("layer_scale"):
                keys |= wb(f"{p}.layer_scale1", c, 1, 1, 1) | wb(f"{p}.layer_scale2", c, 1, 1, 1)
        if s < 3:
            keys[f"backbone.layers.{2 * s + 1}.0.weight"] = (dims[s + 1], c, 3, 3)
            keys |= bn(f"backbone.layers.{2 * s + 1}.1", dims[s + 1])
    e, p3 = head["channels"], head["feat_proj_dim"]

    def conv_module(p, cin, cout, k=1):
        return {f"{p}.conv.weight": (cout, cin, k, k)} | bn(f"{p}.bn", cout)

    d = "decode_head"
    keys |= wb(f"{d}.conv_seg", v.num_classes, e, 1, 1)
    keys |= conv_module(f"{d}.conv_downsample_2", e, 2 * e, 3) | conv_module(f"{d}.conv_downsample_4", e, 4 * e, 5)
    for i in (2, 3, 4):
        keys |= {f"{d}.linear_c{i}.proj.weight": (p3, dims[i - 1]), f"{d}.linear_c{i}.proj.bias": (p3,)}
    keys |= conv_module(f"{d}.linear_fuse", 3 * p3, e)
    for i in range(3):
        keys |= conv_module(f"{d}.reduce_channels.{i}", 4 * 2 ** i * e, e)
    keys |= ln(f"{d}.vssm.norm1", 3 * e) | ln(f"{d}.vssm.norm2", 3 * e) | wb(f"{d}.vssm.cpe1", 3 * e, 1, 3, 3)
    keys |= wb(f"{d}.vssm.cpe2", 3 * e, 1, 3, 3) | ssm(f"{d}.vssm.token_mixer", 3 * e)
    keys |= ffn(f"{d}.vssm.mlp", 3 * e, 12 * e)
    keys |= conv_module(f"{d}.short_path", e, e) | conv_module(f"{d}.image_pool.1", e, e)
    keys |= conv_module(f"{d}.proj_out", 3 * e, p3) | conv_module(f"{d}.cat", 5 * e + 3 * p3, e)
    return keys


@pytest.mark.parametrize("name", SEGMAN)
def test_state_dict_matches_fixture_and_official_naming(name):
    ours = {k: tuple(s) for k, s in key_fixture(build_model(name)).items()}
    assert ours == {k: tuple(s) for k, s in read_fixture(FIXTURES / f"{name}.json").items()}
    official = official_segman_keys(name)
    assert sorted(set(official) ^ set(ours)) == []
    assert {k: ours[k] for k in official} == official


def test_official_checkpoint_layout_loads_and_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    source = build_model("segman-t").eval()
    path = tmp_path / "segman_t_cityscapes.pth"
    torch.save({"meta": {"iter": 160000}, "state_dict": source.state_dict()}, path)
    torch.manual_seed(1)
    target = build_model("segman-t").eval()
    report = load_checkpoint(target, path)
    assert report.ok and len(report.loaded) == len(source.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


@pytest.mark.parametrize("src,dst", [(7, 7), (7, 2), (49, 64), (49, 256), (49, 30)])
def test_stage4_bias_resize_is_pytorch_bicubic(src, dst):
    table = torch.randn(3, src, src, dtype=torch.float64)
    want = torch.nn.functional.interpolate(table[None], size=(dst, dst), mode="bicubic", align_corners=False)[0]
    m = torch.from_numpy(bicubic_matrix(src, dst)).double()
    torch.testing.assert_close(m @ table @ m.T, want, rtol=0, atol=1e-6)


def test_encoder_strides_and_small_inputs():
    model = build_model("segman-t").eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 224, 224))
        assert [tuple(f.shape) for f in feats] == [(1, 32, 56, 56), (1, 64, 28, 28), (1, 144, 14, 14), (1, 192, 7, 7)]
        # 64x96: stage maps below the kernels (windows clamped to the map) still give finite logits
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 19, 64, 96) and torch.isfinite(out).all()


def shallow(name: str):
    """`name` with one block per stage: every distinct block configuration, at a fraction of the export time."""
    v = get_variant(name)
    model = EncoderDecoder(SegMANEncoder(**{**v.encoder_cfg, "depths": (1, 1, 1, 1)}),
                           SegMANHead(num_classes=v.num_classes, **v.head_cfg))
    # non-zero position biases, so a wrong bias index or resize would show
    for p in model.parameters():
        if p.dim() == 3 and p.shape[1] == p.shape[2]:
            torch.nn.init.normal_(p, std=1.0)
    return model.eval()


@pytest.mark.parametrize("name", ["segman-t", "segman-s", "segman-b", "segman-l"])
def test_onnx_export_is_trt_parsable_and_agrees(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from seg_perception.deploy.trt_compat import check_onnx

    torch.manual_seed(0)
    path = export_and_compare(shallow(name), name, (224, 224), tmp_path)
    for trt in ("8.6", "latest"):
        report = check_onnx(path, trt)
        assert report.ok, report.describe()


def test_segman_learns_a_few_synthetic_frames():
    torch.manual_seed(0)
    model = build_model("segman-t", num_classes=4)
    images, labels = synthetic_batch(2, 64, 64, 4)
    first, last = overfit_steps(model, images, labels, steps=30, lr=5e-3)
    assert last < 0.2 * first, (first, last)
