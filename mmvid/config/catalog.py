"""mmvid's own recipes (``mmvid recipes``): list them, show one, copy one or a folder of them for editing.

The recipes are the package data read by :mod:`mmvid.config.recipes` (:data:`RECIPES`), so the same names work from a
checkout and from an installed wheel. A copy keeps the recipe's relative name (``table1/cremad/01-concat.yaml``) under
the destination folder; its ``extends:`` names still resolve, from the copy's folder first, then from mmvid's recipes.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from mmvid.config.recipes import RECIPES
from mmvid.errors import MmvidError


def _root() -> Path:
    return RECIPES.resolve()


def recipe_name(path: Path) -> str:
    """``<recipes>/table1/cremad/01-concat.yaml`` -> ``table1/cremad/01-concat``."""
    return path.resolve().relative_to(_root()).with_suffix("").as_posix()


def locate(name: str) -> Path:
    """A recipe file or folder of mmvid's by its name (``demo``, ``methods/bmm``, ``table1/cremad``; ``.yaml`` and a
    leading ``recipes/`` may be given). A name never leaves the recipes folder."""
    pure = PurePosixPath(str(name).replace("\\", "/").strip("/"))
    if pure.parts[:1] == ("recipes",):
        pure = PurePosixPath(*pure.parts[1:]) if len(pure.parts) > 1 else PurePosixPath(".")
    if pure.is_absolute() or ".." in pure.parts or any(p.startswith(".") and p != "." for p in pure.parts):
        raise MmvidError(f"recipe {name!r}: give a name from `mmvid recipes` (such as demo or table1/cremad)")
    base = _root() / pure
    for cand in (base, base.with_name(base.name + ".yaml")):
        if cand.resolve().is_relative_to(_root()) and (cand.is_dir() or (cand.is_file() and cand.suffix == ".yaml")):
            return cand
    raise MmvidError(f"no recipe or folder {name!r} among mmvid's recipes; `mmvid recipes` lists them")


def description(path: Path) -> str:
    """A recipe's first comment line (what each of mmvid's recipes opens with), else ''."""
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                return line.strip().lstrip("#").strip() if line.lstrip().startswith("#") else ""
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def listing(name: str | None = None) -> dict[str, str]:
    """{recipe name: description} of every recipe under ``name`` (a folder; None: all of them), sorted by name."""
    folder = _root() if name is None else locate(name)
    if folder.is_file():
        return {recipe_name(folder): description(folder)}
    return {recipe_name(p): description(p) for p in sorted(folder.rglob("*.yaml"))}


def copy_recipes(name: str, dest: Path) -> list[Path]:
    """Copy the recipe or folder ``name`` to ``dest`` (keeping its relative name) for editing; returns the files
    written. A file already there is left alone when it is the same recipe (an earlier copy), and any other file
    there (an edited copy, a file of the user's) stops the copy before anything is written: mmvid never overwrites
    a file it did not write."""
    src = locate(name)
    files = sorted(src.rglob("*.yaml")) if src.is_dir() else [src]
    if not files:
        raise MmvidError(f"recipe folder {name!r} holds no recipes")
    plan = [(f, Path(dest) / f.resolve().relative_to(_root())) for f in files]
    clash = [t for f, t in plan if (t.exists() or t.is_symlink()) and not (t.is_file() and t.read_bytes() == f.read_bytes())]
    if clash:
        more = f" and {len(clash) - 1} more" if len(clash) > 1 else ""
        raise MmvidError(f"{clash[0]}{more} already exists and differs from mmvid's recipe; mmvid does not overwrite "
                         f"it: move it away, or copy to another folder with --to")
    written = []
    for f, t in plan:
        if t.exists():
            continue  # the same recipe, copied before
        t.parent.mkdir(parents=True, exist_ok=True)
        t.write_bytes(f.read_bytes())
        written.append(t)
    return written
