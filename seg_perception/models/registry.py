"""The one registry of model variants: names users type -> encoder + head configs + the papers' numbers.

A family is one file per part (`mscan.py` encoder, `metaseg_head.py` head, ...). A segmentor is an encoder
plus a head (mmsegmentation's split), so official checkpoint prefixes (`backbone.`, `decode_head.`,
`sem_seg_head.`) fall out of the module structure.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from seg_perception.errors import UsageError


@dataclass(frozen=True)
class Reference:
    """A published (or reproduced) size/compute figure, with the setting it was measured in."""

    params_m: float | None
    gflops: float | None
    input_size: tuple[int, int]  # H, W
    num_classes: int
    source: str
    checked: bool = True  # False: not yet checked against the paper (e.g. SCASeg, no tables reachable)


@dataclass(frozen=True)
class Variant:
    name: str
    family: str
    encoder: str  # "module:Class" under seg_perception.models
    encoder_cfg: dict
    head: str
    head_cfg: dict
    segmentor: str = "segmentor:EncoderDecoder"
    num_classes: int = 19
    references: tuple[Reference, ...] = ()
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _r(*args, **kw) -> tuple[Reference, ...]:
    return (Reference(*args, **kw),)


MSCAN_T = dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4), drop_path_rate=0.1)
MSCAN_S = dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), mlp_ratios=(8, 8, 4, 4), drop_path_rate=0.1)
MSCAN_B = dict(embed_dims=(64, 128, 320, 512), depths=(3, 3, 12, 3), mlp_ratios=(8, 8, 4, 4), drop_path_rate=0.1)
MSCAN_L = dict(embed_dims=(64, 128, 320, 512), depths=(3, 5, 27, 3), mlp_ratios=(8, 8, 4, 4), drop_path_rate=0.3)

ADE = (512, 512)
CITY = (1024, 2048)

VARIANTS: dict[str, Variant] = {}

# Families whose exported graph follows the image size at run time (`export --dynamic`). The others fix
# size-dependent tables when traced: SCASeg its key grid, SegMAN its scan lengths and attention index
# tables, Mask2Former its position and reference tables.
DYNAMIC_FAMILIES = frozenset({"metaseg"})


def register(v: Variant) -> Variant:
    if v.name in VARIANTS:
        raise ValueError(f"duplicate variant {v.name}")
    VARIANTS[v.name] = v
    return v


# --- MetaSeg (MSCAN + MetaFormer decoder with CRA) -------------------------------------------------
register(Variant(
    "metaseg-t", "metaseg", "mscan:MSCAN", MSCAN_T, "metaseg_head:MetaSegHead",
    dict(in_channels=(32, 64, 160, 256), embed_dim=128),
    references=(Reference(4.68, 5.51, ADE, 150, "fvcore on the official MetaSeg code (paper table not found)"),
                Reference(4.648, 44.21, CITY, 19, "fvcore on the official MetaSeg code (paper table not found)")),
))
register(Variant(
    "metaseg-b", "metaseg", "mscan:MSCAN", MSCAN_B, "metaseg_head:MetaSegHead",
    dict(in_channels=(64, 128, 320, 512), embed_dim=512),
    references=_r(29.47, 243.72, CITY, 19, "fvcore on the official MetaSeg code (Cityscapes head, embed 512)"),
    notes="Cityscapes decoder width 512",
))
register(Variant(
    "metaseg-b-ade20k", "metaseg", "mscan:MSCAN", MSCAN_B, "metaseg_head:MetaSegHead",
    dict(in_channels=(64, 128, 320, 512), embed_dim=768), num_classes=150,
    references=_r(29.84, 31.6, ADE, 150, "fvcore on the official MetaSeg code (ADE20K head, embed 768)"),
    notes="ADE20K decoder width 768",
))

# --- SCASeg (strip cross-attention decoder on MSCAN) -----------------------------------------------
# Built from the paper's description (no code or tables reachable): widths and every other open choice are ours,
# listed in docs/models.md; the references are placeholders until someone reads the paper's tables.
_SCASEG_UNCHECKED = "SCASeg (arXiv 2411.17061 / TIP 2026): tables not reachable; widths are our choice"
register(Variant(
    "scaseg-t", "scaseg", "mscan:MSCAN", MSCAN_T, "scaseg_head:SCASegHead",
    dict(in_channels=(32, 64, 160, 256), embed_dim=64),
    references=_r(None, None, ADE, 150, _SCASEG_UNCHECKED, checked=False),
    notes="MSCAN-T encoder, decoder width 64 (unverified)",
))
register(Variant(
    "scaseg-b", "scaseg", "mscan:MSCAN", MSCAN_B, "scaseg_head:SCASegHead",
    dict(in_channels=(64, 128, 320, 512), embed_dim=128),
    references=_r(None, None, ADE, 150, _SCASEG_UNCHECKED, checked=False),
    notes="MSCAN-B encoder, decoder width 128 (unverified)",
))

# --- SegMAN (LASS encoder + MMSCopE decoder) -------------------------------------------------------
# Official configs (yunxiangfu2001/SegMAN local_configs/segman/*); counts by fvcore with natten/selective-scan
# handles (research/models.md §1, §6.5). The official T Cityscapes config's 150 classes is a bug: 19 here.
_SEGMAN_SRC = "SegMAN (CVPR 2025) README + paper table"
SEGMAN_T = dict(embed_dims=(32, 64, 144, 192), depths=(2, 2, 4, 2), num_heads=(1, 2, 4, 8),
                kernel_sizes=(11, 9, 9, 7), mlp_ratios=(4, 4, 3, 3))
SEGMAN_S = dict(embed_dims=(64, 144, 288, 512), depths=(2, 2, 10, 4), num_heads=(2, 4, 8, 16),
                kernel_sizes=(11, 9, 7, 7), mlp_ratios=(4, 4, 3.4, 3.4))
SEGMAN_B = dict(embed_dims=(96, 160, 364, 560), depths=(4, 4, 18, 4), num_heads=(4, 8, 13, 20),
                kernel_sizes=(11, 9, 7, 7), mlp_ratios=(4, 4, 3, 3), layer_scale=1e-6)
SEGMAN_L = dict(embed_dims=(96, 192, 432, 640), depths=(4, 4, 28, 4), num_heads=(4, 8, 12, 20),
                kernel_sizes=(11, 9, 7, 7), mlp_ratios=(4, 4, 3, 3), layer_scale=1e-6)
for _name, _enc, _e, _p, _refs in (
    ("segman-t", SEGMAN_T, 128, 192, (Reference(6.40, 6.2, ADE, 150, _SEGMAN_SRC),
                                       Reference(6.38, 50.9, CITY, 19, _SEGMAN_SRC + ": its 52.5 G is the "
                                                 "config's 150-class head; 19 classes recounted"))),
    ("segman-s", SEGMAN_S, 152, 288, _r(29.97, 218.4, CITY, 19, _SEGMAN_SRC + " (paper prints 29.4 M, the "
                                        "ADE head's count; the Cityscapes head is wider, E=152)")),
    ("segman-s-ade20k", SEGMAN_S, 144, 288, _r(29.42, 25.3, ADE, 150, _SEGMAN_SRC)),
    ("segman-b", SEGMAN_B, 180, 320, (Reference(51.80, 58.1, ADE, 150, _SEGMAN_SRC),
                                       Reference(51.78, 479.0, CITY, 19, _SEGMAN_SRC))),
    ("segman-l", SEGMAN_L, 224, 432, (Reference(92.34, 97.4, ADE, 150, _SEGMAN_SRC + " (README 97.1 G, 92.6 M)"),
                                       Reference(92.32, 796.0, CITY, 19, _SEGMAN_SRC + " (README's 769 is a typo)"))),
):
    register(Variant(
        _name, "segman", "segman_encoder:SegMANEncoder", _enc, "segman_head:SegMANHead",
        dict(in_channels=_enc["embed_dims"], channels=_e, feat_proj_dim=_p),
        num_classes=150 if _name.endswith("ade20k") else 19, references=_refs,
        notes=f"decoder E={_e}, P={_p}" + ("; ADE20K head" if _name.endswith("ade20k") else ""),
    ))

# --- Mask2Former (R50) with masked cross-attention or EMCA ------------------------------------------
# Counts: fvcore, 1 MAC = 1 FLOP, whole model incl. semantic inference; docs/models.md gives the convention.
M2F_R50 = dict(depth=50)
register(Variant(
    "mask2former-r50", "mask2former", "resnet:ResNet", M2F_R50, "mask2former_head:Mask2FormerHead",
    dict(cross_attention="masked"), segmentor="mask2former_head:Mask2Former",
    references=(Reference(44.0, 70.1, ADE, 150, "PEM (CVPR 2024) Table 4; facebookresearch/Mask2Former MODEL_ZOO"),
                Reference(44.0, 523.0, CITY, 19, "PEM (CVPR 2024) Table 3")),
    notes="9 decoder layers, 100 queries, masked cross-attention",
))
register(Variant(
    "mask2former-emca-r50", "mask2former", "resnet:ResNet", M2F_R50, "mask2former_head:Mask2FormerHead",
    dict(cross_attention="emca"), segmentor="mask2former_head:Mask2Former",
    references=_r(None, None, ADE, 150, "Weerakoon & Thayasivam (Oct 2025) via a review: 45.1 mIoU ADE20K, "
                  "params/GFLOPs not published; module = PEM_CA (NiccoloCavagnero/PEM)", checked=False),
    notes="masked cross-attention replaced by EMCA (PEM prototype cross-attention)",
))


class UnknownModelError(UsageError, KeyError):
    """A zoo name that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model '{name}'; known: {', '.join(sorted(VARIANTS))}") from None


def _resolve(path: str):
    module, cls = path.split(":")
    return getattr(importlib.import_module(f"seg_perception.models.{module}"), cls)


def build_model(name: str, num_classes: int | None = None, **head_overrides):
    """Build the torch segmentor for `name`: forward(float NCHW normalised) -> logits at input size."""
    v = get_variant(name)
    encoder = _resolve(v.encoder)(**v.encoder_cfg)
    head = _resolve(v.head)(num_classes=num_classes or v.num_classes, **{**v.head_cfg, **head_overrides})
    model = _resolve(v.segmentor)(encoder, head)
    model.variant = v
    return model
