"""A sweep table's statistics against its baseline row, computed here from per-seed results by the textbook
formulas: the paired t-test p-value (t = mean(d) / (sd(d) / sqrt(n)), two-sided, n - 1 degrees of freedom) and the
Benjamini-Hochberg adjusted value over every comparison of a table, protocol and epoch, with "beyond the interval
after adjustment" marked apart from "the interval excludes 0"."""

from __future__ import annotations

import csv
import math
import re

import pytest
from scipy.stats import t as student_t

from mmvid.sweeps.stats import Cell, summarize, versus_baseline
from mmvid.sweeps.tables import table_markdown, write_csv

SEEDS = [0, 1, 2, 3]
# per-seed last / best test accuracy % of a baseline and four methods in one table and column: one far above the
# baseline, one slightly above, one no different, one whose seeds differ (seed 3 missing) and one the same as
# the baseline on every seed but by a constant (zero-variance difference: no t-test)
RESULTS = {
    "Concat": ([60.0, 62.0, 61.0, 63.0], [61.0, 63.0, 62.0, 64.0]),
    "Far": ([66.0, 68.1, 66.9, 69.2], [67.0, 69.5, 68.0, 70.1]),
    "Slight": ([60.9, 62.4, 61.2, 63.9], [61.2, 63.1, 62.9, 64.3]),
    "Same": ([60.5, 61.4, 61.6, 62.8], [60.6, 63.4, 61.5, 64.2]),
    "Fewer": ([62.0, 62.5, 62.1], [62.3, 64.0, 63.1]),
    "Shifted": ([61.0, 63.0, 62.0, 64.0], [62.0, 64.0, 63.0, 65.0]),
}


def _cells(column: str = "CREMA-D") -> list[Cell]:
    cells = []
    for row, (last, best) in RESULTS.items():
        seeds = SEEDS[: len(last)]
        c = Cell("1", row, column, f"recipes/table1/{row.lower()}.yaml", seeds, list(last), list(best), None,
                 name=row.lower(), selected_on=["val"] * len(seeds))
        c.stats = {"last": summarize(c.last), "best": summarize(c.best)}
        cells.append(c)
    return cells


