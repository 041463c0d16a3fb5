"""A sweep's tables: ``table.md`` in the paper's layout (each cell beside the paper's figure), ``table.csv`` with
every number, ``table.png`` / ``.svg`` and the Rich summary."""

from __future__ import annotations

import csv
import math
import textwrap
from pathlib import Path

from rich.table import Table

from mmvid.config import PROTOCOLS, SELECTED_ON_TEST
from mmvid.sweeps.stats import Cell, paper_comparable


def _fmt(st: dict[str, float]) -> str:
    if not st["n"]:
        return "–"
    if st["n"] < 2:
        return f"{st['mean']:.2f} (1 seed)"
    return f"{st['mean']:.2f} ± {st['std']:.2f} [{st['ci_lo']:.2f}, {st['ci_hi']:.2f}]"


def _paper(cell: Cell, which: str) -> str:
    if cell.paper is None:
        return ""
    st = cell.stats[which]
    if not paper_comparable(cell):
        return f" · paper {cell.paper:.2f} on {cell.paper_dataset or 'its own data set'} (no Δ: runs on {cell.dataset})"
    if not st["n"]:
        return f" · paper {cell.paper:.2f}"
    inside = "" if math.isnan(st["ci_lo"]) else (" in CI" if st["ci_lo"] <= cell.paper <= st["ci_hi"] else " outside CI")
    return f" · paper {cell.paper:.2f} (Δ {st['mean'] - cell.paper:+.2f},{inside})"


def best_label(cells: list[Cell], protocol: str, short: bool = False) -> str:
    """What the best epoch of ``cells`` (one protocol) was chosen on: ``best-validation epoch``, ``best-test
    epoch (selected on test, as the reference code does)``, ...; ``short``: ``best-val``, ``best-test
    (selected on test)``. Read from the runs' summaries; cells of a protocol that chose both ways mark the
    test-selected ones with † (:func:`_dagger`)."""
    ons = {o for c in cells for o in c.selected_on} or {"test" if protocol == "reference" else "val"}
    why = SELECTED_ON_TEST.get(protocol, SELECTED_ON_TEST["clean"])
    if ons == {"val"}:
        return "best-val" if short else "best-validation epoch"
    if ons == {"test"}:
        return f"best-test ({'selected on test' if protocol == 'reference' else why})" if short else f"best-test epoch ({why})"
    return "best (val; † test)" if short else f"best epoch (validation; † test: {why})"


def _dagger(cell: Cell, group: list[Cell]) -> str:
    """`` †`` on a cell whose best epoch was chosen on test in a ``group`` (one protocol's cells) that chose
    both ways (a clean recipe with data.val_fraction 0 beside others)."""
    ons = {o for c in group for o in c.selected_on}
    return " †" if len(ons) > 1 and "test" in cell.selected_on else ""


def protocol_column(cells: list[Cell], protocol: str) -> str:
    """The label of a protocol's figures beside the paper's, e.g. ``reference: last / best-test (selected on test)``."""
    return f"{protocol}: last / {best_label(cells, protocol, short=True)}"


def headline(cells_of_row: dict[str, Cell]) -> tuple[Cell | None, str]:
    """The figure a row's Δ against the paper is computed from: the reference protocol's best-test figure
    where the sweep ran it (what the paper reports: its reference code selects on test), else the clean
    protocol's best epoch. Returns the cell and its protocol (None when no seed finished)."""
    for protocol in ("reference", "clean"):
        c = cells_of_row.get(protocol)
        if c is not None and c.best:
            return c, protocol
    return None, ""


