"""``mmvid sweep --emit slurm``: a Slurm job-array script whose task k runs run k of the plan."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from mmvid.sweeps.plan import Sweep
from mmvid.workspace import writable_dir


def emit_slurm(ws: Path, sweep: Sweep, path: Path | None = None, keep: str = "all", baseline: str | None = None) -> Path:
    """A Slurm job-array script: task k runs run k of this plan (``mmvid sweep ... --task k``) on one GPU,
    every task on the same (shared) workspace; the collecting step then writes the table."""
    out = writable_dir(ws / "sweeps" / sweep.name, "sweep folder")
    path = path or out / "sweep.sbatch"
    writable_dir(out / "logs", "sweep log folder")
    # The mmvid of this environment, so that the nodes (which see the same file system) run the same version.
    program = Path(sys.executable).parent / "mmvid"
    program = str(program) if program.exists() else "mmvid"
    base = shlex.join([program, "sweep", *sweep.targets]) + " " + " ".join(
        shlex.join(o.split(" ", 1)) for o in sweep.options) + f" --workspace {shlex.quote(str(ws))}"
    collect_opts = f" --baseline {shlex.quote(baseline)}" if baseline else ""
    text = f"""#!/bin/bash
# mmvid sweep {sweep.name}: {len(sweep.unique)} runs, one array task each (task k = run k of the plan).
# Every node must see the workspace {ws}, the recipes and this Python environment.
#   jobid=$(sbatch --parsable {shlex.quote(str(path))})
#   sbatch --dependency=afterany:$jobid --wrap "cd {shlex.quote(str(Path.cwd()))} && {base} --collect{collect_opts}"
# A task that stops (time limit, preemption) resumes its run when it is submitted again.
#SBATCH --job-name=mmvid-{sweep.name[:40]}
#SBATCH --array=0-{len(sweep.unique) - 1}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --output={out / 'logs'}/slurm-%A_%a.log
set -euo pipefail
cd {shlex.quote(str(Path.cwd()))}
{base} --task "$SLURM_ARRAY_TASK_ID" --jobs 1{'' if keep == 'all' else f' --keep {keep}'}
"""
    path.write_text(text)
    return path
