"""The one registry of model variants: names users type -> encoder + head configs + the papers' numbers.

A family is one file per part (`mscan.py` encoder, `metaseg_head.py` head, ...). A segmentor is an encoder
plus a head (mmsegmentation's split), so official checkpoint prefixes (`backbone.`, `decode_head.`,
`sem_seg_head.`) fall out of the module structure.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


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


def register(v: Variant) -> Variant:
    if v.name in VARIANTS:
        raise ValueError(f"duplicate variant {v.name}")
    VARIANTS[v.name] = v
    return v


# --- MetaSeg (MSCAN + MetaFormer decoder with CRA) -------------------------------------------------
register(Variant(
    "metaseg-t", "metaseg", "mscan:MSCAN", MSCAN_T, "metaseg_head:MetaSegHead",
    dict(in_channels=(32, 64, 160, 256), embed_dim=128),
    references=(Reference(4.68, 5.51, ADE, 150, "research/models.md §3.5 (fvcore re-creation; paper table not found)"),
                Reference(4.648, 44.21, CITY, 19, "research/models.md §3.5 (fvcore re-creation)")),
))
register(Variant(
    "metaseg-b", "metaseg", "mscan:MSCAN", MSCAN_B, "metaseg_head:MetaSegHead",
    dict(in_channels=(64, 128, 320, 512), embed_dim=512),
    references=_r(29.47, 243.72, CITY, 19, "research/models.md §3.5 (Cityscapes head, embed 512)"),
    notes="Cityscapes decoder width 512",
))
register(Variant(
    "metaseg-b-ade20k", "metaseg", "mscan:MSCAN", MSCAN_B, "metaseg_head:MetaSegHead",
    dict(in_channels=(64, 128, 320, 512), embed_dim=768), num_classes=150,
    references=_r(29.84, 31.6, ADE, 150, "research/models.md §3.5 (ADE20K head, embed 768)"),
    notes="ADE20K decoder width 768",
))

# --- SCASeg (strip cross-attention decoder on MSCAN) -----------------------------------------------
# Filled by the SCASeg implementation; see docs/models.md for every choice the paper leaves open.

# --- SegMAN (LASS encoder + MMSCopE decoder) -------------------------------------------------------
# Filled by the SegMAN implementation.

# --- Mask2Former (R50) with masked cross-attention or EMCA ------------------------------------------
# Filled by the Mask2Former implementation.


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; known: {', '.join(sorted(VARIANTS))}") from None


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
