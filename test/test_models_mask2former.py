"""Mask2Former R50 (masked cross-attention) and Mask2Former-EMCA: names, size, compute, EMCA equations,
deformable-attention sampling, export parity and learning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_checks import normalise

from seg_perception.models.mask2former_head import (
    EfficientMaskedCrossAttention, Mask2Former, Mask2FormerHead, MaskedCrossAttentionLayer, _sine_position_table)
from seg_perception.models.ops.ms_deform_attn import ms_deform_attn_core
from seg_perception.models.registry import build_model, get_variant
from seg_perception.models.resnet import ResNet

VARIANTS = ("mask2former-r50", "mask2former-emca-r50")
FIXTURES = Path(__file__).resolve().parents[1] / "seg_perception" / "models" / "fixtures"
P = "sem_seg_head.predictor."

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build_model(name).eval() for name in VARIANTS}


# --- names and size ----------------------------------------------------------------------------------

# Spelled out from the official code (Mask2Former msdeformattn.py / transformer decoder, detectron2 ResNet,
# PEM's PEM_CA), independently of the fixture files.
OFFICIAL_KEYS = {
    "backbone.stem.conv1.weight": [64, 3, 7, 7],
    "backbone.res2.0.shortcut.weight": [256, 64, 1, 1],
    "backbone.res3.0.conv2.weight": [128, 128, 3, 3],
    "backbone.res4.5.conv3.norm.running_var": [1024],
    "backbone.res5.2.conv1.weight": [512, 2048, 1, 1],
    "sem_seg_head.pixel_decoder.input_proj.0.0.weight": [256, 2048, 1, 1],
    "sem_seg_head.pixel_decoder.input_proj.2.1.weight": [256],
    "sem_seg_head.pixel_decoder.transformer.level_embed": [3, 256],
    "sem_seg_head.pixel_decoder.transformer.encoder.layers.5.self_attn.sampling_offsets.weight": [192, 256],
    "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.attention_weights.bias": [96],
    "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.linear1.weight": [1024, 256],
    "sem_seg_head.pixel_decoder.adapter_1.norm.weight": [256],
    "sem_seg_head.pixel_decoder.layer_1.weight": [256, 256, 3, 3],
    "sem_seg_head.pixel_decoder.mask_features.bias": [256],
    P + "query_feat.weight": [100, 256],
    P + "query_embed.weight": [100, 256],
    P + "level_embed.weight": [3, 256],
    P + "transformer_self_attention_layers.8.self_attn.in_proj_weight": [768, 256],
    P + "transformer_ffn_layers.8.linear1.weight": [2048, 256],
    P + "decoder_norm.weight": [256],
    P + "class_embed.weight": [20, 256],
    P + "mask_embed.layers.2.weight": [256, 256],
}
CROSS_KEYS = {
    "mask2former-r50": {"multihead_attn.in_proj_weight": [768, 256], "multihead_attn.out_proj.weight": [256, 256],
                        "norm.weight": [256]},
    "mask2former-emca-r50": {"feature_proj.to_query_3x3.weight": [256, 1, 3, 3], "feature_proj.bn.running_mean": [256],
                             "feature_proj.out.weight": [256, 256], "query_proj.0.weight": [256],
                             "query_proj.1.weight": [256, 256], "proj.weight": [256, 256],
                             "final.bias": [256], "alpha": [1, 1, 256]},
}


@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_matches_fixture_and_official_names(models, name):
    shapes = {k: list(v.shape) for k, v in models[name].state_dict().items()}
    assert shapes == json.loads((FIXTURES / f"{name}.json").read_text())
    expected = {**OFFICIAL_KEYS, **{f"{P}transformer_cross_attention_layers.{i}.{k}": s
                                     for i in (0, 8) for k, s in CROSS_KEYS[name].items()}}
    assert {k: shapes.get(k) for k in expected} == expected
    # empty input_proj (pixel-decoder width == hidden width) has no keys, as in the official checkpoints
    assert not any(k.startswith(P + "input_proj") for k in shapes)


@pytest.mark.parametrize("name", VARIANTS)
def test_params_within_3_percent_of_44m(models, name):
    ref = get_variant("mask2former-r50").references[0]
    params_m = sum(p.numel() for p in models[name].parameters()) / 1e6
    assert abs(params_m - ref.params_m) / ref.params_m < 0.03, params_m


def test_gflops_at_ade20k_512_within_5_percent():
    """fvcore (1 MAC = 1 FLOP) on the whole model incl. semantic inference, 150 classes, 512x512; with the
    official post-processing order, as detectron2's analyze_model counts it. EMCA must be cheaper."""
    from seg_perception.models.flops import count_gflops

    ref = get_variant("mask2former-r50").references[0]
    assert (ref.input_size, ref.num_classes) == ((512, 512), 150)
    counts = {}
    for name in VARIANTS:
        model = build_model(name, num_classes=150).eval()
        model.upsample_masks_first = True
        counts[name] = count_gflops(model, (512, 512))
    assert abs(counts["mask2former-r50"] - ref.gflops) / ref.gflops < 0.05, counts
    assert counts["mask2former-emca-r50"] < counts["mask2former-r50"] - 1.0, counts