def _paired_p(mine: list[float], base: list[float]) -> float:
    d = [a - b for a, b in zip(mine, base)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return 2 * student_t.sf(abs(mean / (sd / math.sqrt(n))), n - 1)


def _bh(ps: list[float]) -> list[float]:
    """Benjamini-Hochberg: q_(i) = min_{j >= i} p_(j) m / j over the sorted p-values, capped at 1."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    q = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, ps[i] * m / rank)
        q[i] = running
    return q


def test_p_values_and_bh_adjusted_values_equal_those_computed_from_per_seed_results():
    cells = _cells() + _cells("AVE")  # two columns of one table: one family of 2 x 4 tested comparisons
    versus_baseline(cells, "concat")
    for which, k in (("last", 0), ("best", 1)):
        tested = [c for c in cells if c.row not in ("Concat", "Shifted")]
        expected_p = [_paired_p(RESULTS[c.row][k], RESULTS["Concat"][k][: len(c.seeds)]) for c in tested]
        assert [c.versus[which]["p"] for c in tested] == pytest.approx(expected_p, rel=1e-9)
        expected_q = _bh(expected_p)
        assert [c.versus[which]["p_adj"] for c in tested] == pytest.approx(expected_q, rel=1e-9)
        assert [c.versus[which]["beyond"] for c in tested] == [float(q < 0.05) for q in expected_q]
        # the unadjusted interval excludes 0 exactly when p < 0.05: the same t statistic
        for c, p in zip(tested, expected_p):
            st = c.versus[which]
            assert (st["ci_lo"] > 0 or st["ci_hi"] < 0) == (p < 0.05)
        shifted = next(c for c in cells if c.row == "Shifted").versus[which]
        assert shifted["mean"] == pytest.approx(1.0) and math.isnan(shifted["p"]) and math.isnan(shifted["p_adj"])
        assert not next(c for c in cells if c.row == "Concat").versus  # the baseline is compared with nothing


def test_a_difference_the_comparisons_explain_is_bold_but_not_starred():
    cells = _cells()
    versus_baseline(cells, "concat")
    st = {c.row: c.versus["last"] for c in cells if c.versus}
    # the data above hold a row whose interval excludes 0 but whose adjusted value does not pass 0.05
    explained = [row for row, s in st.items() if s["p"] < 0.05 <= s["p_adj"]]
    kept = [row for row, s in st.items() if s["p_adj"] < 0.05]
    assert explained and kept, st
    md = table_markdown(cells, "t", baseline="concat")
    lines = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines()
             if line.startswith("| ") and "p " in line}
    for row in explained:
        assert "**+" in lines[row].split(" / ")[0] and "★" not in lines[row].split(" / ")[0]
    for row in kept:
        assert "**★**" in lines[row].split(" / ")[0]
    assert "Benjamini-Hochberg" in md


def test_table_csv_carries_p_and_adjusted_values(tmp_path):
    cells = _cells()
    versus_baseline(cells, "concat")
    with write_csv(cells, tmp_path / "table.csv").open() as fh:
        rows = {r["row"]: r for r in csv.DictReader(fh)}
    for c in cells:
        r = rows[c.row]
        if c.row == "Concat":
            assert r["vs_baseline_last_p"] == r["vs_baseline_best_p_bh"] == ""
            continue
        for which in ("last", "best"):
            st = c.versus[which]
            if math.isnan(st["p"]):
                assert r[f"vs_baseline_{which}_p"] == r[f"vs_baseline_{which}_beyond_after_bh"] == ""
                continue
            assert float(r[f"vs_baseline_{which}_p"]) == pytest.approx(st["p"], rel=1e-5)
            assert float(r[f"vs_baseline_{which}_p_bh"]) == pytest.approx(st["p_adj"], rel=1e-5)
            assert r[f"vs_baseline_{which}_beyond_after_bh"] == str(int(st["p_adj"] < 0.05))


def _paper_cells(dataset: str) -> list[Cell]:
    """Table 1's Concat row on ``dataset`` under both protocols, the paper's figure published on cremad."""
    cells = []
    for protocol, last, best, on in (("clean", [58.0, 60.0], [59.0, 61.5], "val"),
                                     ("reference", [59.0, 61.0], [62.0, 63.0], "test")):
        c = Cell("1", "Concat", "CREMA-D", "recipes/table1/cremad/01-concat.yaml", [0, 1], last, best, 60.62,
                 dataset=dataset, paper_dataset="cremad", name="concat", protocol=protocol, selected_on=[on, on])
        c.stats = {"last": summarize(c.last), "best": summarize(c.best)}
        cells.append(c)
    return cells


def test_delta_against_the_paper_only_for_runs_on_the_figures_data_set(tmp_path):
    md = table_markdown(_paper_cells("cremad"), "t")
    line = next(ln for ln in md.splitlines() if ln.startswith("| Concat | CREMA-D | cremad | 60.62 |"))
    # the reference protocol's best-test mean (62.5) against the paper's 60.62, computed here
    assert line.endswith(f"| {62.5 - 60.62:+.2f}, in CI (reference best-test) |")
    assert "No Δ against the paper" not in md
    with write_csv(_paper_cells("cremad"), tmp_path / "same.csv").open() as fh:
        assert [float(r["diff_best"]) for r in csv.DictReader(fh)] == pytest.approx([60.25 - 60.62, 62.5 - 60.62])

    md = table_markdown(_paper_cells("demo"), "t")
    line = next(ln for ln in md.splitlines() if ln.startswith("| Concat | CREMA-D | demo | 60.62 |"))
    assert line.endswith("| none: the figure is on cremad |")
    assert "**No Δ against the paper** where the runs did not use the data set of the published figure " \
           "(runs on `demo`, figure on `cremad`)" in md
    assert "paper 60.62 on cremad (no Δ: runs on demo)" in md and not re.search(r"\(Δ [+-]", md)
    with write_csv(_paper_cells("demo"), tmp_path / "other.csv").open() as fh:
        assert [(r["dataset"], r["paper_dataset"], r["diff_last"], r["diff_best"]) for r in csv.DictReader(fh)] \
            == [("demo", "cremad", "", "")] * 2


# ----------------------------------------------------------------------------- plug-ins that never acted


def _plugin(family: str, name: str, args: dict):
    from mmvid.plugins import load_plugins
    from mmvid.registry import AUGMENTS, BALANCERS, check_plugin_settings

    load_plugins()
    registry = {"augment": AUGMENTS, "balance": BALANCERS}[family]
    return registry.get(name), check_plugin_settings(registry, name, args)


def test_bmm_says_it_never_mixed_when_its_logged_lambdas_stayed_0():
    cls, settings = _plugin("augment", "bmm", {"warmup": 10})
    idle = [{"epoch": e, "bmm_rho": 1.3, "lambda_audio": 0.0, "lambda_visual": 0.0} for e in range(2)]
    assert cls.never_acted(settings, idle) == "B-MM never mixed: warm-up 10 >= 2 epochs"
    cls, settings = _plugin("augment", "bmm", {"warmup": 1})
    assert cls.never_acted(settings, idle) == "B-MM never mixed: lambda stayed 0 in every epoch"
    mixed = idle + [{"epoch": 2, "bmm_rho": 1.3, "lambda_audio": 0.0, "lambda_visual": 0.05}]
    assert cls.never_acted(settings, mixed) is None


def test_a_balancer_whose_window_never_opened_says_so():
    cls, settings = _plugin("balance", "ogm-ge", {"start": 5, "end": 8})
    records = [{"epoch": e} for e in range(3)]
    assert cls.never_acted(settings, records) == "its window of epochs [5, 8] never opened in 3 epochs"
    assert cls.never_acted(settings, records + [{"epoch": e} for e in range(3, 6)]) is None
    cls, settings = _plugin("balance", "ogm-ge", {"start": 0})
    assert cls.never_acted(settings, records) is None


def test_a_plugin_that_cannot_tell_flags_nothing():
    cls, settings = _plugin("augment", "mm", {})
    assert cls.never_acted(settings, [{"epoch": 0}]) is None


def test_never_acted_rows_are_flagged_not_reported_as_the_methods_result():
    cells = _cells()
    bmm = next(c for c in cells if c.row == "Far")
    bmm.idle = {"B-MM never mixed: warm-up 10 >= 4 epochs": 4}
    md = table_markdown(cells, "t")
    assert "- Far (CREMA-D, protocol clean): B-MM never mixed: warm-up 10 >= 4 epochs (4 of 4 runs)" in md
    assert [ln.split(" | ")[0] for ln in md.splitlines() if ln.startswith("| Far")] \
        == ["| Far ⚑ never acted"] * 3  # beside the paper, last epoch, best epoch
    assert not any(ln.startswith("| Slight ⚑") for ln in md.splitlines())
