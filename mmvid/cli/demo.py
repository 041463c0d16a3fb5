"""``mmvid demo``: the whole pipeline on the embedded demo data set."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mmvid.cli.app import Workspace, _ws, app, cli_errors, console


@app.command()
@cli_errors
def demo(
    workspace: Workspace = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per run (default: the demo recipe's).")] = None,
    clips: Annotated[Optional[int], typer.Option(help="Number of demo clips.")] = None,
):
    """The whole pipeline on the embedded demo data set: prepare, train, evaluate.

    Example:
      mmvid demo
    """
    from mmvid.workflows import run_demo

    run_demo(console, _ws(workspace), epochs=epochs, clips=clips)
