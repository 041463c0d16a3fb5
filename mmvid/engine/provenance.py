"""A run's provenance, ``run.json``: the software and hardware each training session ran on, so that a number in a
table can be traced to the setup that made it.

Written by rank 0 at the start of every session (:func:`record_session`, called where config.yaml is written):
a fresh start writes it anew with one session; ``--resume`` appends a session, so a run continued on another
machine or with another torch says so. The file (JSON)::

    {"format": 1,
     "sessions": [{"started": "2025-01-31T12:00:00+00:00", "resumed": false, "start_epoch": 0,
                   "mmvid": {"version": "0.1.0", "commit": "ab12...", "dirty": false},   # commit: a git checkout
                   "python": "3.11.9", "torch": "2.5.1", "cuda": "12.4", "cudnn": 90100,  # None without CUDA
                   "gpus": ["NVIDIA H100 80GB HBM3"], "gpu_count": 1, "world_size": 1, "device": "cuda:0",
                   "host": "node-7", "platform": "Linux-...", "argv": ["mmvid", "train", ...],
                   "plugins": {"/path/my_fusion.py": "<sha256>"}, "cache": {"path": ..., "fingerprint": ...}}]}

Read back by :func:`mmvid.runfiles.read_run_info`.
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mmvid._version import __version__
from mmvid.runfiles import RUN_INFO, RunFileDamaged, cache_fingerprint, read_run_info
from mmvid.workspace import write_atomic

FORMAT = 1


def git_state(folder: Path) -> dict[str, Any]:
    """The commit of the git checkout mmvid is imported from and whether it has uncommitted changes to tracked
    files; {} when mmvid is installed from a package (no checkout) or git is absent."""
    if not (folder / ".git").exists():
        return {}
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    if commit.returncode != 0:
        return {}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def environment() -> dict[str, Any]:
    """The software and hardware of this process: mmvid's version (and git commit from a checkout), Python,
    torch, CUDA and cuDNN versions, the visible GPUs, the host and the command line."""
    cuda = torch.cuda.is_available()
    cudnn = torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {"mmvid": {"version": __version__, **git_state(Path(__file__).resolve().parents[2])},
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "cudnn": cudnn, "gpus": gpus, "gpu_count": len(gpus), "host": socket.gethostname(),
            "platform": platform.platform(), "argv": list(sys.argv)}


def session(cfg, info, device: torch.device, world_size: int, start_epoch: int, resumed: bool) -> dict[str, Any]:
    """One session's record: :func:`environment`, where it started, and what it ran with (the plug-ins from
    outside mmvid with their files' SHA-256, the cache and its fingerprint)."""
    return {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "resumed": resumed,
            "start_epoch": start_epoch, **environment(), "world_size": world_size, "device": str(device),
            "plugins": {s: cfg.plugin_sha256.get(s) for s in cfg.plugins},
            "cache": {"path": str(info.path), "fingerprint": cache_fingerprint(info)}}


def record_session(run_dir: Path, entry: dict[str, Any], resumed: bool) -> None:
    """Write run.json with ``entry`` as its only session, or, on a resume, appended to the sessions there. A
    run.json that is damaged (or of a run from before run.json) is started afresh on resume: the earlier
    sessions are then unknown, which the entry says (``earlier_sessions: "unknown"``)."""
    path = Path(run_dir) / RUN_INFO
    sessions: list[dict[str, Any]] = []
    if resumed:
        try:
            sessions = read_run_info(run_dir)["sessions"] if path.exists() else []
        except RunFileDamaged:
            sessions = []
        if not sessions:
            entry = {**entry, "earlier_sessions": "unknown"}
    data = {"format": FORMAT, "sessions": sessions + [entry]}
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
