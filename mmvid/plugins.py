"""Plug-ins from outside mmvid: a user's file or module (``--plugin``, a recipe's ``plugins:``) and installed
packages (the entry-point group ``mmvid.plugins``).

A plug-in is a Python file or module that registers entries (``@BALANCERS.register("mine")`` ...) when
imported; its ``Settings`` are checked like mmvid's own (:func:`mmvid.registry.check_plugin_settings`).

Trust: importing a file runs its code, so a file is imported only at the user's own request: ``--plugin``
(:func:`use`). A recipe's ``plugins:`` list says what its runs need; a recipe (perhaps someone else's) imports no
code by itself, so each file it names must be given with ``--plugin`` too (same path or same content), or a
module it names be installed (:func:`check_recorded`). Each one imported so is remembered in this process and in the
environment variable :data:`ENV` (``os.pathsep``-separated), which every process started from here inherits:
DDP's spawned ranks, torchrun ranks, the runs of ``mmvid sweep`` and of ``diagnose --try``.

A run records the plug-ins it used (``plugins``: absolute file paths or module names; ``plugin_sha256``:
each file's SHA-256). Loading a run (a checkpoint or run folder from anyone) runs no code of its own
accord (:func:`check_recorded`): each recorded file must have been given again (``--plugin``; the same
path, or a file with the same hash), and a recorded module must be importable here (installed). Otherwise
one line names the plug-in and what to do: missing, changed since the run was trained, or not given.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from mmvid.errors import MmvidError, PluginError

ENV = "MMVID_PLUGINS"
ENTRY_POINT_GROUP = "mmvid.plugins"
_LOADED: dict[str, str] = {}  # spec (absolute path or module name) -> sha256 of the file ("" for a module)
# Every module that came into being while a plug-in was imported (the plug-in's own and whatever it imported):
# a process started from here imports the same plug-ins, so whatever these modules register is there too.
_IMPORTED: set[str] = set()
_MODULES_OF: dict[str, set[str]] = {}  # spec -> the modules that came into being when it was imported
_ENTRY_POINTS_DONE = False


def is_file_spec(spec: str) -> bool:
    """A file (``my_balancer.py``, ``./x``, ``dir/x.py``) rather than a module name (``mypkg.balancers``)."""
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve(spec: str) -> str:
    """A file spec as an absolute path (relative to the working folder; a recipe's are relative to its own
    folder, mmvid.config.read_recipe); a module name as it is."""
    spec = str(spec).strip()
    if not spec:
        raise MmvidError("--plugin: an empty name; give a Python file (my_plugin.py) or a module (mypkg.plugins)")
    if not is_file_spec(spec):
        return spec
    path = Path(spec).expanduser()
    return str(path.resolve())


def _import_file(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise MmvidError(f"plug-in file {path} not found; give the path of a Python file with --plugin FILE")
    digest = sha256(p)
    name = f"mmvid_plugin_{p.stem}_{digest[:12]}"  # one module per file content: the same file twice imports once
    if name not in sys.modules:
        loader_spec = importlib.util.spec_from_file_location(name, p)
        if loader_spec is None or loader_spec.loader is None:
            raise MmvidError(f"plug-in file {path} cannot be imported (not a Python file); give a .py file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # spawned ranks unpickle its classes by this name
        try:
            loader_spec.loader.exec_module(module)
        except MmvidError:
            raise
        except Exception as e:  # the user's code: its own error, in one line, naming the file
            del sys.modules[name]
            raise MmvidError(f"plug-in file {path} failed to import: {type(e).__name__}: {e}") from None
    return digest


def _import_module(name: str) -> None:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise MmvidError(f"plug-in module {name!r} not found ({e}); install it, or give its file with --plugin FILE") from None
    except MmvidError:
        raise
    except Exception as e:
        raise MmvidError(f"plug-in module {name!r} failed to import: {type(e).__name__}: {e}") from None


def _new_modules(before: set[str]) -> set[str]:
    """The modules imported since ``before``, mmvid's own aside (the first plug-in imports mmvid's registries too)."""
    return {m for m in set(sys.modules) - before if m != "mmvid" and not m.startswith("mmvid.")}


def use(specs) -> list[str]:
    """Import the plug-ins ``specs`` (files or modules), at the user's request, in this process and (through
    :data:`ENV`) in every process started from it. Returns their resolved specs."""
    out = []
    for spec in specs or []:
        spec = resolve(spec)
        if spec not in _LOADED:
            before = set(sys.modules)
            _LOADED[spec] = _import_file(spec) if is_file_spec(spec) else (_import_module(spec) or "")
            _MODULES_OF[spec] = _new_modules(before) | ({spec} if not is_file_spec(spec) else set())
            _IMPORTED.update(_MODULES_OF[spec])
        out.append(spec)
    env = [s for s in os.environ.get(ENV, "").split(os.pathsep) if s]
    os.environ[ENV] = os.pathsep.join(env + [s for s in out if s not in env])
    return out


def load_plugins() -> None:
    """Every plug-in: mmvid's own (explicit imports of the modules that register entries, no scanning), then the
    user's given to a parent process (--plugin, :data:`ENV`) and the installed ones (entry points). Imports torch:
    called where a plug-in is about to be looked up, never at import time (option checking stays light)."""
    import mmvid.augment  # noqa: F401
    import mmvid.balance  # noqa: F401
    import mmvid.models.calibration  # noqa: F401
    import mmvid.models.encoders  # noqa: F401
    import mmvid.models.fusions  # noqa: F401

    load_inherited()


def load_inherited() -> None:
    """Import the plug-ins the parent process was given (:data:`ENV`) and the installed ones (entry points)."""
    global _ENTRY_POINTS_DONE
    inherited = [s for s in os.environ.get(ENV, "").split(os.pathsep) if s and s not in _LOADED]
    if inherited:
        use(inherited)
    if not _ENTRY_POINTS_DONE:
        _ENTRY_POINTS_DONE = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                before = set(sys.modules)
                ep.load()
                _LOADED.setdefault(ep.module, "")  # recorded by the runs as a module: installed where they load
                _MODULES_OF.setdefault(ep.module, set()).update(_new_modules(before) | {ep.module})
                _IMPORTED.update(_MODULES_OF[ep.module])
            except Exception as e:
                raise MmvidError(f"installed plug-in {ep.name!r} ({ep.value}, entry point group {ENTRY_POINT_GROUP}) "
                                 f"failed to import: {type(e).__name__}: {e}; fix or uninstall it") from None


def loaded() -> dict[str, str]:
    """The plug-ins imported at the user's request in this process: spec -> sha256 of the file ("" for a module)."""
    return dict(_LOADED)


