"""Mask2Former (semantic) head: deformable-attention pixel decoder + masked transformer decoder, and the
segmentor that turns its query masks into per-class scores.

`cross_attention="masked"` is Mask2Former's masked multi-head cross-attention; `"emca"` swaps it for the
Efficient Masked Cross-Attention (prototype selection: one argmax pixel per query and head, then a gated
linear update; the equations and module names of PEM's `PEM_CA`). State-dict names follow detectron2's
`sem_seg_head.pixel_decoder.*` / `sem_seg_head.predictor.*`.

Changed for export (opset 17, TensorRT), numerically equivalent unless noted:
- deformable attention samples with `grid_sample` (ops/ms_deform_attn.py) instead of the CUDA kernel;
- sine position embeddings and encoder reference points are constants per feature size (no CumSum);
- "un-mask a query whose mask is empty" is boolean algebra in an additive bias, not index assignment;
  EMCA uses the same per-query rule (PEM only un-masks when every query of a head is empty);
- einsums are matmuls; semantic inference runs at mask resolution (stride 4) and the class scores are
  upsampled, instead of upsampling 100 mask logits to the input size first (`upsample_masks_first=True`
  restores the official order; see docs/models.md for the cost).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg_perception.models.ops import static_hw, table_constant
from seg_perception.models.ops.ms_deform_attn import MSDeformAttn
from seg_perception.models.resnet import ConvNorm

CROSS_ATTENTION_KINDS = ("masked", "emca")


@lru_cache(maxsize=32)
def _sine_position_table(h: int, w: int, num_feats: int, temperature: float = 10000.0) -> np.ndarray:
    """DETR's normalised sine embedding for an all-valid h x w map: 2*num_feats x h x w (y half, then x)."""
    scale, eps = 2.0 * math.pi, 1e-6
    y = np.arange(1, h + 1, dtype=np.float64) / (h + eps) * scale
    x = np.arange(1, w + 1, dtype=np.float64) / (w + eps) * scale
    dim_t = temperature ** (2 * (np.arange(num_feats) // 2) / num_feats)

    def encode(v: np.ndarray) -> np.ndarray:
        p = v[:, None] / dim_t
        return np.stack([np.sin(p[:, 0::2]), np.cos(p[:, 1::2])], axis=2).reshape(len(v), num_feats)

    pos_y = np.broadcast_to(encode(y)[:, None, :], (h, w, num_feats))
    pos_x = np.broadcast_to(encode(x)[None, :, :], (h, w, num_feats))
    return np.ascontiguousarray(np.concatenate([pos_y, pos_x], axis=2).transpose(2, 0, 1), dtype=np.float32)


def sine_position_embedding(x: torch.Tensor, num_feats: int) -> torch.Tensor:
    """1 x 2*num_feats x H x W for feature map x; a constant in the exported graph."""
    return table_constant(_sine_position_table(*static_hw(x), num_feats), x.device, x.dtype)[None]


@lru_cache(maxsize=32)
def _reference_table(spatial_shapes: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Pixel centres of every level, normalised to [0, 1]: S x 2 (x, y)."""
    points = []
    for h, w in spatial_shapes:
        ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        points.append(np.stack([xs.ravel(), ys.ravel()], -1))
    return np.concatenate(points).astype(np.float32)


# --- pixel decoder -----------------------------------------------------------------------------------

class MSDeformEncoderLayer(nn.Module):
    def __init__(self, d_model: int = 256, d_ffn: int = 1024, n_levels: int = 3, n_heads: int = 8,
                 n_points: int = 4) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes):
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.ffn(src))

    def ffn(self, src: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return self.linear2(F.relu(self.linear1(src)))
        # exported as 1x1 convs over the tokens laid out B x C x 1 x L: ONNX Runtime's blocked convolutions beat
        # its Gemm on this shape, transposes included (129 vs 150 ms per layer at 512x1024, one thread)
        x = src.transpose(1, 2).unsqueeze(2)
        x = F.relu(F.conv2d(x, self.linear1.weight[:, :, None, None], self.linear1.bias))
        return F.conv2d(x, self.linear2.weight[:, :, None, None], self.linear2.bias).squeeze(2).transpose(1, 2)


class _EncoderLayers(nn.Module):
    """Holder that reproduces the official `transformer.encoder.layers.{i}` key path."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class MSDeformAttnTransformerEncoder(nn.Module):
    def __init__(self, d_model: int, num_layers: int, n_levels: int, **layer_kw) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.encoder = _EncoderLayers([MSDeformEncoderLayer(d_model, n_levels=n_levels, **layer_kw)
                                       for _ in range(num_layers)])
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[torch.Tensor], pos: list[torch.Tensor]) -> torch.Tensor:
        shapes = tuple(static_hw(s) for s in srcs)
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat([(p + self.level_embed[i].view(1, -1, 1, 1)).flatten(2).transpose(1, 2)
                         for i, p in enumerate(pos)], 1)
        ref = table_constant(_reference_table(shapes), src.device, src.dtype)
        ref = ref[None, :, None, :].expand(1, -1, len(shapes), 2)
        for layer in self.encoder.layers:
            src = layer(src, pos, ref, shapes)
        return src


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone features [res2..res5] -> (mask features at stride 4, [stride 32, 16, 8] maps for the decoder)."""

    def __init__(self, in_channels=(256, 512, 1024, 2048), conv_dim: int = 256, mask_dim: int = 256,
                 num_layers: int = 6, num_levels: int = 3, n_heads: int = 8, n_points: int = 4,
                 dim_feedforward: int = 1024) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.conv_dim = conv_dim
        # transformer levels from coarsest to finest, as in the official input_proj order
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, conv_dim, 1), nn.GroupNorm(32, conv_dim))
            for c in reversed(in_channels[-num_levels:]))
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.transformer = MSDeformAttnTransformerEncoder(conv_dim, num_layers, num_levels, n_heads=n_heads,
                                                          n_points=n_points, d_ffn=dim_feedforward)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        self.num_fpn_levels = len(in_channels) - num_levels
        # FPN levels finest-last, named adapter_1/layer_1 ... from the coarsest FPN level (official naming)
        for idx, c in enumerate(reversed(in_channels[:self.num_fpn_levels])):
            self.add_module(f"adapter_{idx + 1}", ConvNorm(c, conv_dim, 1, bias=False,
                                                           norm=nn.GroupNorm(32, conv_dim)))
            self.add_module(f"layer_{idx + 1}", ConvNorm(conv_dim, conv_dim, 3, padding=1, bias=False,
                                                         norm=nn.GroupNorm(32, conv_dim)))
        for m in self.modules():
            if isinstance(m, ConvNorm) or m is self.mask_features:
                nn.init.kaiming_uniform_(m.weight, a=1)  # c2_xavier_fill
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        levels = features[::-1][:self.num_levels]  # res5, res4, res3
        srcs = [proj(f) for proj, f in zip(self.input_proj, levels)]
        pos = [sine_position_embedding(s, self.conv_dim // 2) for s in srcs]
        memory = self.transformer(srcs, pos)
        outs = [m.transpose(1, 2).reshape(s.shape) for m, s in
                zip(memory.split([h * w for h, w in map(static_hw, srcs)], 1), srcs)]
        for idx, f in enumerate(features[:self.num_fpn_levels][::-1]):
            lateral = getattr(self, f"adapter_{idx + 1}")(f)
            y = lateral + F.interpolate(outs[-1], size=lateral.shape[2:], mode="bilinear", align_corners=False)
            outs.append(F.relu(getattr(self, f"layer_{idx + 1}")(y)))
        return self.mask_features(outs[-1]), outs[:self.num_levels]


# --- transformer decoder layers ----------------------------------------------------------------------

def attention_bias(mask_logits: torch.Tensor) -> torch.Tensor:
    """B x Q x N mask logits -> additive bias, -inf where a query may not look (sigmoid < 0.5). A query whose
    mask is empty everywhere looks everywhere (Mask2Former's fix, as boolean algebra instead of indexing).
    Built once per layer at B x Q x N and broadcast over heads: a bool masked_fill over B x h x Q x N is
    several times slower on CPU than adding this bias."""
    blocked = (mask_logits < 0) & (mask_logits.amax(-1, keepdim=True) >= 0)
    return torch.where(blocked, float("-inf"), 0.0)


class MaskedCrossAttentionLayer(nn.Module):
    """Mask2Former's CrossAttentionLayer (post-norm): MHA restricted to each query's predicted mask."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.nhead = nhead
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, pos, query_pos, mask_logits):
        b, q, _ = tgt.shape
        value = memory.flatten(2).transpose(1, 2)
        key = value + pos.flatten(2).transpose(1, 2)
        bias = attention_bias(mask_logits)
        bias = bias[:, None].expand(b, self.nhead, q, bias.shape[-1]).reshape(b * self.nhead, q, -1)
        out = self.multihead_attn(tgt + query_pos, key, value, attn_mask=bias, need_weights=False)[0]
        return self.norm(tgt + out)


class LocalRepresentation(nn.Module):
    """PEM's feature projection: BN -> depthwise 3x3 -> Linear, B x C x H x W -> B x HW x C."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.to_query_3x3 = nn.Conv2d(d_model, d_model, 3, padding=1, groups=d_model)
        self.bn = nn.BatchNorm2d(d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.to_query_3x3(self.bn(x)).flatten(2).transpose(1, 2))


class EfficientMaskedCrossAttention(nn.Module):
    """EMCA (= PEM's prototype cross-attention). Per head h, with unit-norm keys K (pixels) and queries Q:
    S = K_h Q_h^T restricted to the query's mask; G = argmax over pixels; K_p = K[G] (heads concatenated);
    A = (Q * K_p) W_A; B = alpha * A / ||A||_2 + K_p, the norm taken over the queries as in PEM's code;
    out = B W_out + tgt."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.nhead = nhead
        self.feature_proj = LocalRepresentation(d_model)
        self.query_proj = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_model))
        self.proj = nn.Linear(d_model, d_model)
        self.final = nn.Linear(d_model, d_model)
        self.alpha = nn.Parameter(torch.ones(1, 1, d_model))

    def prototypes(self, keys: torch.Tensor, queries: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """keys B x N x C, queries B x Q x C -> per query and head the most similar allowed key: B x Q x C."""
        b, n, c = keys.shape
        q, h = queries.shape[1], self.nhead
        k_t = keys.transpose(1, 2).reshape(b, h, c // h, n)  # B h d N: contiguous for the matmul
        q_h = queries.view(b, q, h, c // h).transpose(1, 2)  # B h Q d
        sim = torch.matmul(q_h, k_t)  # B h Q N
        sim += attention_bias(mask_logits)[:, None]
        # max(...).indices = argmax (first maximum), ~2.5x faster than argmax on CPU
        index = sim.max(-1).indices[:, :, None, :].expand(b, h, c // h, q)
        return torch.gather(k_t, 3, index).permute(0, 3, 1, 2).reshape(b, q, c)

    def forward(self, tgt, memory, pos, query_pos, mask_logits):
        keys = F.normalize(self.feature_proj(memory + pos), dim=-1)
        queries = F.normalize(self.query_proj(tgt + query_pos), dim=-1)
        proto = self.prototypes(keys, queries, mask_logits)
        gated = F.normalize(self.proj(proto * queries), dim=1) * self.alpha + proto
        return self.final(gated) + tgt


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos):
        q = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt):
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Queries attend to one pixel-decoder level per layer (stride 32, 16, 8, ...), each restricted to the
    mask the previous layer predicted. Returns the last layer's class logits (B x Q x K+1) and mask logits
    (B x Q x H/4 x W/4); training supervision of the intermediate layers is out of scope here."""

    def __init__(self, num_classes: int, in_channels: int = 256, hidden_dim: int = 256, num_queries: int = 100,
                 nheads: int = 8, dim_feedforward: int = 2048, dec_layers: int = 9, mask_dim: int = 256,
                 cross_attention: str = "masked", num_feature_levels: int = 3) -> None:
        super().__init__()
        if cross_attention not in CROSS_ATTENTION_KINDS:
            raise ValueError(f"cross_attention must be one of {CROSS_ATTENTION_KINDS}, got '{cross_attention}'")
        cross_cls = MaskedCrossAttentionLayer if cross_attention == "masked" else EfficientMaskedCrossAttention
        self.hidden_dim = hidden_dim
        self.num_feature_levels = num_feature_levels
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            cross_cls(hidden_dim, nheads) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers))
        for layers in (self.transformer_self_attention_layers, self.transformer_ffn_layers):
            for p in layers.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        if cross_attention == "masked":
            for p in self.transformer_cross_attention_layers.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        # official: a 1x1 conv only when the pixel decoder's width differs (empty Sequential = no keys)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Sequential()
            for _ in range(num_feature_levels))
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def predict_masks(self, output: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """B x Q x C queries -> B x Q x H4*W4 mask logits (einsum bqc,bchw written as a matmul)."""
        return torch.matmul(self.mask_embed(self.decoder_norm(output)), mask_features.flatten(2))

    def attention_mask(self, output: torch.Tensor, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """B x Q x h*w mask logits at the attention's `size`: predicted from `features`, then resized to `size`
        where they differ. The export passes the mask features already resized to `size`; resize and prediction
        are both linear maps, so that equals the official order (predict at stride 4, then resize) with a 4-64x
        smaller matmul."""
        masks = self.predict_masks(output, features)
        hw = static_hw(features)
        if hw == tuple(size):
            return masks
        b, q, _ = output.shape
        return F.interpolate(masks.view(b, q, *hw), size=size, mode="bilinear", align_corners=False).flatten(2).detach()

    def forward(self, levels: list[torch.Tensor], mask_features: torch.Tensor):
        b = mask_features.shape[0]
        hw4 = static_hw(mask_features)
        srcs, pos = [], []
        for i, x in enumerate(levels):
            srcs.append(self.input_proj[i](x) + self.level_embed.weight[i].view(1, -1, 1, 1))
            pos.append(sine_position_embedding(x, self.hidden_dim // 2))
        sizes = [static_hw(x) for x in levels]
        # exported, the masks that only steer attention come from resized features (Mask2Former-R50, 512x1024:
        # ~180 ms less per frame in ONNX Runtime); eager keeps the official order, which the FLOP count follows
        export = torch.onnx.is_in_onnx_export()
        level_features = [F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False) if export
                          else mask_features for size in sizes]
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)
        output = self.query_feat.weight[None].expand(b, -1, -1)
        for i, (cross, self_attn, ffn) in enumerate(zip(self.transformer_cross_attention_layers,
                                                        self.transformer_self_attention_layers,
                                                        self.transformer_ffn_layers)):
            level = i % self.num_feature_levels
            output = cross(output, srcs[level], pos[level], query_pos,
                           self.attention_mask(output, level_features[level], sizes[level]))
            output = ffn(self_attn(output, query_pos))
        masks = self.predict_masks(output, mask_features)
        return self.class_embed(self.decoder_norm(output)), masks.view(b, -1, *hw4)


class Mask2FormerHead(nn.Module):
    """detectron2's `MaskFormerHead` (keys `pixel_decoder.*`, `predictor.*`)."""

    def __init__(self, num_classes: int, in_channels=(256, 512, 1024, 2048), cross_attention: str = "masked",
                 conv_dim: int = 256, mask_dim: int = 256, enc_layers: int = 6, hidden_dim: int = 256,
                 num_queries: int = 100, nheads: int = 8, dim_feedforward: int = 2048, dec_layers: int = 9) -> None:
        super().__init__()
        self.pixel_decoder = MSDeformAttnPixelDecoder(in_channels, conv_dim, mask_dim, num_layers=enc_layers)
        self.predictor = MultiScaleMaskedTransformerDecoder(
            num_classes, conv_dim, hidden_dim, num_queries, nheads, dim_feedforward, dec_layers, mask_dim,
            cross_attention)

    def forward(self, features: list[torch.Tensor]):
        mask_features, levels = self.pixel_decoder(features)
        return self.predictor(levels, mask_features)


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int] | None,
                       upsample_masks_first: bool = False) -> torch.Tensor:
    """sum_q softmax(class)[q, k] * sigmoid(mask)[q] without the no-object class -> B x K x H x W scores."""
    probs = class_logits.softmax(-1)[..., :-1].transpose(1, 2)  # B K Q
    if upsample_masks_first:
        mask_logits = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    b, _, h, w = mask_logits.shape
    scores = torch.matmul(probs, mask_logits.sigmoid().flatten(2)).view(b, -1, h, w)
    if upsample_masks_first or size is None:  # None: scores at mask resolution
        return scores
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)


class Mask2Former(nn.Module):
    """Segmentor: forward(float NCHW normalised) -> B x K x H x W semantic scores (not logits)."""

    outputs_probabilities = True  # the deploy wrapper takes the top score as confidence, no softmax
    # detectron2 training checkpoints carry the loss's class weights (SetCriterion's `empty_weight` buffer).
    training_only_prefixes = ("criterion.",)

    def __init__(self, backbone: nn.Module, sem_seg_head: nn.Module, upsample_masks_first: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.upsample_masks_first = upsample_masks_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        class_logits, mask_logits = self.sem_seg_head(self.backbone(x))
        return semantic_inference(class_logits, mask_logits, x.shape[2:], self.upsample_masks_first)

    def forward_lowres(self, x: torch.Tensor) -> torch.Tensor | None:
        """Semantic scores at mask resolution (stride 4), before the final bilinear resize to the input, which
        the ONNX export does channels-last; None in the official order (`upsample_masks_first`)."""
        if self.upsample_masks_first:
            return None
        class_logits, mask_logits = self.sem_seg_head(self.backbone(x))
        return semantic_inference(class_logits, mask_logits, None)
