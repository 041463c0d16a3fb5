"""``mmvid recipes``: list, show and copy mmvid's own recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmvid.cli.app import Workspace, _ws, app, cli_errors, console


@app.command()
@cli_errors
def recipes(
    name: Annotated[Optional[str], typer.Argument(help="A recipe (demo, methods/bmm) or a folder (table1/cremad, zoo).")] = None,
    copy: Annotated[bool, typer.Option("--copy", help="Copy the recipe or folder into <workspace>/recipes (or --to) for editing.")] = False,
    to: Annotated[Optional[Path], typer.Option(help="Folder to copy into (default <workspace>/recipes).")] = None,
    workspace: Workspace = None,
):
    """List mmvid's recipes (tables, zoo, data sets, methods), show one, or copy one or a folder for editing.

    Examples:
      mmvid recipes                        (every recipe, by folder)
      mmvid recipes table1/cremad          (one folder's recipes)
      mmvid recipes demo                   (a recipe's text)
      mmvid recipes table1/cremad --copy   (then edit and run: mmvid sweep mmvid-workspace/recipes/table1/cremad)
    """
    from mmvid import api

    if copy:
        written = api.recipes(name, copy=True, to=to, workspace=_ws(workspace) if to is None else None)
        dest = to if to is not None else _ws(workspace) / "recipes"
        console.print(f"copied {len(written)} recipe(s) into {dest}" + ("" if written else " (already there, unchanged)"),
                      soft_wrap=True, highlight=False)
        return
    if to is not None:
        from mmvid.errors import MmvidError

        raise MmvidError("--to is where --copy writes; add --copy, or leave --to out")
    found = api.recipes(name)
    if isinstance(found, str):
        console.print(found, end="", soft_wrap=True, highlight=False, markup=False)
        return
    groups: dict[str, list[str]] = {}
    for rname in found:  # the data sets' recipes (top level) first, then each folder's
        groups.setdefault(rname.rpartition("/")[0], []).append(rname)
    for parent in sorted(groups, key=lambda p: (p != "", p)):
        console.print(f"[bold]{parent + '/' if parent else 'recipes'}[/]", highlight=False)
        for rname in groups[parent]:
            console.print(f"  {rname:<44} {found[rname]}", soft_wrap=True, highlight=False, markup=False)
    console.print(f"{len(found)} recipe(s); `mmvid recipes NAME` shows one, `--copy` copies it for editing",
                  highlight=False, markup=False)
