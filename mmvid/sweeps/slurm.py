"""``mmvid sweep --emit slurm``: a Slurm job-array script whose task k runs run k of the plan."""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mmvid.errors import MmvidError
from mmvid.schema import SettingValueError, check_settings, spec
from mmvid.sweeps.plan import Sweep
from mmvid.workspace import writable_dir

# What a value on an #SBATCH line may hold: no space, quote or newline that would end the line or start another.
PLAIN = re.compile(r"^[A-Za-z0-9_.:,=+%/@-]+$")
TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # Slurm's minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
MEM = re.compile(r"^\d+[KMGT]?$")


@dataclass
class SlurmSettings:
    """What the job array asks Slurm for: ``mmvid sweep --emit slurm --slurm KEY=VALUE`` (repeatable), else a
    recipe's ``slurm:`` section (the options win, key by key); unset keys leave the cluster's default."""

    partition: str | None = spec(None, help="#SBATCH --partition")
    account: str | None = spec(None, help="#SBATCH --account")
    time: str | None = spec(None, help="#SBATCH --time per task: minutes, HH:MM:SS or D-HH:MM:SS")
    mem: str | None = spec(None, help="#SBATCH --mem per task, e.g. 32G")
    cpus: int = spec(8, ge=1, le=4096, help="#SBATCH --cpus-per-task")
    gres: str | None = spec("gpu:1", help="#SBATCH --gres per task; none: no GPU line")
    qos: str | None = spec(None, help="#SBATCH --qos")
    throttle: int | None = spec(None, ge=1, le=1_000_000, help="at most N array tasks at once (--array=0-K%N)")
    signal: int = spec(180, ge=0, le=86_400, help="seconds before the time limit at which a task requeues itself "
                                                  "(0: only Slurm's own requeue on preemption)")

    def __post_init__(self) -> None:
        for key in ("partition", "account", "time", "mem", "gres", "qos"):
            value = getattr(self, key)
            if value is not None and not PLAIN.match(str(value)):
                raise SettingValueError(key, value, "one word of letters, digits and _.:,=+%/@- (no space or quote)")
        if self.time is not None and not TIME.match(self.time):
            raise SettingValueError("time", self.time, "minutes, HH:MM:SS or D-HH:MM:SS, e.g. 4:00:00")
        if self.mem is not None and not MEM.match(self.mem):
            raise SettingValueError("mem", self.mem, "a size such as 32G or 16000M")
        if self.gres == "none":
            self.gres = None


def slurm_settings(options: dict[str, Any] | None, section: dict[str, Any] | None = None,
                   source: str = "a recipe") -> SlurmSettings:
    """The checked :class:`SlurmSettings` of a recipe's ``slurm:`` section (from ``source``) overridden by the
    ``--slurm`` options: an unknown key or a bad value is one line naming where it came from."""
    merged = {**(section or {}), **(options or {})}
    return check_settings(SlurmSettings, merged, "the Slurm script", "slurm",
                          lambda key: f" (--slurm {key}=...)" if key in (options or {}) or not key
                          else f" (in the slurm: section of {source})")


def sbatch_lines(settings: SlurmSettings) -> list[str]:
    """The #SBATCH lines of the settings that are set, in a fixed order."""
    flags = {"partition": "--partition", "account": "--account", "time": "--time", "mem": "--mem",
             "cpus": "--cpus-per-task", "gres": "--gres", "qos": "--qos"}
    lines = [f"#SBATCH {flag}={getattr(settings, key)}" for key, flag in flags.items()
             if getattr(settings, key) is not None]
    lines.append("#SBATCH --requeue")  # a preempted task goes back to the queue and resumes its run
    if settings.signal:
        lines.append(f"#SBATCH --signal=B:USR1@{settings.signal}")
    return lines


SLURM_KEYS = [f.name for f in fields(SlurmSettings)]


def emit_slurm(ws: Path, sweep: Sweep, path: Path | None = None, keep: str = "all", baseline: str | None = None,
               settings: SlurmSettings | None = None) -> Path:
    """A Slurm job-array script: task k runs run k of this plan (``mmvid sweep ... --task k``) with the
    resources of ``settings`` (default: one GPU, 8 cores), every task on the same (shared) workspace; the
    collecting step then writes the table. A task preempted, or warned ``signal`` seconds before its time
    limit, is requeued and, started again, resumes its run (``mmvid train --resume``: the sweep resumes a
    run left part-way)."""
    settings = settings or SlurmSettings()
    out = writable_dir(ws / "sweeps" / sweep.name, "sweep folder")
    path = path or out / "sweep.sbatch"
    writable_dir(out / "logs", "sweep log folder")
    # The mmvid of this environment, so that the nodes (which see the same file system) run the same version.
    program = Path(sys.executable).parent / "mmvid"
    program = str(program) if program.exists() else "mmvid"
    base = shlex.join([program, "sweep", *sweep.targets]) + " " + " ".join(
        shlex.join(o.split(" ", 1)) for o in sweep.options) + f" --workspace {shlex.quote(str(ws))}"
    collect_opts = f" --baseline {shlex.quote(baseline)}" if baseline else ""
    nl = "\n"
    text = f"""#!/bin/bash
# mmvid sweep {sweep.name}: {len(sweep.unique)} runs, one array task each (task k = run k of the plan).
# Every node must see the workspace {ws}, the recipes and this Python environment.
#   jobid=$(sbatch --parsable {shlex.quote(str(path))})
#   sbatch --dependency=afterany:$jobid --wrap "cd {shlex.quote(str(Path.cwd()))} && {base} --collect{collect_opts}"
# A task that stops (time limit, preemption) resumes its run when it is submitted again.
#SBATCH --job-name=mmvid-{sweep.name[:40]}
#SBATCH --array=0-{len(sweep.unique) - 1}{'' if settings.throttle is None else f'%{settings.throttle}'}
{nl.join(sbatch_lines(settings))}
#SBATCH --output={out / 'logs'}/slurm-%A_%a.log
set -euo pipefail
cd {shlex.quote(str(Path.cwd()))}
# Near the time limit (--signal) the task puts itself back in the queue; started again, it resumes its run.
requeue() {{ scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"; }}
trap requeue USR1
# In the background and waited for: bash runs a trap only between commands.
{base} --task "$SLURM_ARRAY_TASK_ID" --jobs 1{'' if keep == 'all' else f' --keep {keep}'} &
wait $!
"""
    path.write_text(text)
    return path