# --- EMCA equations ----------------------------------------------------------------------------------

def emca_by_the_formulas(layer: EfficientMaskedCrossAttention, tgt, memory, pos, query_pos, mask_logits):
    """Direct per-query, per-head implementation of S = K^T Q, G = argmax, K_p = K[G],
    A = (Q * K_p) W_A, B = alpha * A / ||A|| + K_p, out = B W_out + tgt (PEM normalises A over queries)."""
    b_sz, q_n, c = tgt.shape
    h = layer.nhead
    d = c // h
    fp = layer.feature_proj
    feat = F.conv2d(F.batch_norm(memory + pos, fp.bn.running_mean, fp.bn.running_var, fp.bn.weight, fp.bn.bias,
                                 eps=fp.bn.eps), fp.to_query_3x3.weight, fp.to_query_3x3.bias, padding=1,
                    groups=c)
    keys = feat.flatten(2).transpose(1, 2) @ fp.out.weight.T + fp.out.bias
    keys = keys / keys.norm(dim=-1, keepdim=True)
    ln, lin = layer.query_proj
    queries = F.layer_norm(tgt + query_pos, (c,), ln.weight, ln.bias, ln.eps) @ lin.weight.T + lin.bias
    queries = queries / queries.norm(dim=-1, keepdim=True)
    out = torch.empty_like(tgt)
    for bi in range(b_sz):
        proto = torch.empty(q_n, c)
        for qi in range(q_n):
            allowed = mask_logits[bi, qi] >= 0
            if not allowed.any():
                allowed = torch.ones_like(allowed)
            for hi in range(h):
                k_h = keys[bi, :, hi * d:(hi + 1) * d]
                s = k_h @ queries[bi, qi, hi * d:(hi + 1) * d]
                g = int(torch.where(allowed, s, torch.tensor(-math.inf)).argmax())
                proto[qi, hi * d:(hi + 1) * d] = k_h[g]
        a = (queries[bi] * proto) @ layer.proj.weight.T + layer.proj.bias
        gated = layer.alpha[0] * a / a.norm(dim=0, keepdim=True) + proto
        out[bi] = gated @ layer.final.weight.T + layer.final.bias + tgt[bi]
    return out


def test_emca_matches_direct_formulas():
    torch.manual_seed(1)
    c, h, q, hh, ww = 32, 4, 6, 5, 7
    layer = EfficientMaskedCrossAttention(c, h).eval()
    with torch.no_grad():
        layer.alpha.uniform_(0.5, 1.5)
        layer.feature_proj.bn.running_mean.normal_()
        layer.feature_proj.bn.running_var.uniform_(0.5, 2.0)
    tgt, query_pos = torch.randn(2, q, c), torch.randn(2, q, c)
    memory, pos = torch.randn(2, c, hh, ww), torch.randn(1, c, hh, ww)
    mask_logits = torch.randn(2, q, hh * ww)
    mask_logits[0, 2] = -1.0  # an empty mask: that query looks everywhere
    mask_logits[1, 4] = -1.0
    mask_logits[1, 4, 33] = 2.0  # a single allowed pixel: the prototype must be that pixel for every head
    with torch.no_grad():
        got = layer(tgt, memory, pos, query_pos, mask_logits)
        want = emca_by_the_formulas(layer, tgt, memory, pos, query_pos, mask_logits)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_masked_cross_attention_respects_masks_and_unmasks_empty_queries():
    torch.manual_seed(2)
    layer = MaskedCrossAttentionLayer(32, 4).eval()
    tgt, query_pos = torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    memory, pos = torch.randn(1, 32, 4, 4), torch.randn(1, 32, 4, 4)
    mask = torch.full((1, 3, 16), -1.0)
    mask[0, 0, :8] = 1.0  # query 0 sees the first half only; query 1 sees nothing -> everything
    mask[0, 2] = 1.0
    with torch.no_grad():
        out = layer(tgt, memory, pos, query_pos, mask)
        changed = memory.clone()
        changed[..., 2:, :] = torch.randn(1, 32, 2, 4)  # the second half of the pixels
        out2 = layer(tgt, changed, pos, query_pos, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 0], out2[0, 0])  # query 0 never saw the changed pixels
    assert not torch.allclose(out[0, 1], out2[0, 1])  # the un-masked empty query did


