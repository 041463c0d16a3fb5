"""Recipes: YAML files of config sections (``extends:`` other recipes, ``paper:`` the published figure, ``plugins:``
the user's plug-in files), found by path or by name in recipes/.

recipes/ sits at the top of the repository and ships in the wheel as the package data ``mmvid._recipes``; it is read
through :mod:`importlib.resources` alike from a checkout (editable install), a wheel or a zip."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mmvid.errors import MmvidError
from mmvid.plugins import is_file_spec


def _copy_tree(src: Any, dest: Path) -> None:
    """Copy a Traversable folder (a zip's) to ``dest``, YAML files only."""
    dest.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        if child.is_dir():
            _copy_tree(child, dest / child.name)
        elif child.name.endswith(".yaml"):
            (dest / child.name).write_bytes(child.read_bytes())


def _packaged_recipes() -> Path:
    """The folder of mmvid's recipes as a real path: the package data ``mmvid._recipes`` (a checkout's recipes/
    through an editable install, or the wheel's copy); from a zip, a private copy that lives for this process
    (recipes name their bases by relative path, so they must sit in a real folder)."""
    try:
        root = resources.files("mmvid._recipes")
    except ModuleNotFoundError:  # a checkout used without installing it (``python -m mmvid`` from the repository)
        return Path(__file__).resolve().parent.parent.parent / "recipes"
    if isinstance(root, Path):
        return root.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="mmvid-recipes-"))
    atexit.register(shutil.rmtree, tmp, True)
    _copy_tree(root, tmp / "recipes")
    return tmp / "recipes"


RECIPES = _packaged_recipes()
# What a recipe's ``paper:`` section may say: the published figure its runs are compared with (mmvid sweep).
PAPER_KEYS = {"table": (int, str), "row": str, "column": str, "accuracy": (int, float), "note": str}
PAPER_KINDS = {"table": "table number or name", "row": "text", "column": "text", "accuracy": "number", "note": "text"}


@dataclass
class Recipe:
    """A recipe file read with its bases: ``config`` (sections for :func:`resolve_config`) and ``paper``
    (the published figure its runs reproduce, or None). ``files``: the recipe and its bases, base first."""

    path: Path
    config: dict[str, Any]
    paper: dict[str, Any] | None
    files: list[Path]


def find_recipe(path: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe path as given (the current folder, or for a base the folder of the recipe that names it),
    else a name in recipes/; ``.yaml`` may be left out."""
    path = Path(path)
    names = [path] if path.suffix else [path, path.with_suffix(".yaml")]
    roots = [Path()] if path.is_absolute() else [relative_to if relative_to is not None else Path(), RECIPES]
    found = [root / n for root in roots for n in names if (root / n).exists()]
    for cand in found:
        if cand.is_file():
            return cand
    if found:
        raise MmvidError(f"recipe {found[0]} is not a file; give the path of a YAML recipe")
    raise MmvidError(f"recipe {str(path)!r} not found; give a YAML path or a name that `mmvid recipes` lists")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:  # safe_load: a recipe from someone else builds plain values only, never objects
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise MmvidError(f"recipe {path} is not UTF-8 text (byte {e.start}); save it as UTF-8 YAML") from None
    except OSError as e:
        raise MmvidError(f"recipe {path} cannot be read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise MmvidError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise MmvidError(f"recipe {path} must be a YAML mapping of config sections")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Sections merge key by key (a recipe names only what differs from its base); values replace."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_paper(paper: Any, path: Path) -> dict[str, Any]:
    if not isinstance(paper, dict):
        raise MmvidError(f"recipe {path}: paper must be a mapping of {', '.join(PAPER_KEYS)}")
    for k, v in paper.items():
        if k not in PAPER_KEYS:
            raise MmvidError(f"recipe {path}: unknown paper key {k!r}; valid keys: {', '.join(PAPER_KEYS)}")
        if not isinstance(v, PAPER_KEYS[k]) or isinstance(v, bool):
            raise MmvidError(f"recipe {path}: paper.{k}={v!r} must be a {PAPER_KINDS[k]}")
    if "accuracy" in paper and not 0 <= paper["accuracy"] <= 100:
        raise MmvidError(f"recipe {path}: paper.accuracy={paper['accuracy']} must be a percentage in [0, 100]")
    return dict(paper)


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> Recipe:
    """Read a recipe and the recipes it ``extends`` (a name or a list, each relative to this file or in
    recipes/; later ones and then this file win, section by section). ``paper`` is not inherited."""
    path = find_recipe(path) if not _seen else Path(path)
    key = path.resolve()
    if key in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, key))
        raise MmvidError(f"recipe {path} extends itself ({chain}); remove one of the extends")
    data = _read_yaml(path)
    if isinstance(data.get("plugins"), list):  # a plug-in file named relative to its recipe's folder
        # resolved as --plugin resolves its files (mmvid.plugins.resolve), so that `../x.py` or a recipe given by a
        # relative path names the same file as the --plugin that imports it
        data["plugins"] = [str((path.parent / Path(p).expanduser()).resolve()) if isinstance(p, str) and is_file_spec(p)
                           else p for p in data["plugins"]]
    bases = data.pop("extends", None) or []
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise MmvidError(f"recipe {path}: extends must be a recipe name or a list of them")
    paper = data.pop("paper", None)
    merged: dict[str, Any] = {}
    files: list[Path] = []
    for base in bases:
        parent = read_recipe(find_recipe(base, path.parent), (*_seen, key))
        merged = _merge(merged, parent.config)
        files += [f for f in parent.files if f not in files]
    return Recipe(path, _merge(merged, data), _check_paper(paper, path) if paper is not None else None, files + [path])


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The config sections of a recipe, its bases merged in."""
    return read_recipe(path).config

