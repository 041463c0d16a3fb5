"""``mmvid sweep``: every recipe of a paper table (a folder of recipes) times every seed, one ``mmvid train``
run each, then the table in the paper's layout with the user's numbers beside the published ones.

One module per concern; imports go down this list, never up:

* ``plan``: :func:`~mmvid.sweeps.plan.plan_sweep`, one :class:`~mmvid.sweeps.plan.RunSpec` per recipe, seed and
  protocol, each with a run name derived from the recipe's path (``sweep-table1-cremad-concat-mm-s0``), so that
  running the same command again finds its runs; ``sweep.json``;
* ``state``: whether a run is done (reused), partial (resumed with ``mmvid train --resume``) or new, and a folder
  trained with another config refused;
* ``running``: the runs as ``mmvid train`` processes (what ``--dry-run`` prints is what runs), ``jobs`` at a time
  on CPU or one per GPU (``CUDA_VISIBLE_DEVICES``), under one Rich view, Ctrl-C letting them save;
* ``slurm``: ``--emit slurm``, a job array whose task k runs run k of the same plan;
* ``stats``: the finished runs as cells: mean, sample std and a 95 % confidence interval (Student's t over
  seeds) of the last-epoch and of the best-validation-epoch test accuracy, beside the recipe's
  ``paper.accuracy``;
* ``tables``: table.md, table.csv, table.png and the Rich summary;
* ``command``: :func:`~mmvid.sweeps.command.sweep_command`, the command itself.
"""
