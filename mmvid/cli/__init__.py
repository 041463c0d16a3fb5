"""The ``mmvid`` command line: thin commands that parse, validate and call :mod:`mmvid.api`.

:mod:`mmvid.cli.app` holds the Typer app and :func:`main`; each command module registers its commands on import
(in the order ``mmvid --help`` lists them).
"""

from mmvid.cli.app import app, main

from mmvid.cli import data, training, results, demo, recipes  # noqa: F401,E402  (registers the commands, in this order)  # isort: skip

__all__ = ["app", "main"]
