"""`seg-perception zoo`: every registered model's size and compute beside the numbers its papers report.

Counting big models at 1024x2048 takes minutes on a CPU, so the counts ship in `fixtures/zoo_counts.json`
(regenerated with `--recount`) and the plain command is instant and never imports torch.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from seg_perception.models.registry import VARIANTS, Reference, Variant

COUNTS_FILE = Path(__file__).resolve().parent / "fixtures" / "zoo_counts.json"
CONVENTION = ("fvcore, 1 multiply-add = 1 FLOP, batch 1, eval mode, final resize included; "
              "params include unused ones (conv_seg)")


@dataclass
class ZooRow:
    name: str
    params_m: float | None
    gflops: float | None
    input_size: tuple[int, int]
    num_classes: int
    paper_params_m: float | None
    paper_gflops: float | None
    source: str
    checked: bool


def count_key(name: str, input_size: tuple[int, int], num_classes: int) -> str:
    return f"{name}|{input_size[0]}x{input_size[1]}|{num_classes}"


def settings(v: Variant) -> list[Reference]:
    """The settings a variant is counted in: its references, or its own classes at ADE20K size if it has none."""
    return list(v.references) or [Reference(None, None, (512, 512), v.num_classes, "no published figure",
                                            checked=False)]


def load_counts(path: Path = COUNTS_FILE) -> dict[str, dict]:
    return json.loads(path.read_text())["counts"] if path.is_file() else {}


def rows(counts: dict[str, dict]) -> list[ZooRow]:
    out = []
    for v in VARIANTS.values():
        for ref in settings(v):
            got = counts.get(count_key(v.name, ref.input_size, ref.num_classes), {})
            out.append(ZooRow(v.name, got.get("params_m"), got.get("gflops"), tuple(ref.input_size),
                              ref.num_classes, ref.params_m, ref.gflops, ref.source, ref.checked))
    return out


def recount(names: list[str], path: Path = COUNTS_FILE, max_pixels: int | None = None) -> dict[str, dict]:
    """Count params and GFLOPs for `names` in their settings (up to `max_pixels` input pixels when given),
    merge into `path` and return the counts made."""
    import torch

    from seg_perception.models.flops import count_flops, count_params_m
    from seg_perception.models.registry import build_model

    counts, made = load_counts(path), {}
    for name in names:
        for ref in settings(VARIANTS[name]):
            if max_pixels is not None and ref.input_size[0] * ref.input_size[1] > max_pixels:
                continue
            torch.manual_seed(0)
            model = build_model(name, num_classes=ref.num_classes)
            flops = count_flops(model, tuple(ref.input_size))
            made[count_key(name, ref.input_size, ref.num_classes)] = {
                "params_m": round(count_params_m(model), 4), "gflops": round(flops.gflops, 3),
                "uncounted_ops": flops.uncounted}
            print(f"counted {name} at {ref.input_size[0]}x{ref.input_size[1]}, {ref.num_classes} classes: "
                  f"{count_params_m(model):.3f} M, {flops.gflops:.2f} GFLOPs"
                  + (f" (no rule, counted 0: {sorted(flops.uncounted)})" if flops.uncounted else ""), flush=True)
    counts.update(made)
    path.write_text(json.dumps({"convention": CONVENTION, "torch": torch.__version__, "counts": counts},
                               indent=1, sort_keys=True) + "\n")
    return made


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(table: list[ZooRow]) -> str:
    head = f"{'model':<22} {'input':>10} {'cls':>4} {'params M':>9} {'paper':>7} {'GFLOPs':>8} {'paper':>7}  source"
    lines = [head, "-" * len(head)]
    for r in table:
        flag = "" if r.checked else " [unchecked]"
        size = f"{r.input_size[0]}x{r.input_size[1]}"
        lines.append(f"{r.name:<22} {size:>10} {r.num_classes:>4} "
                     f"{_fmt(r.params_m, 2):>9} {_fmt(r.paper_params_m, 2):>7} {_fmt(r.gflops, 2):>8} "
                     f"{_fmt(r.paper_gflops, 2):>7}  {r.source}{flag}")
    lines.append(f"counts: {CONVENTION}; '-' = not counted yet (zoo --recount) or not published")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list (one object per model and reference)")
    p.add_argument("--recount", nargs="*", metavar="MODEL",
                   help="recount the named models (all when none named) and update the shipped cache")


def run(args) -> int:
    if args.recount is not None:
        unknown = [n for n in args.recount if n not in VARIANTS]
        if unknown:
            print(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
            return 2
        recount(args.recount or list(VARIANTS))
    table = rows(load_counts())
    if args.json:
        keys = ("name", "params_m", "gflops", "input_size", "num_classes", "paper_params_m", "paper_gflops",
                "source", "checked")
        print(json.dumps([{k: asdict(r)[k] for k in keys} for r in table], indent=1))
    else:
        print(format_table(table))
    return 0