def test_attention_mask_from_resized_features_equals_the_official_order(models):
    # the export predicts the attention masks from features resized to each level; eager resizes the masks
    decoder = models["mask2former-r50"].sem_seg_head.predictor
    torch.manual_seed(4)
    output, features = torch.randn(1, 100, 256), torch.randn(1, 256, 24, 40)
    with torch.no_grad():
        for size in [(3, 5), (6, 10), (12, 20), (7, 13), (24, 40)]:
            resized = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
            official = decoder.attention_mask(output, features, size)
            assert official.shape == (1, 100, size[0] * size[1])
            torch.testing.assert_close(decoder.attention_mask(output, resized, size), official,
                                       atol=1e-4, rtol=1e-4)


# --- building blocks vs the official formulations -------------------------------------------------------

def test_sine_position_table_matches_cumsum_formulation():
    h, w, n = 5, 7, 16
    not_mask = torch.ones(1, h, w)
    y = not_mask.cumsum(1) / (h + 1e-6) * 2 * math.pi
    x = not_mask.cumsum(2) / (w + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(n) // 2) / n)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    official = torch.cat((py, px), dim=3).permute(0, 3, 1, 2)[0]
    torch.testing.assert_close(torch.from_numpy(_sine_position_table(h, w, n)), official, atol=1e-5, rtol=0)


def test_deformable_sampling_at_pixel_centres_reads_those_pixels():
    torch.manual_seed(3)
    shapes = [(3, 4), (2, 2)]
    heads, d = 2, 5
    value = torch.randn(1, sum(h * w for h, w in shapes), heads, d)
    picks = [(0, 2, 1), (1, 1, 0), (0, 0, 3)]  # (level, row, col) per query
    loc = torch.zeros(1, len(picks), heads, len(shapes), 1, 2)
    weights = torch.zeros(1, len(picks), heads, len(shapes), 1)
    for qi, (lvl, r, c) in enumerate(picks):
        h, w = shapes[lvl]
        loc[0, qi, :, lvl, 0] = torch.tensor([(c + 0.5) / w, (r + 0.5) / h])
        weights[0, qi, :, lvl, 0] = 1.0
    out = ms_deform_attn_core(value, shapes, loc, weights)
    starts = [0, shapes[0][0] * shapes[0][1]]
    for qi, (lvl, r, c) in enumerate(picks):
        want = value[0, starts[lvl] + r * shapes[lvl][1] + c].reshape(-1)
        torch.testing.assert_close(out[0, qi], want)


# --- deployment -------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # from torch's own MHA shape checks
@pytest.mark.parametrize("name", VARIANTS)
def test_export_agrees_with_pytorch(models, name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from seg_perception.backends.deploy_model import model_info_for
    from seg_perception.deploy.export import export_onnx

    model = models[name]
    info = model_info_for(name, (64, 64), with_logits=True)
    path = export_onnx(model, info, tmp_path / f"{name}.onnx", with_logits=True)
    image = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels, confidence, scores = sess.run(None, {"image": image})
    x = normalise(image)
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(scores, ref, atol=1e-4, rtol=1e-4)
    top = np.sort(ref, axis=1)
    decided = (top[:, -1] - top[:, -2]) > 1e-4  # ignore near-ties
    assert (labels[decided] == ref.argmax(1)[decided]).all()
    # semantic scores are the confidence (no softmax on top of them)
    np.testing.assert_allclose(confidence.astype(np.float32), np.clip(np.round(ref.max(1) * 255), 0, 255), atol=1)


# --- learning ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("cross_attention", ["masked", "emca"])
def test_family_overfits_a_few_frames(cross_attention):
    torch.manual_seed(0)
    # R50 topology at reduced width, fewer queries/layers: tiny enough for CPU, same code paths
    backbone = ResNet(50, stem_channels=16, base_channels=64)
    head = Mask2FormerHead(4, in_channels=tuple(backbone.out_channels), cross_attention=cross_attention,
                           conv_dim=64, mask_dim=64, enc_layers=1, hidden_dim=64, num_queries=8,
                           dim_feedforward=128, dec_layers=3)
    model = Mask2Former(backbone, head)
    images = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, :, 32:] = 1
    labels[0, 40:, :] = 2
    labels[1, :16, :16] = 3
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    model.train()
    for _ in range(100):
        scores = model(images)
        # the scores are an unnormalised class mixture: normalise per pixel and take the NLL
        probs = scores / scores.sum(1, keepdim=True).clamp_min(1e-6)
        loss = F.nll_loss(probs.clamp_min(1e-6).log(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.2 * losses[0], (losses[0], losses[-1])
