"""A sweep's statistics: the finished runs turned into table cells, each the mean, sample std and 95 %
confidence interval (Student's t over seeds) of the last-epoch and of the best-epoch test accuracy, and, against a
``--baseline`` row, the same of the per-seed differences."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from mmvid.errors import MmvidError
from mmvid.runfiles import read_summary, run_setups
from mmvid.sweeps.plan import Sweep
from mmvid.sweeps.state import run_state
from mmvid.workspace import runs_dir


@dataclass
class Cell:
    """One table cell: the seeds of a recipe under one protocol, summarised."""

    table: str
    row: str
    column: str
    recipe: str
    seeds: list[int]
    last: list[float]  # test accuracy % at the last epoch, per seed
    best: list[float]  # test accuracy % at the best epoch (best-validation; best-test under reference), per seed
    paper: float | None
    dataset: str = ""  # the data set (cache name) the runs trained and were tested on
    # the data set of the published figure (the recipe's own data.dataset); when it is not ``dataset`` the
    # table prints the figure but no difference to it (:func:`paper_comparable`)
    paper_dataset: str | None = None
    # why the cell's method never acted in some of its runs (:func:`never_acted`) -> the number of those runs:
    # the cell is that method's configuration, not its result
    idle: dict[str, int] = field(default_factory=dict)
    name: str = ""  # the recipe's own name (its file name without the order prefix), for --baseline
    protocol: str = "clean"  # the runs' protocol (mmvid.config.PROTOCOLS)
    # what each seed's best epoch was chosen on (summary.json): "val", or "test" (protocol reference, or a
    # clean run without a validation split)
    selected_on: list[str] = field(default_factory=list)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)  # last|best -> mean, std, ci_lo, ci_hi
    # last|best -> the same statistics of (this cell - the baseline's) per seed, over the seeds both have
    versus: dict[str, dict[str, float]] = field(default_factory=dict)


def never_acted(run: Path, cfg) -> list[str]:
    """Why the run's augmentation or balancer never acted, each in a few words, as the plug-in tells from the
    statistics it logged in the run's metrics.jsonl (:meth:`mmvid.registry.Plugin.never_acted`); ``cfg``: the
    run's resolved config. Empty when each acted, is ``none``, or cannot tell."""
    from mmvid.plugins import load_plugins
    from mmvid.registry import AUGMENTS, BALANCERS, check_plugin_settings
    from mmvid.runfiles import read_metrics

    load_plugins()
    records = read_metrics(run)
    found = []
    for family, section in ((AUGMENTS, cfg.augment), (BALANCERS, cfg.balance)):
        if section.name == "none":
            continue
        settings = check_plugin_settings(family, section.name, section.args)
        why = family.get(section.name).never_acted(settings, records)
        found += [why] if why else []
    return found


def paper_comparable(cell: Cell) -> bool:
    """Whether a difference to the paper's figure means anything: the cell has one and its runs used the data
    set the figure was published on (a recipe without data.dataset of its own publishes none to compare)."""
    return cell.paper is not None and cell.paper_dataset is not None and cell.dataset == cell.paper_dataset


