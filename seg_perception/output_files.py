"""Writing what the tools produce without harming what the user owns: a file is refused rather than overwritten
unless asked, a symbolic link is never written through, a folder is cleared only of what a tool recorded making,
and a target that cannot be written is found before the work starts. Torch-, ROS- and numpy-free, so every layer
can use it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from seg_perception.errors import UsageError

MADE_BY = ".made-by-seg-perception.json"  # a tool's record of what it wrote into a folder


class OutputRefused(UsageError, OSError):
    """An output path the tool will not write: it exists, is a link, or is a folder the tool did not make."""


def check_writable(path: str | os.PathLike) -> None:
    """OSError unless `path` can be written later: an existing regular file we may replace, or a new file or
    folder whose nearest existing parent is a writable folder."""
    path = Path(path).absolute()
    if path.is_symlink():
        raise OSError(f"'{path}' is a symbolic link; not writing through it")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise OSError(f"'{path}' is not writable")
        return
    parent = path.parent
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OSError(f"cannot create '{path}': '{parent}' is not a writable folder")


def claim(paths: Iterable[str | os.PathLike], overwrite: bool = False, flag: str = "--overwrite") -> None:
    """Before any work: refuse symbolic links, and (unless `overwrite`) files that already exist, naming them all
    and `flag` (OutputRefused); then check that every path can be written (OSError)."""
    paths = [Path(p) for p in paths]
    links = [str(p) for p in paths if p.is_symlink()]
    if links:
        raise OutputRefused(f"{', '.join(links)}: symbolic link(s); not writing through them (remove them or choose "
                      f"another output)")
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputRefused(f"{', '.join(existing)} already exist(s); choose another output, remove them, or "
                              f"pass {flag} to replace them")
    for p in paths:
        check_writable(p)


def replace_file(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` into a temporary file beside `path`, then rename it over `path`: a link at `path` is replaced,
    never followed, and a failed write leaves nothing half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")  # the suffix picks writers' formats
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def prepare_folder(folder: str | os.PathLike, tool: str) -> Path:
    """A folder for `tool`'s outputs: new, empty, or one `tool` filled before, from which only what it recorded
    (see `record_made`) is removed. A non-empty folder it did not make is refused (OutputRefused)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputRefused(f"'{folder}' is not a folder")
    record = folder / MADE_BY
    if folder.is_dir() and any(folder.iterdir()):
        try:
            made = json.loads(record.read_text()) if record.is_file() and not record.is_symlink() else None
        except ValueError:
            made = None
        if not isinstance(made, dict) or made.get("tool") != tool or not isinstance(made.get("files"), list):
            raise OutputRefused(f"'{folder}' is not empty and was not made by {tool}; give a new or empty folder (an "
                          f"output folder of a version before {MADE_BY} existed: delete it yourself)")
        for name in made["files"]:
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                continue  # only plain names directly inside the folder
            target = folder / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    record_made(folder, tool, [])
    return folder


def record_made(folder: str | os.PathLike, tool: str, names: Iterable[str]) -> None:
    """Record the files and folders `tool` wrote directly inside `folder`, for its next `prepare_folder`."""
    payload = json.dumps({"tool": tool, "files": sorted(set(names))}, indent=1) + "\n"
    replace_file(Path(folder) / MADE_BY, lambda tmp: tmp.write_text(payload))
