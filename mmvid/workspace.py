"""Where caches and runs live: ``--workspace``, else ``$MMVID_HOME``, else ``./mmvid-workspace``.

A user's value becomes a path inside the workspace only through :func:`named` (a plain name, mmvid.schema),
so ``runs/<name>`` and ``caches/<name>.h5`` never leave their folder. mmvid writes into a run folder only when
it is new, empty or one ``mmvid train`` wrote (:func:`check_run_folder`), and into an ``--out`` path only when
it is new or mmvid wrote it (:func:`check_out_folder`, :func:`check_out_file`); anything else is one line,
even with ``--force``.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from mmvid.errors import MmvidError


def workspace_dir(path: str | Path | None = None) -> Path:
    root = Path(path or os.environ.get("MMVID_HOME") or "mmvid-workspace")
    return root.expanduser().resolve()


def writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` (and its parents) and check that files can be written in it, before any long work.

    A read-only workspace, a full disk, or a file where a folder must be is one line naming the path.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".mmvid-write-test-"):
            pass
    except OSError as e:
        raise unwritable(e, path, what) from None
    return path


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader (or a resume after ``kill -9``) sees the old file or the new
    one, never an empty or half-written one: write a sibling temp file, then ``os.replace`` it over ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


HINTS = {
    errno.EACCES: "choose a writable --workspace (or --out), or change its permissions",
    errno.EPERM: "choose a writable --workspace (or --out), or change its permissions",
    errno.EROFS: "it is on a read-only file system: choose a writable --workspace (or --out)",
    errno.ENOTDIR: "a part of that path is a file, not a folder: move the file or choose another --workspace (or --out)",
    errno.EEXIST: "a file is in the place of that folder: move it or choose another --workspace (or --out)",
    errno.EISDIR: "a folder is in the place of that file: move it or choose another --out",
    errno.ENOSPC: "the disk is full: free some space or choose another --workspace (or --out)",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another --workspace (or --out)",
}


def unwritable(e: OSError, path: str | Path | None = None, what: str = "") -> MmvidError:
    """An OSError met while writing ``path`` (default: the file named by the error) as one line;
    the CLI applies it to any OSError that names a file, so that no command shows a traceback."""
    where = path if path is not None else e.filename
    hint = HINTS.get(e.errno or -1, "check that path")
    if path is None and os.path.exists(where) and not os.access(where, os.R_OK):
        verb = "cannot read "
    elif path is not None or e.errno in HINTS:
        verb = f"cannot write {what + ' ' if what else ''}"
    else:
        verb = "cannot use "
    return MmvidError(f"{verb}{where}: {e.strerror or e}; {hint}")


# Files of a run folder (mmvid.engine writes them).
CKPT_LAST, CKPT_BEST = "checkpoint_last.pt", "checkpoint_best.pt"
# The first line of every config.yaml that `mmvid train` writes (a YAML comment: readers ignore it): the mark of
# a run folder mmvid wrote, present from the start of a run (before its first checkpoint).
RUN_MARK = "# mmvid run config"


def named(folder: Path, name: str, label: str, suffix: str = "") -> Path:
    """``folder / (name + suffix)`` for a plain ``name`` (mmvid.schema.is_plain_name), else the one line naming
    ``label``: the one way a user's value becomes the name of a file or folder of the workspace."""
    from mmvid.schema import check_name

    return folder / f"{check_name(label, name)}{suffix}"


def is_mmvid_run(folder: Path) -> bool:
    """A folder ``mmvid train`` wrote: its config.yaml starts with :data:`RUN_MARK`; or, a run of an mmvid from
    before the mark, it holds checkpoint_last.pt (loaded, and so checked, before a resume writes) or the
    summary.json of a finished run (what a sweep's ``--keep metrics`` leaves)."""
    folder = Path(folder)
    if (folder / CKPT_LAST).is_file() or _json_with(folder / "summary.json", ("run_dir", "epochs", "last", "best")):
        return True
    try:
        with open(folder / "config.yaml", encoding="utf-8", errors="replace") as fh:
            return fh.readline().startswith(RUN_MARK)
    except OSError:
        return False