RUN = ("this run was trained with", "loading a run")
RECIPE = ("the recipe names", "a recipe")


def check_recorded(plugins: list[str], hashes: dict[str, str], source: tuple[str, str] = RUN) -> list[str]:
    """A run's recorded plug-ins, each made available without importing code the user did not ask for:
    a file must have been given (``--plugin``: the same path, or a file with the same SHA-256); a module
    must be importable here. Anything else is one :class:`MmvidError` line naming the plug-in and what to do.
    A recorded file given again with other content is used (the user asked for it): returns a note for each."""
    load_inherited()
    by_hash = {h: s for s, h in _LOADED.items() if h}
    notes = []
    for spec in plugins:
        if spec in _LOADED and not is_file_spec(spec):
            continue
        if not is_file_spec(spec):
            if importlib.util.find_spec(spec.split(".")[0]) is None:
                raise PluginError(f"{source[0]} plug-in module {spec!r}, which is not installed here; "
                                  f"install it, or give its file with --plugin FILE")
            use([spec])  # installed: importable as the recorded module
            continue
        want = hashes.get(spec, "")
        if spec in _LOADED:
            if want and _LOADED[spec] != want:
                notes.append(f"plug-in {spec} changed since the run was trained; using the file given with --plugin")
            continue
        if want and want in by_hash:
            continue
        path = Path(spec)
        if not path.is_file():
            raise PluginError(f"plug-in file {spec} (recorded by this run) is missing; pass --plugin FILE with the "
                              f"plug-in's file (the same content: sha256 {want[:12]})")
        if want and sha256(path) != want:
            raise PluginError(f"plug-in file {spec} changed since the run was trained; restore it, or pass "
                              f"--plugin {spec} to use the changed file")
        raise PluginError(f"{source[0]} plug-in file {spec}; {source[1]} imports no code by itself: "
                          f"pass --plugin {spec} to import it")
    return notes


def providers(builders) -> list[str]:
    """The plug-ins given with :func:`use` (specs, in the order given) whose import registered one of ``builders``
    (registered classes or functions): what a run of them needs imported again."""
    modules = {getattr(b, "__module__", None) for b in builders}
    return [spec for spec in _LOADED if any(_comes_with(spec, m) for m in modules if m)]


def _comes_with(spec: str, module: str) -> bool:
    """Whether importing plug-in ``spec`` brings ``module`` (and what it registers) into a process."""
    return module in _MODULES_OF.get(spec, ()) or (not is_file_spec(spec) and (module == spec or module.startswith(spec + ".")))


def unreachable(builder) -> str | None:
    """Where a registered class or function came from, when a process started from here (a DDP rank, a sweep
    run) would not have it: registered by a module that none of the plug-ins imported (:func:`use`) or
    installed (entry points) brings in, e.g. a notebook cell or a module imported by hand. None when it is
    mmvid's own or comes with a plug-in."""
    module = getattr(builder, "__module__", None) or "__main__"
    if module == "mmvid" or module.startswith("mmvid.") or module in _IMPORTED or any(_comes_with(s, module) for s in _LOADED):
        return None
    main = sys.modules.get("__main__")
    if module in ("__main__", "__mp_main__"):
        return "a notebook cell" if not getattr(main, "__file__", None) else f"the script {Path(main.__file__).name}"
    return f"the module {module}, imported by hand"


def check_reachable(entries, processes: str) -> None:
    """``entries``: (kind, name, builder) of what a config uses. Each must reach ``processes`` (the words for
    the processes that will need it, e.g. "the 2 processes of gpus=2"): one line otherwise, saying how to put
    the plug-in in a file those processes import."""
    for kind, name, builder in entries:
        where = unreachable(builder)
        if where is None:
            continue
        stem = "".join(c if c.isalnum() else "_" for c in name)
        raise PluginError(f"{kind} {name!r} is defined in {where}, which {processes} cannot import; put it in a file "
                          f"(in a notebook: %%writefile {stem}.py) and pass plugins=[\"{stem}.py\"] "
                          f"(--plugin {stem}.py), or run it in this process (gpus=1)")