def write_tables(cells: list[Cell], out: Path, title: str, note: str = "", baseline: str | None = None) -> list[Path]:
    """table.md (per paper table: its rows beside the paper's figure, one column per protocol; then the
    paper's layout, a grid per protocol and epoch: last, then best), table.csv (one line per cell and
    protocol with every number) and table.png / .svg."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table_markdown(cells, title, note, baseline))
    write_csv(cells, out / "table.csv")
    return [out / "table.md", out / "table.csv", *plot_table(cells, out / "table", title)]


def table_markdown(cells: list[Cell], title: str, note: str = "", baseline: str | None = None) -> str:
    """table.md: the explanation, then per paper table its sections (:func:`_table_sections`), then the seeds."""
    tables: dict[str, list[Cell]] = {}
    for c in cells:
        tables.setdefault(c.table, []).append(c)
    protocols = [p for p in PROTOCOLS if any(c.protocol == p for c in cells)]
    md = [f"# {title}", ""] + ([note, ""] if note else []) + _dataset_note(cells) + _idle_note(cells)
    md += ["Each cell: test accuracy %, mean ± std over seeds [95 % confidence interval, Student's t]; "
           "the paper's figure and the difference (Δ = ours − paper).", "",
           "Protocols: **clean** holds a validation split out of the training clips and reports the last epoch and "
           "the best-validation epoch; **reference** trains on every training clip and reports the last epoch and "
           "the best-test epoch, selected on test as the paper's reference code does (OGM-GE, Data Remixing), which "
           "flatters it. The paper's figures were selected that way, so the Δ beside each row is computed against "
           "the reference protocol's best-test figure where the sweep ran it (`--protocol both`), else against the "
           "clean protocol's best-validation figure, which is expected to be lower for the same method.", ""]
    for table, cs in tables.items():
        md += _table_sections(table, cs, [p for p in protocols if any(c.protocol == p for c in cs)], baseline)
    seeds_n = {len(c.last) for c in cells}
    md.append(f"Seeds per cell: {', '.join(str(n) for n in sorted(seeds_n))}.")
    return "\n".join(md) + "\n"


def _dataset_note(cells: list[Cell]) -> list[str]:
    """Why some rows have no Δ against the paper: their runs used another data set than the published figure."""
    other = {(c.dataset, c.paper_dataset) for c in cells if c.paper is not None and not paper_comparable(c)}
    if not other:
        return []
    pairs = "; ".join(f"runs on `{d}`, figure on `{p or 'a data set the recipe does not name'}`"
                      for d, p in sorted(other, key=str))
    return [f"**No Δ against the paper** where the runs did not use the data set of the published figure ({pairs}): "
            "accuracies on different data are not comparable, so those rows print the paper's figure alone.", ""]


def _label(cell: Cell | None, row: str) -> str:
    """A row's label, flagged ``⚑ never acted`` when its method never acted in a run (:func:`_idle_note`)."""
    return f"{row} ⚑ never acted" if cell is not None and cell.idle else row


def _idle_note(cells: list[Cell]) -> list[str]:
    """The rows whose method never acted in some run: their figures are the unchanged baseline's, not the method's."""
    lines = [f"- {c.row} ({c.column}, protocol {c.protocol}): "
             + "; ".join(f"{why} ({n} of {len(c.last)} runs)" for why, n in c.idle.items()) for c in cells if c.idle]
    if not lines:
        return []
    return ["**⚑ never acted**: in these rows the method never acted, as its own logged statistics show, so their "
            "figures are those of the model without it, not the method's result (train more epochs, or a shorter "
            "warm-up or window):", "", *lines, ""]


