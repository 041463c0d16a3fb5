"""The ``mmvid`` program: the Typer app, the options every command shares, the decorators that turn errors into one
line, and :func:`main`. Each command is a thin wrapper over :mod:`mmvid.api` in its own module (mmvid.cli.data,
.training, .results, .demo), imported by the package to register it.

Heavy imports (torch, h5py, librosa) happen inside the commands so that ``--help`` and option checks are fast.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(
    name="mmvid",
    help="Multimodal video classification with Multimodal Mixup (MM) and Balanced MM (B-MM).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)

Workspace = Annotated[Optional[Path], typer.Option("--workspace", "-w", envvar="MMVID_HOME",
                                                   help="Workspace folder with caches/ and runs/ (default ./mmvid-workspace).")]


def cli_errors(fn):
    """Render MmvidError (and Ctrl-C) as one clear line and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mmvid.errors import MmvidError

        try:
            try:
                return fn(*args, **kwargs)
            except OSError as e:  # a place mmvid cannot write to (read-only workspace, full disk): name it
                if e.filename is None:
                    raise
                from mmvid.workspace import unwritable

                raise unwritable(e) from None
        except MmvidError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


PLUGIN_HELP = ("A plug-in of your own: a Python file or module that registers a data source, fusion, augmentation or balancer "
               "(repeatable). A run records it; loading that run needs it given again.")


def plugin_option(fn):
    """Adds ``--plugin FILE_OR_MODULE`` (repeatable) to a command: the plug-ins are imported (at the user's
    request, mmvid.plugins.use) before the command runs, and in every process it starts."""
    sig = inspect.signature(fn, eval_str=True)  # typer reads __signature__ as it is: no string annotations
    param = inspect.Parameter("plugin", inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=Annotated[Optional[list[str]], typer.Option("--plugin", help=PLUGIN_HELP)])
    params = list(sig.parameters.values())
    at = next((i for i, p in enumerate(params) if p.name == "workspace"), len(params) - 1) + 1
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind != p.VAR_KEYWORD else p for p in params]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mmvid.plugins import use

        use(kwargs.pop("plugin", None) or [])
        return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params[:at] + [param] + params[at:])
    return wrapper


def torchrun_rank_exit(fn):
    """Under torchrun, end the rank without interpreter finalization once the command is done (its output
    flushed): after DDP, gloo's threads outlive the process group and can abort a finalizing interpreter
    (see mmvid.distributed.launch.end_rank_process). Outside torchrun the command runs as it is."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "RANK" not in os.environ:  # not a launched rank: skip importing torch (mmvid.distributed.launch)
            return fn(*args, **kwargs)
        from mmvid.distributed.launch import end_rank_process, under_torchrun

        if not under_torchrun():
            return fn(*args, **kwargs)
        code = 1
        try:
            fn(*args, **kwargs)
            code = 0
        except typer.Exit as e:
            code = e.exit_code
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            end_rank_process(code)

    return wrapper



def _ws(workspace: Optional[Path]) -> Path:
    from mmvid.workspace import workspace_dir

    return workspace_dir(workspace)


def _parse_sets(items: list[str] | None, flag: str = "--set", example: str = "optim.lr=3e-4") -> dict[str, str]:
    from mmvid.errors import MmvidError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise MmvidError(f"{flag} {item!r} must look like key=value, e.g. {flag} {example}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


Device = Annotated[str, typer.Option(help="auto | cpu | cuda.")]
Cache = Annotated[Optional[Path], typer.Option(help="Read the clips from this cache (default: the run's cache in its own "
                                                   "workspace, caches/<name>.h5, checked against the fingerprint the run recorded).")]



def main(argv: list[str] | None = None) -> int:
    """The ``mmvid`` program: Click's own usage errors (an unknown option, ``--seed abc``) are one line
    too, like every MmvidError, instead of Typer's boxed panel."""
    # Click's exception classes by way of a public typer name (newer typer vendors click, older depends on it).
    usage_error, click_exception = typer.BadParameter.__mro__[1:3]
    try:
        code = app(args=argv, prog_name="mmvid", standalone_mode=False)
    except usage_error as e:
        hint = f"; see `{e.ctx.command_path} --help`" if getattr(e, "ctx", None) is not None else ""
        message = e.format_message().rstrip(".")
        err_console.print(f"[bold red]error:[/] {message}{hint}", highlight=False, soft_wrap=True)
        return 2
    except click_exception as e:
        err_console.print(f"[bold red]error:[/] {e.format_message()}", highlight=False, soft_wrap=True)
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[bold red]interrupted[/]")
        return 130
    return code if isinstance(code, int) else 0