def summarize(values: list[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample std (n - 1) and the ``level`` confidence interval of the mean, mean +- t_{(1+level)/2, n-1}
    std / sqrt(n) (Student's t: a handful of seeds). One seed: std and interval are NaN."""
    from scipy.stats import t  # imported here: scipy takes a second to import; a sweep needs it only at the end

    n = len(values)
    mean = sum(values) / n if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "std": math.nan, "ci_lo": math.nan, "ci_hi": math.nan}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_lo": mean - half, "ci_hi": mean + half}


def aggregate(ws: Path, sweep: Sweep, baseline: str | None = None) -> tuple[list[Cell], list[str]]:
    """Cells from the finished runs of the sweep (in plan order), and the names of runs not finished.

    ``baseline`` (a recipe name such as ``concat``, or a row label): each other cell of the same table and
    column also gets the statistics of its per-seed difference to that cell (paired by seed: the same seed
    gives both runs the same split and initialisation), so that "outside the interval" is a paired test.
    """
    # Imported here: mmvid.engine imports torch, and `mmvid sweep` checks its options (--seeds, --epochs,
    # --protocol, --emit) before anything loads torch.
    from mmvid.engine.evaluation import best_selected_on

    cells: dict[tuple[str, str], Cell] = {}
    missing: list[str] = []
    for r in sweep.runs:
        protocol = r.config.protocol
        cell = cells.setdefault((r.row_id, protocol), Cell(r.table, r.row, r.column, str(r.recipe), [], [], [], r.paper,
                                                           dataset=r.config.data.dataset,
                                                           paper_dataset=r.paper_dataset,
                                                           name=re.sub(r"^\d+-", "", r.recipe.stem), protocol=protocol))
        if run_state(ws, r) != "done":
            missing += [r.name] if r.name not in missing else []
            continue
        s = read_summary(runs_dir(ws) / r.name)
        accs = [s[k].get("test_acc") for k in ("last", "best")]
        if None in accs:
            raise MmvidError(f"{runs_dir(ws) / r.name / 'summary.json'} has no test accuracy of its "
                             f"{'last' if accs[0] is None else 'best'} epoch (a cache without a test split?); "
                             f"the table compares test accuracies")
        cell.seeds.append(r.seed)
        cell.last.append(100.0 * float(accs[0]))
        cell.best.append(100.0 * float(accs[1]))
        cell.selected_on.append(best_selected_on(s))
        for why in never_acted(runs_dir(ws) / r.name, r.config):
            cell.idle[why] = cell.idle.get(why, 0) + 1
    for cell in cells.values():
        cell.stats = {"last": summarize(cell.last), "best": summarize(cell.best)}
    if baseline:
        versus_baseline(list(cells.values()), baseline)
    return list(cells.values()), missing


def versus_baseline(cells: list[Cell], baseline: str, alpha: float = 0.05) -> None:
    """Fill each cell's ``versus``: against the ``baseline`` cell of the same table, column and protocol, the
    per-seed differences (paired by seed: the same seed gives both runs the same split and initialisation)
    summarised by :func:`summarize`, their paired t-test p-value ``p`` (``scipy.stats.ttest_rel``, two-sided;
    NaN under two common seeds or when every difference is equal) and ``p_adj``, the Benjamini-Hochberg
    adjusted value (``scipy.stats.false_discovery_control``) over every comparison of the same paper table,
    protocol and epoch (last / best), the family a reader scans for marked rows. ``beyond`` is 1.0 when the
    difference stays significant after adjustment (``p_adj < alpha``), else 0.0.

    The unadjusted interval excludes 0 exactly when ``p < alpha`` (the same t statistic), so a row marked
    only by its interval but not ``beyond`` is one the many comparisons can explain."""
    from scipy.stats import false_discovery_control, ttest_rel  # scipy: see summarize

    bases = {(c.table, c.column, c.protocol): c for c in cells if baseline in (c.name, c.row)}
    if not bases:
        raise MmvidError(f"--baseline {baseline!r} is no row of this sweep; choose a recipe name or row label: "
                         + ", ".join(dict.fromkeys(c.name for c in cells)))
    for cell in cells:
        base = bases.get((cell.table, cell.column, cell.protocol))
        if base is None or base is cell:
            continue
        for which in ("last", "best"):
            mine, theirs = (dict(zip(c.seeds, getattr(c, which))) for c in (cell, base))
            common = [s for s in mine if s in theirs]
            cell.versus[which] = summarize([mine[s] - theirs[s] for s in common])
            p = math.nan
            if len(common) >= 2 and len({mine[s] - theirs[s] for s in common}) > 1:
                p = float(ttest_rel([mine[s] for s in common], [theirs[s] for s in common]).pvalue)
            cell.versus[which]["p"] = p
    families: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for cell in cells:
        for which, st in cell.versus.items():
            st["p_adj"], st["beyond"] = math.nan, 0.0
            if not math.isnan(st["p"]):
                families.setdefault((cell.table, cell.protocol, which), []).append(st)
    for family in families.values():
        adjusted = false_discovery_control([st["p"] for st in family], method="bh")
        for st, q in zip(family, adjusted):
            st["p_adj"], st["beyond"] = float(q), float(q < alpha)


def sweep_setups(ws: Path, sweep: Sweep) -> dict[str, int]:
    """The setups the sweep's finished runs were trained on (:func:`mmvid.runfiles.run_setups`; a run resumed on
    another setup counts as its setups joined by "then"), with the number of runs of each; runs from before
    run.json are left out."""
    found: dict[str, int] = {}
    for r in sweep.runs:
        folder = runs_dir(ws) / r.name
        if run_state(ws, r) != "done":
            continue
        setup = " then ".join(run_setups(folder))
        if setup:
            found[setup] = found.get(setup, 0) + 1
    return found