def _table_sections(table: str, cs: list[Cell], here: list[str], baseline: str | None) -> list[str]:
    """One paper table's sections: its rows beside the paper's figure, one column per protocol; then the paper's
    layout, a grid per protocol and epoch (last, then best), and the differences to ``baseline``."""
    name = f"{'Table ' if table.isdigit() else ''}{table}"
    rows = list(dict.fromkeys(c.row for c in cs))
    columns = list(dict.fromkeys(c.column for c in cs))
    by = {(c.row, c.column, c.protocol): c for c in cs}
    labels = [protocol_column([c for c in cs if c.protocol == p], p) for p in here]
    md = [f"## {name}: beside the paper", "",
          "| " + " | ".join(["", "column", "data set", "paper", *labels, "Δ vs paper (from)"]) + " |",
          "|" + "---|" * (5 + len(here))]
    for row in rows:
        for col in columns:
            mine = {p: by[row, col, p] for p in here if (row, col, p) in by}
            if mine:
                md.append(_beside_paper_row(row, col, mine, cs, here))
    md.append("")
    for protocol in here:
        mine = [c for c in cs if c.protocol == protocol]
        for which, label in (("last", "last epoch"), ("best", best_label(mine, protocol))):
            md += [f"## {name}: {label} (protocol {protocol})", "",
                   "| " + " | ".join(["", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
            for row in rows:
                c_ = [by.get((row, col, protocol)) for col in columns]
                cells_ = ["" if c is None else _fmt(c.stats[which]) + (_dagger(c, mine) if which == "best" else "")
                          + _paper(c, which) for c in c_]
                md.append("| " + " | ".join([_label(next((c for c in c_ if c is not None and c.idle), None), row),
                                             *cells_]) + " |")
            md.append("")
        if baseline:
            md += [f"## {name}: difference to {baseline}, paired by seed (protocol {protocol})", "",
                   "Each cell: mean difference (test accuracy points) [95 % CI, Student's t over the per-seed "
                   f"differences], last epoch; then {best_label(mine, protocol)}; p: paired t-test, "
                   "q: its Benjamini-Hochberg adjusted value over every comparison of this table, protocol and "
                   "epoch. **Bold**: the interval excludes 0 (p < 0.05); **★**: beyond the interval after "
                   "adjustment too (q < 0.05). A bold cell without ★ is a difference the number of comparisons "
                   "can explain.", "",
                   "| " + " | ".join(["", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
            for row in rows:
                c_ = [by.get((row, col, protocol)) for col in columns]
                cells_ = [" / ".join(_versus(c.versus[w]) for w in ("last", "best")) if c is not None and c.versus
                          else "" for c in c_]
                md.append("| " + " | ".join([_label(next((c for c in c_ if c is not None and c.idle), None), row),
                                             *cells_]) + " |")
            md.append("")
    return md


def _beside_paper_row(row: str, col: str, mine: dict[str, Cell], cs: list[Cell], here: list[str]) -> str:
    """A row of the table beside the paper: each protocol's last / best figures and the Δ of the headline one."""
    first = next(iter(mine.values()))
    paper = first.paper
    datasets = ", ".join(dict.fromkeys(c.dataset for c in mine.values()))
    figures = [" / ".join(_short(mine[p].stats[w]) for w in ("last", "best"))
               + _dagger(mine[p], [c for c in cs if c.protocol == p]) if p in mine else "" for p in here]
    head, src = headline(mine)
    if paper is not None and not all(paper_comparable(c) for c in mine.values()):
        delta = f"none: the figure is on {first.paper_dataset or 'another data set'}"
    else:
        delta = ("" if paper is None or head is None else
                 f"{head.stats['best']['mean'] - paper:+.2f}{_inside(head.stats['best'], paper)} "
                 f"({src} {'best-test' if 'test' in head.selected_on else 'best-val'})")
    label = _label(next((c for c in mine.values() if c.idle), None), row)
    return "| " + " | ".join([label, col, datasets, "" if paper is None else f"{paper:.2f}", *figures, delta]) + " |"


def write_csv(cells: list[Cell], path: Path) -> Path:
    """table.csv: one line per cell and protocol with every number."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["table", "row", "column", "dataset", "paper_dataset", "protocol", "best_selected_on", "recipe", "n_seeds", "seeds",
                    *[f"{which}_{k}" for which in ("last", "best") for k in ("mean", "std", "ci95_lo", "ci95_hi")],
                    "paper", "diff_last", "diff_best", "last_per_seed", "best_per_seed", "never_acted",
                    *[f"vs_baseline_{which}_{k}" for which in ("last", "best")
                      for k in ("mean", "ci95_lo", "ci95_hi", "p", "p_bh", "beyond_after_bh")]])
        for c in cells:
            sl, sb = c.stats["last"], c.stats["best"]
            comparable = paper_comparable(c)
            w.writerow([c.table, c.row, c.column, c.dataset, c.paper_dataset or "", c.protocol, " ".join(dict.fromkeys(c.selected_on)), c.recipe,
                        len(c.last), " ".join(map(str, c.seeds)),
                        *[_num(st[k]) for st in (sl, sb) for k in ("mean", "std", "ci_lo", "ci_hi")],
                        "" if c.paper is None else c.paper,
                        "" if not comparable or not c.last else _num(sl["mean"] - c.paper),
                        "" if not comparable or not c.best else _num(sb["mean"] - c.paper),
                        " ".join(f"{v:.4f}" for v in c.last), " ".join(f"{v:.4f}" for v in c.best),
                        "; ".join(f"{why} ({n} of {len(c.last)} runs)" for why, n in c.idle.items()),
                        *[_versus_csv(c.versus.get(which), k) for which in ("last", "best")
                          for k in ("mean", "ci_lo", "ci_hi", "p", "p_adj", "beyond")]])
    return path


def _versus_csv(st: dict[str, float] | None, key: str) -> str:
    if st is None or key not in st:
        return ""
    if key == "beyond":
        return "" if math.isnan(st["p_adj"]) else str(int(st["beyond"]))
    return _num(st[key]) if key in ("mean", "ci_lo", "ci_hi") else ("" if math.isnan(st[key]) else f"{st[key]:.6g}")


def _short(st: dict[str, float]) -> str:
    if not st["n"]:
        return "–"
    return f"{st['mean']:.2f}" + ("" if st["n"] < 2 else f" ± {st['std']:.2f}")


def _inside(st: dict[str, float], paper: float) -> str:
    if math.isnan(st["ci_lo"]):
        return ""
    return ", in CI" if st["ci_lo"] <= paper <= st["ci_hi"] else ", outside CI"


def _versus(st: dict[str, float]) -> str:
    """A difference to the baseline: mean [95 % CI] p, q; bold where the interval excludes 0, ★ where the
    Benjamini-Hochberg adjusted q is below 0.05 as well."""
    if st["n"] < 2:
        return f"{st['mean']:+.2f} ({st['n']} seed)"
    text = f"{st['mean']:+.2f} [{st['ci_lo']:+.2f}, {st['ci_hi']:+.2f}]"
    text = f"**{text}**" if st["ci_lo"] > 0 or st["ci_hi"] < 0 else text
    p, q = st.get("p", math.nan), st.get("p_adj", math.nan)
    if not math.isnan(p):
        text += f" p {_pval(p)}, q {_pval(q)}" + (" **★**" if st.get("beyond") else "")
    return text


def _pval(p: float) -> str:
    return "–" if math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _num(x: float) -> str:
    return "" if isinstance(x, float) and math.isnan(x) else f"{x:.4f}"


def plot_table(cells: list[Cell], out: Path, title: str) -> list[Path]:
    """One panel per column (data set or ablation value): each row's mean with its 95 % interval, last
    epoch and best epoch of each protocol (clean: best-validation; reference: best-test, selected on test),
    each labelled with its protocol, and the paper's figure as a diamond."""
    # matplotlib when drawing: it takes a second to import, and a sweep draws only once its runs are done
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.table, c.column), []).append(c)
    protocols = [p for p in PROTOCOLS if any(c.protocol == p for c in cells)]
    series = [(p, which) for p in protocols for which in ("last", "best")]
    colors = {("clean", "last"): "tab:blue", ("clean", "best"): "tab:orange",
              ("reference", "last"): "tab:green", ("reference", "best"): "tab:red"}
    labels = {(p, w): f"{p}: " + ("last epoch" if w == "last" else best_label([c for c in cells if c.protocol == p], p, short=True))
              for p, w in series}
    step = 0.6 / len(series)
    n = len(groups)
    legend_cols = max(1, min(len(series) + 1, int(4.2 * n // 2.8)))  # a label is up to ~2.7 in wide at 8 pt
    legend_rows = math.ceil((len(series) + 1) / legend_cols)  # below the panels, where it hides no point
    height = (max(len({c.row for c in cs}) for cs in groups.values()) * 0.45 * (1 + 0.5 * (len(protocols) - 1))
              + 1.6 + 0.25 * legend_rows)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, height), squeeze=False, sharey=False)
    for ax, ((table, column), cs) in zip(axes[0], groups.items()):
        _draw_panel(ax, f"{'Table ' if table.isdigit() else ''}{table}: {column}", cs, series, colors, labels, step)
    handles, names = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:  # a panel without some series has the others' handles
        for h, lbl in zip(*ax.get_legend_handles_labels()):
            if lbl not in names:
                handles.append(h)
                names.append(lbl)
    fig.legend(handles, names, loc="lower center", ncol=legend_cols, fontsize=8, frameon=False)
    fig.suptitle(textwrap.fill(title, width=int(60 * n)), fontsize=9)
    fig.tight_layout(rect=(0, 0.25 * legend_rows / height, 1, 1))
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths


def _draw_panel(ax, title: str, cs: list[Cell], series: list[tuple[str, str]], colors: dict, labels: dict,
                step: float) -> None:
    """One column's panel of :func:`plot_table`: each row's mean and 95 % interval per (protocol, epoch) series,
    and the paper's figure as a diamond."""
    rows = list(dict.fromkeys(c.row for c in cs))
    ys = {row: y for y, row in enumerate(rows)}
    for k, (protocol, which) in enumerate(series):
        mine = [c for c in cs if c.protocol == protocol and c.stats[which]["n"]]
        if not mine:
            continue
        dy = -0.3 + step * (k + 0.5)
        means = [c.stats[which]["mean"] for c in mine]
        errs = [[0 if math.isnan(c.stats[which]["ci_lo"]) else c.stats[which]["mean"] - c.stats[which]["ci_lo"] for c in mine],
                [0 if math.isnan(c.stats[which]["ci_hi"]) else c.stats[which]["ci_hi"] - c.stats[which]["mean"] for c in mine]]
        ax.errorbar(means, [ys[c.row] + dy for c in mine], xerr=errs, fmt="o" if protocol == "clean" else "s",
                    color=colors.get((protocol, which)), capsize=3, label=labels[protocol, which])
    paper = {c.row: c.paper for c in cs if paper_comparable(c)}  # a figure on other data would mislead
    if paper:
        ax.scatter(list(paper.values()), [ys[r] for r in paper], marker="D", color="black", zorder=3, label="paper")
    ax.set_yticks(list(ys.values()), rows)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy %")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def print_summary(console, cells: list[Cell]) -> None:
    """The Rich table of each paper table: per cell its seeds, last and best epoch, and the figure the paper gives."""
    for name in dict.fromkeys(c.table for c in cells):
        table = Table(title=f"{'Table ' if name.isdigit() else ''}{name}: test accuracy %, mean ± std [95 % CI] over seeds")
        for col in ("row", "column", "data set", "protocol", "seeds", "last epoch", "best epoch", "chosen on", "paper (Δ best)"):
            table.add_column(col)
        for c in (c for c in cells if c.table == name):
            paper = "" if c.paper is None else f"{c.paper:.2f}" + (
                f" ({c.stats['best']['mean'] - c.paper:+.2f})" if c.best and paper_comparable(c)
                else "" if paper_comparable(c) else f" on {c.paper_dataset}: no Δ")
            table.add_row(_label(c, c.row), c.column, c.dataset, c.protocol, str(len(c.last)), _fmt(c.stats["last"]), _fmt(c.stats["best"]),
                          "/".join(dict.fromkeys(c.selected_on)), paper)
        console.print(table)
