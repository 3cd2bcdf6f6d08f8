"""The classes a model predicts (`--classes`): `cityscapes`, `ade20k`, or a YAML file of `{id, name, color}`.

A class set becomes the model card's `class_names` and `palette`; everything downstream (colour output, costmaps
by class name, label info, reports) reads them from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seg_perception.errors import UsageError
from seg_perception.labels import ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_ID

BUILTIN = {"cityscapes": (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE), "ade20k": (ADE20K_CLASSES, ADE20K_PALETTE)}
MAX_CLASSES = IGNORE_ID  # labels are uint8 and 255 means "no class"
MAX_FILE_BYTES = 1 << 20  # a class list is a few kB; a bigger file is a mistake, not a class list


class ClassesError(UsageError, ValueError):
    """A class set that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class ClassSet:
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    source: str  # the builtin name or the YAML path it came from

    def __len__(self) -> int:
        return len(self.names)


def builtin(name: str) -> ClassSet:
    names, palette = BUILTIN[name]
    return ClassSet(tuple(names), tuple(palette), name)


def default_for(num_classes: int) -> ClassSet:
    """The builtin set of that size (19: Cityscapes, 150: ADE20K); other sizes must name their classes."""
    for name, (names, _) in BUILTIN.items():
        if len(names) == num_classes:
            return builtin(name)
    raise ClassesError(f"the model predicts {num_classes} classes and no builtin set has that many: "
                       f"pass --classes FILE.yaml with {num_classes} entries {{id, name, color}}")


def load_classes(spec: str) -> ClassSet:
    """`cityscapes`, `ade20k`, or a YAML file: a list (or a `classes:` list) of entries {id, name, color}."""
    if spec in BUILTIN:
        return builtin(spec)
    path = Path(spec)
    if not path.is_file():
        raise ClassesError(f"--classes: '{spec}' is neither a builtin set ({', '.join(BUILTIN)}) nor a file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ClassesError(f"{path}: {path.stat().st_size} bytes is too big for a class list "
                           f"(limit {MAX_FILE_BYTES})")
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())  # safe_load builds plain data only: no tags run code
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ClassesError(f"{path}: not readable YAML ({type(exc).__name__})") from None
    if isinstance(doc, dict) and "classes" in doc:
        doc = doc["classes"]
    if not isinstance(doc, list) or not doc:
        raise ClassesError(f"{path}: expected a non-empty list of entries {{id, name, color}}")
    return ClassSet(*_parse_entries(doc, path), str(path))


def _parse_entries(entries: list, path: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    if len(entries) > MAX_CLASSES:
        raise ClassesError(f"{path}: {len(entries)} classes; at most {MAX_CLASSES} fit uint8 labels "
                           f"({IGNORE_ID} means no class)")
    by_id: dict[int, tuple[str, tuple[int, int, int]]] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i + 1}"
        if not isinstance(entry, dict) or set(entry) != {"id", "name", "color"}:
            raise ClassesError(f"{where}: expected exactly the keys id, name, color, got {entry!r}"[:200])
        cid, name, color = entry["id"], entry["name"], entry["color"]
        if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid < len(entries):
            raise ClassesError(f"{where}: id must be an integer in 0..{len(entries) - 1}, got {cid!r}")
        if cid in by_id:
            raise ClassesError(f"{where}: id {cid} appears twice")
        if not isinstance(name, str) or not name.strip():
            raise ClassesError(f"{where}: name must be a non-empty string, got {name!r}")
        if (not isinstance(color, list) or len(color) != 3
                or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)):
            raise ClassesError(f"{where}: color must be three integers 0..255, got {color!r}")
        by_id[cid] = (name.strip(), (color[0], color[1], color[2]))
    names = tuple(by_id[i][0] for i in range(len(entries)))  # ids are 0..N-1, each once: all present
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ClassesError(f"{path}: class names must be unique (costmaps pick classes by name): {duplicated}")
    return names, tuple(by_id[i][1] for i in range(len(entries)))