def check_run_folder(folder: Path, hint: str = "choose another --run-name or move that folder") -> None:
    """A run folder mmvid may write into: absent, empty, or one mmvid train wrote (:func:`is_mmvid_run`).
    Anything else is one line: mmvid never writes into (or over) files it did not write."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise MmvidError(f"cannot write run folder {folder}: a file is in its place, which mmvid does not overwrite; "
                         f"move that file or choose another name")
    if is_mmvid_run(folder) or not any(folder.iterdir()):
        return
    raise MmvidError(f"{folder} exists but is not a run folder written by `mmvid train` (its config.yaml does not "
                     f"start with {RUN_MARK!r}, and it has no {CKPT_LAST} or summary.json of a run); mmvid does not "
                     f"write into it, even with "
                     f"--force: {hint}")


def check_out_folder(folder: Path, record: str, keys: tuple[str, ...], label: str = "--out") -> None:
    """An output folder the user named: new, empty, or one this command wrote before, recognised by its
    ``record`` (a JSON object with ``keys``: robustness.json, diagnosis.json). Never a folder of other files."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise MmvidError(f"{label} {folder} is a file, not a folder; mmvid does not overwrite it: choose a new or "
                         f"empty folder")
    if not any(folder.iterdir()) or _json_with(folder / record, keys):
        return
    raise MmvidError(f"{label} {folder} holds files mmvid did not write (no {record} of an earlier run of this "
                     f"command); mmvid does not write into it, even with --force: choose a new or empty folder")


def _json_with(path: Path, keys: tuple[str, ...]) -> bool:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(k in data for k in keys)


# What mmvid puts into the files it writes for an --out path, to recognise them before overwriting one.
FIGURE_METADATA = {".png": {"Software": "mmvid"}, ".svg": {"Creator": "mmvid"}}


def written_by_mmvid(path: Path) -> bool:
    """Whether mmvid wrote the file at ``path`` (one it may overwrite): a figure with mmvid's metadata
    (:data:`FIGURE_METADATA`, mmvid.results.plotting.save_figure) or an HTML page titled by mmvid (report, diagnosis)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    if path.suffix == ".png":
        return head.startswith(b"\x89PNG") and b"Software\x00mmvid" in head
    if path.suffix == ".svg":
        return b"<svg" in head and b"<dc:title>mmvid</dc:title>" in head
    if path.suffix in (".html", ".htm"):
        return head.lstrip().lower().startswith(b"<!doctype html>") and b"<title>mmvid " in head
    return False


def check_out_file(path: Path, label: str = "--out") -> None:
    """A file the user named for mmvid to write: new, or one mmvid wrote (:func:`written_by_mmvid`)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir():
        raise MmvidError(f"{label} {path} is a folder; give the path of a file to write")
    if not written_by_mmvid(path):
        raise MmvidError(f"{label} {path} exists and was not written by mmvid; mmvid does not overwrite it, even "
                         f"with --force: {'choose another path or ' if label == '--out' else ''}move that file")


def caches_dir(ws: Path) -> Path:
    return ws / "caches"


def runs_dir(ws: Path) -> Path:
    return ws / "runs"


def cache_path(ws: Path, dataset: str, label: str = "--dataset") -> Path:
    """``caches/<dataset>.h5`` for a plain name (else the one line naming ``label``)."""
    return named(caches_dir(ws), dataset, label, ".h5")


def run_path(ws: Path, name: str, label: str = "--run-name") -> Path:
    """``runs/<name>`` for a plain name (else the one line naming ``label``)."""
    return named(runs_dir(ws), name, label)


def resolve_run(ws: Path, run: str | Path | None) -> Path:
    """A run folder from a name (a plain name, in runs/), a path (folder or checkpoint file), or the latest run."""
    if run is not None:
        if not str(run).strip():
            raise MmvidError("the run given is empty; give a run name, a run folder or a checkpoint (or leave it out "
                             "for the latest run)")
        p = Path(run)
        if p.is_file():
            return p.parent
        if p.is_dir():
            return p.resolve()
        from mmvid.schema import is_plain_name

        q = runs_dir(ws) / str(run)
        if is_plain_name(str(run)) and q.is_dir():
            return q
        if not is_plain_name(str(run)):
            raise MmvidError(f"run {str(run)!r} not found: no such folder or checkpoint (and it is not a run name in "
                             f"{runs_dir(ws)}: a run name is a plain name, without a path)")
        raise MmvidError(f"run {str(run)!r} not found (looked for a folder, a checkpoint, and {q})")
    found = sorted((d for d in runs_dir(ws).glob("*") if (d / "config.yaml").exists()), key=lambda d: d.stat().st_mtime)
    if not found:
        raise MmvidError(f"no runs in {runs_dir(ws)}; run `mmvid train` first")
    return found[-1]
