"""The files of a run folder, read by every command through here, and where a run's cache is.

A run folder may come from another machine or another person, and any of its files may be damaged (a
disk error, an editor, a half-copied folder): each is untrusted input. The readers accept exactly the
layout ``mmvid train``, ``evaluate`` and ``robustness`` write and turn anything else into one
:class:`RunFileDamaged` line that names the file and what to do. YAML is read with ``safe_load`` (a tag
never builds an object), text must be UTF-8, and a damaged history never passes as an empty one.

Files of a run folder::

    config.yaml                      the run's config: a YAML mapping of config sections
    metrics.jsonl                    one JSON object of numbers per finished epoch, appended
    summary.json                     {"run_dir", "epochs", "last", "best"}, written when training ends
    run.json                         provenance: {"format", "sessions": [one object per training session]}
                                     (mmvid.engine.provenance), read by :func:`read_run_info`
    checkpoint_last.pt / _best.pt    read by mmvid.engine.checkpoints.load_checkpoint (weights only)
    robustness/robustness.json       written by ``mmvid robustness``, read by ``mmvid report``

:func:`check_run` reads the small ones (everything but the checkpoints) before a command does any heavy
work. :func:`resolve_run_cache` finds the cache of a run: the one in the run's own workspace first, checked
against the cache fingerprint the run recorded, so a workspace moved to another machine reads its own copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmvid.errors import MmvidError, PluginError
from mmvid.workspace import CKPT_BEST, CKPT_LAST  # noqa: F401 (mmvid.workspace recognises a run folder by them)

if TYPE_CHECKING:
    from mmvid.config import TrainConfig
    from mmvid.data.cache import CacheInfo

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
ROBUSTNESS = "robustness.json"
RUN_INFO = "run.json"


class RunFileDamaged(MmvidError):
    """A file of a run folder that is not what mmvid wrote; the message names it and what to do."""


def remedy(path: Path) -> str:
    """What to do about a damaged file of a run folder, from its name and what else the folder holds."""
    path = Path(path)
    run = path.parent
    resume = f"`mmvid train --resume {run}`"
    if path.name == CONFIG:
        if (run / CKPT_LAST).exists():
            return f"delete it and run {resume}, which writes it again from the checkpoint"
        return "restore it from a copy of the run, or delete the run folder and train the run again"
    if path.name == METRICS:
        return "restore it from a copy of the run, or delete the run folder and train the run again"
    if path.name == SUMMARY:
        return f"delete it and run {resume}, which writes it again"
    if path.name == RUN_INFO:
        return f"delete it; `mmvid train --resume {run}` starts it again (earlier sessions then unknown)"
    if path.name == ROBUSTNESS:
        return f"delete it, or write it again with `mmvid robustness {run.parent}`"
    return "delete it; the command that wrote it writes it again"


def damaged(path: Path, what: str) -> RunFileDamaged:
    return RunFileDamaged(f"{path} is damaged ({what}); {remedy(path)}")


def read_text(path: str | Path) -> str:
    """The file as UTF-8 text (a run's files are; anything else is damage)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MmvidError(f"cannot read {path}: {e.strerror or e}; check its permissions, or {remedy(path)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise damaged(path, f"not UTF-8 text: byte {e.start} is 0x{data[e.start]:02x}") from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping (``safe_load``: plain values only, a ``!!python`` tag is refused)."""
    import yaml

    path = Path(path)
    text = read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise damaged(path, f"not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise damaged(path, f"a YAML {kind_of(data)}, not a mapping of config sections")
    return data


def yaml_problem(e: Exception) -> str:
    """What PyYAML found and where, in a few words (its own message spans several lines)."""
    problem = getattr(e, "problem", None) or " ".join(str(e).split())[:200]
    mark = getattr(e, "problem_mark", None)
    return f"{problem}, line {mark.line + 1} column {mark.column + 1}" if mark is not None else problem


def kind_of(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "text", type(None): "empty document", bool: "true/false"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def json_kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", type(None): "null", bool: "true/false"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file that must hold one object."""
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise damaged(path, "empty")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise damaged(path, f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise damaged(path, f"a JSON {json_kind(data)}, not an object")
    return data


def is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def check_record(rec: Any, path: Path, line: int) -> dict[str, Any]:
    """One metrics.jsonl line: an object of numbers (or null) with a non-negative integer ``epoch``."""
    where = f"line {line}"
    if not isinstance(rec, dict):
        raise damaged(path, f"{where} is a JSON {json_kind(rec)}, not an epoch's record")
    epoch = rec.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise damaged(path, f"{where} has no epoch number")
    bad = [k for k, v in rec.items() if not is_number(v)]
    if bad:
        raise damaged(path, f"{where}: {bad[0]} is not a number")
    return rec


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file that a process appends to (``metrics.jsonl``).

    Each line is written whole, newline included, by one append; a kill during an append leaves a last
    line without its newline that does not parse: that torn line is dropped (the run resumes from the
    checkpoint before it). Any other line that is not a record (not JSON, not an object of numbers with
    an ``epoch``), or bytes that are not UTF-8, are damage and an error naming the file and the line.
    """
    path = Path(path)
    text = read_text(path)
    lines = text.splitlines()
    out = []
    for k, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except ValueError:
            if k == len(lines) - 1 and not text.endswith("\n"):  # torn by a kill during its append
                break
            raise damaged(path, f"line {k + 1} is not JSON") from None
        out.append(check_record(rec, path, k + 1))
    return out


# ----------------------------------------------------------------------------- the files of a run


def read_config_mapping(run: str | Path) -> dict[str, Any]:
    """``<run>/config.yaml`` as saved: a mapping of config sections (not checked against the schema)."""
    path = Path(run) / CONFIG
    if not path.exists():
        raise MmvidError(f"{Path(run)} is not a run folder (no {CONFIG}); pass a folder written by `mmvid train`")
    return read_yaml_mapping(path)


def read_config(run: str | Path) -> TrainConfig:
    """``<run>/config.yaml`` as the config it describes, every key and value checked as a recipe's are."""
    from mmvid.config import config_from_dict

    data = read_config_mapping(run)
    try:
        return config_from_dict(data)
    except PluginError:  # the config is fine: a plug-in it names is not available here
        raise
    except MmvidError as e:
        raise damaged(Path(run) / CONFIG, str(e)) from None


def read_metrics(run: str | Path, required: bool = True) -> list[dict[str, Any]]:
    """The epochs of ``<run>/metrics.jsonl``; ``required``: an error when the run has none yet."""
    path = Path(run) / METRICS
    if not path.exists():
        if required:
            raise MmvidError(f"{Path(run)} has no {METRICS}; train the run first")
        return []
    recs = read_jsonl(path)
    if not recs and required:
        raise MmvidError(f"{path} is empty; train at least one epoch first")
    return recs


# The words (not numbers) a summary.json holds: what the best epoch was chosen on, and the run's protocol.
WORDS_OF = {("best", "selected_on"): ("val", "test"), (".", "protocol"): ("clean", "reference")}
WORDS = {field for _, field in WORDS_OF}


def check_summary(data: dict[str, Any], path: Path) -> dict[str, Any]:
    epochs = data.get("epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise damaged(path, "no number of epochs")
    for key in ("last", "best"):
        part = data.get(key)
        if not isinstance(part, dict):
            raise damaged(path, f"{key} is not an object")
        bad = [k for k, v in part.items() if not is_number(v) and k not in WORDS]
        if bad:
            raise damaged(path, f"{key}.{bad[0]} is not a number")
    if not isinstance(data["best"].get("epoch", -1), int):
        raise damaged(path, "best.epoch is not an epoch number")
    for (key, field), choices in WORDS_OF.items():
        value = data[key].get(field) if key != "." else data.get(field)
        if value is not None and value not in choices:
            raise damaged(path, f"{field}={value!r} is not one of {', '.join(choices)}")
    return data


def read_summary(run: str | Path) -> dict[str, Any] | None:
    """``<run>/summary.json`` (None when training has not ended yet)."""
    path = Path(run) / SUMMARY
    if not path.exists():
        return None
    return check_summary(read_json_object(path), path)


def read_run_info(run: str | Path) -> dict[str, Any] | None:
    """``<run>/run.json``, the run's provenance (None for a run from before it existed): a JSON object with
    ``format`` 1 and ``sessions``, a non-empty list of objects, each with the text fields ``started`` and
    ``torch``; anything else is one :class:`RunFileDamaged` line."""
    path = Path(run) / RUN_INFO
    if not path.exists():
        return None
    data = read_json_object(path)
    if data.get("format") != 1:
        raise damaged(path, f"format {data.get('format')!r}, not 1")
    sessions = data.get("sessions")
    if not isinstance(sessions, list) or not sessions:
        raise damaged(path, f"sessions is a {json_kind(sessions)}, not a non-empty list")
    for i, entry in enumerate(sessions, 1):
        if not isinstance(entry, dict):
            raise damaged(path, f"session {i} is a {json_kind(entry)}, not an object")
        for key in ("started", "torch"):
            if not isinstance(entry.get(key), str):
                raise damaged(path, f"session {i} has no text {key!r}")
    return data


def session_setup(entry: dict[str, Any]) -> str:
    """One session of run.json in a few words: ``mmvid 0.1.0 (ab12cd3, with changes), torch 2.5.1, CUDA 12.4,
    1 x NVIDIA H100, 2 processes``; CPU where no GPU was visible."""
    mm = entry.get("mmvid") if isinstance(entry.get("mmvid"), dict) else {}
    commit = str(mm.get("commit") or "")[:7]
    tag = f" ({commit}{', with changes' if mm.get('dirty') else ''})" if commit else ""
    gpus = entry.get("gpus") if isinstance(entry.get("gpus"), list) else []
    names = sorted(set(map(str, gpus)))
    hardware = ", ".join(f"{gpus.count(n)} x {n}" for n in names) if names else "CPU"
    parts = [f"mmvid {mm.get('version', '?')}{tag}", f"torch {entry.get('torch')}"]
    parts += [f"CUDA {entry['cuda']}"] if entry.get("cuda") else []
    parts += [hardware] + ([f"{entry['world_size']} processes"] if (entry.get("world_size") or 1) > 1 else [])
    return ", ".join(parts)


def run_setups(run: str | Path) -> list[str]:
    """The distinct setups a run was trained on (:func:`session_setup` of each session of run.json, in order);
    [] for a run from before run.json. A damaged run.json is one :class:`RunFileDamaged` line."""
    info = read_run_info(run)
    return list(dict.fromkeys(session_setup(e) for e in info["sessions"])) if info else []


def check_run(run: str | Path) -> None:
    """Read every small file of a run folder (config.yaml, metrics.jsonl, summary.json), before any heavy
    work; a damaged one is one line naming it. A checkpoint file outside a run folder has none to check.

    A metrics.jsonl without a record is damage when the run has a checkpoint or a summary: training writes
    an epoch's line before that epoch's checkpoint, so its history was lost.
    """
    run = Path(run)
    if (run / CONFIG).exists():
        read_config(run)
    recs = read_metrics(run, required=False) if (run / METRICS).exists() else None
    summary = read_summary(run)
    if recs == []:
        has = [n for n in (CKPT_LAST, CKPT_BEST, SUMMARY) if (run / n).exists()]
        if has:
            raise damaged(run / METRICS, f"no epoch in it, but the run has {', '.join(has)}")
    if summary is not None and recs is not None and recs[-1]["epoch"] + 1 < summary["epochs"]:
        raise damaged(run / METRICS, f"it ends at epoch {recs[-1]['epoch'] + 1}, but {SUMMARY} says the run "
                                     f"trained {summary['epochs']}")


# ----------------------------------------------------------------------------- the cache of a run


@dataclass
class RunCache:
    """The cache a command reads a run's clips from, and why: ``how`` is one clause for the line
    :meth:`line` prints. ``same``: True when its fingerprint is the one the run recorded (the split rows
    saved in the run apply), False for another cache given by ``--cache`` (its own splits are used), None
    for a run older than recorded fingerprints."""

    path: Path
    info: CacheInfo
    how: str
    same: bool | None

    def line(self, run: str | Path) -> str:
        return f"cache of {Path(run).name}: {self.path} ({self.how})"


def workspace_of(run: Path) -> Path | None:
    """The workspace a run folder lives in (``<workspace>/runs/<run>``), else None."""
    run = Path(run).resolve()
    return run.parent.parent if run.parent.name == "runs" else None


def cache_fingerprint(info: CacheInfo) -> str | None:
    fp = info.attrs.get("fingerprint")
    return str(fp) if fp is not None else None


def resolve_run_cache(run: str | Path, ck: dict[str, Any], cache: str | Path | None = None) -> RunCache:
    """The cache of the run folder ``run`` whose checkpoint is ``ck``: ``cache`` (``--cache``) when given;
    else ``<its workspace>/caches/<name>.h5``, where the run lives now; else the path stored in the run
    (where it was trained). The cache chosen must have the fingerprint the run recorded at train time
    (its clips and prepare parameters; mmvid.data.cache.fingerprint), so a re-prepared or foreign cache of
    the same name is an error rather than a silent other test set; a damaged one raises CacheDamaged.
    Runs older than recorded fingerprints are checked for their class names and rows only.
    """
    from mmvid.data.cache import read_info

    run = Path(run)
    want = ck.get("cache_fingerprint") or None
    stored = Path(ck["cache"]) if ck.get("cache") else None
    if cache is not None:
        info = read_info(cache)
        check_classes(info, ck, run)
        fp = cache_fingerprint(info)
        same = None if want is None else fp == want
        how = ("given by --cache; the cache the run was trained on" if same else
               "given by --cache; the run records no cache fingerprint, so its saved split rows are used" if same is None
               else f"given by --cache; not the cache the run was trained on (fingerprint {fp}, the run's {want}): "
                    f"the cache's own splits are used")
        return RunCache(info.path, info, how, same)
    if stored is None:
        raise MmvidError(f"the checkpoint of {run} names no cache (not written by `mmvid train`); pass --cache")
    ws = workspace_of(run)
    own = ws / "caches" / stored.name if ws is not None else None
    if own is not None and own.exists():
        path, where = own, "in the run's workspace"
    elif stored.exists():
        path = stored
        where = (f"the path stored in the run; its workspace has no caches/{stored.name}" if own is not None
                 else "the path stored in the run")
    else:
        places = " nor at ".join(str(p) for p in dict.fromkeys(p for p in (own, stored) if p is not None))
        raise MmvidError(f"the cache of run {run.name} ({stored.name}) is neither at {places}; prepare it into "
                         f"{own.parent if own is not None else 'the workspace caches/ folder'} with the same `mmvid "
                         f"prepare` command as before, or pass --cache PATH")
    info = read_info(path)
    fp = cache_fingerprint(info)
    if want is not None and fp != want:
        raise MmvidError(f"cache {path} is not the cache run {run.name} was trained on (fingerprint {fp}, the run's "
                         f"{want}: other clips or prepare parameters); prepare it again as it was for that run, or "
                         f"pass --cache PATH to read another cache on purpose")
    check_classes(info, ck, run)
    if want is None:
        check_rows(info, ck, run)
        return RunCache(path, info, f"{where}; the run records no cache fingerprint, so it was not checked", None)
    return RunCache(path, info, f"{where}; fingerprint {fp} as recorded by the run", True)


def check_classes(info: CacheInfo, ck: dict[str, Any], run: Path) -> None:
    names = list(ck.get("class_names") or [])
    if names and list(info.class_names) != names:
        raise MmvidError(f"cache {info.path} has other classes than run {run.name} was trained on ({len(info.class_names)} "
                         f"against {len(names)}, e.g. {next((a for a, b in zip(info.class_names, names) if a != b), '...')!r}); "
                         f"pass the run's own cache with --cache")


def check_rows(info: CacheInfo, ck: dict[str, Any], run: Path) -> None:
    """Rows the run saved for its splits exist in ``info`` (runs without a recorded fingerprint)."""
    n = len(info.labels)
    for name, rows in (ck.get("splits") or {}).items():
        if rows is not None and len(rows) and int(max(rows)) >= n:
            raise MmvidError(f"cache {info.path} has {n} clips, run {run.name}'s {name} split uses row {int(max(rows))}: "
                             f"it is not the cache the run was trained on; pass the run's own cache with --cache")
